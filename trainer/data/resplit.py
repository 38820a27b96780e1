"""Train/validation re-split for repeats that resample the data as well as the seed
(`resplit_folds` K >= 2, `resplit_fold` r in TrainConfig; the search's `--confirm-folds K`).

Train and validation are pooled and cut into K folds stratified by (group, label): within each
stratum the samples are shuffled with the partition's seed and dealt round-robin, so every fold
holds each group's share and prevalence to within one sample. Repeat r validates on fold r % K of
the partition drawn with seed r // K and trains on the other K - 1 folds: r = 0..K-1 are a K-fold
cross-fit (every pooled sample validated once), r = K.. start a new partition. The test split is
never read here: the datasets' "test" (and "shift") entries pass through untouched.

Deterministic: the same (K, r) and the same pooled samples give the same folds on every node, so
candidates of one repeat are paired on one split. Cost: an argsort per stratum over train+val
indices, nothing copied (the folds are index views over the two cached splits): milliseconds at
10,000 samples.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def fold_of(groups: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each pooled sample: round-robin within each (group, label)
    stratum after a seeded shuffle, the stratum's first fold drawn too (so small strata do not
    all fill fold 0)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(groups), np.int64)
    strata = np.unique(np.stack([groups, labels.astype(np.int64)]), axis=1).T
    for g, y in strata:
        members = np.flatnonzero((groups == g) & (labels == y))
        members = members[rng.permutation(len(members))]
        out[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return out


def resplit(datasets: dict, folds: int, repeat: int) -> dict:
    """`datasets` with "train" and "val" replaced by fold `repeat % folds` of the partition drawn
    with seed `repeat // folds` of their pool (validation) and the other folds (training)."""
    parts = [datasets["train"], datasets["val"]]
    groups = np.concatenate([p.groups for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    fold = fold_of(groups, labels, folds, repeat // folds)
    pooled = [(i, j) for i, p in enumerate(parts) for j in range(len(p))]
    index = np.array(pooled, np.int64).reshape(-1, 2)
    val = fold == repeat % folds
    return {**datasets, "train": PooledDataset(parts, index[~val]), "val": PooledDataset(parts, index[val])}


class PooledDataset(Dataset):
    """Items of several datasets (trainer.data.CachedDataset: labels, groups, present,
    group_names, get_batch), picked by `index` rows (part, item): the same surface."""

    def __init__(self, parts: list, index: np.ndarray):
        self.parts, self.index = parts, index
        self.group_names = parts[0].group_names
        flat = np.cumsum([0] + [len(p) for p in parts[:-1]])[index[:, 0]] + index[:, 1]
        self.labels = np.concatenate([p.labels for p in parts])[flat]
        self.groups = np.concatenate([p.groups for p in parts])[flat]
        self.present = {m: np.concatenate([p.present[m] for p in parts])[flat] for m in parts[0].present}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        p, j = self.index[i]
        return self.parts[p][int(j)]

    def get_batch(self, indices) -> dict:
        """A batch by item indices, read part by part, back in the order asked."""
        rows = self.index[np.asarray(indices, np.int64)]
        by_part = np.argsort(rows[:, 0], kind="stable")
        pieces = [self.parts[p].get_batch(rows[by_part][rows[by_part][:, 0] == p, 1])
                  for p in np.unique(rows[:, 0])]
        back = torch.from_numpy(np.argsort(by_part, kind="stable"))
        return _take(_cat(pieces), back)


def _cat(pieces: list):
    if isinstance(pieces[0], dict):
        return {k: _cat([p[k] for p in pieces]) for k in pieces[0]}
    return torch.cat(pieces)


def _take(tree, order: torch.Tensor):
    if isinstance(tree, dict):
        return {k: _take(v, order) for k, v in tree.items()}
    return tree[order]
