"""Modality reliance: how much a trained fusion model uses each modality (no retraining).

reliance_m = metric(predictions) - mean over permutations of metric(predictions with modality m's
inputs permuted across samples), for metric in (auc, es_auc). A model that ignores m scores 0; a
model that needs m loses up to auc - 0.5. This is permutation feature importance (Breiman 2001,
"Random Forests"; Fisher, Rudin & Dominici 2019, model reliance) with a modality as the feature.

Exact shortcut: the encoders act per sample, so in eval mode permuting x_m across samples equals
permuting h_m = encoder_m(x_m) across samples. The split is encoded ONCE; each permutation only
re-runs fusion + head (tests/trainer/test_reliance.py checks the equality against actually
permuted inputs). Cost per call: one encoder pass over the split + M * N_PERMUTATIONS fusion passes.
"""
from __future__ import annotations

import numpy as np
import torch

from trainer.metrics import evaluate_fairness

N_PERMUTATIONS = 5


def encode_split(trainer, split: str):
    """(features {modality: tensor on the device}, labels, groups) of a whole split, eval mode,
    read through the trainer's inference path (Trainer.forward)."""
    feats, labels, groups = {}, [], []
    for batch, encoded in trainer.forward(split, encode=True):
        for m, h in encoded.items():
            feats.setdefault(m, []).append(h)
        labels.append(batch["label"].cpu()); groups.append(batch["group"].cpu())
    return ({m: torch.cat(v) for m, v in feats.items()}, torch.cat(labels).numpy(),
            torch.cat(groups).numpy())


@torch.no_grad()
def fused_probs(trainer, features: dict, modality: str | None = None,
                perm: torch.Tensor | None = None) -> np.ndarray:
    """Probabilities from encoded features, with features[modality] permuted by `perm` if given."""
    if modality is not None:
        features = {**features, modality: features[modality][perm.to(features[modality].device)]}
    n, step, out = len(next(iter(features.values()))), trainer.cfg.batch_size * 2, []
    for s in range(0, n, step):
        with trainer.autocast():
            out.append(trainer.model.fuse({m: h[s:s + step] for m, h in features.items()})
                       .float().sigmoid().cpu())
    return torch.cat(out).numpy()


def modality_reliance(trainer, split: str, n_permutations: int = N_PERMUTATIONS,
                      encoded: tuple | None = None, probs: np.ndarray | None = None) -> dict:
    """{modality: {"auc": drop, "es_auc": drop}}, mean over n_permutations (seeded by cfg.seed,
    so the same permutations every epoch). `encoded` (encode_split's result) and `probs` (its
    unpermuted fusion) when the caller has them already: no second encoder pass."""
    features, y, g = encoded if encoded is not None else encode_split(trainer, split)
    names = trainer.group_names

    def score(p):
        m = evaluate_fairness(y, p, g, group_names=names)
        return np.array([m["auc"], m["es_auc"]])

    base, out = score(fused_probs(trainer, features) if probs is None else probs), {}
    gen = torch.Generator().manual_seed(trainer.cfg.seed)
    for m in features:
        perms = [torch.randperm(len(y), generator=gen) for _ in range(n_permutations)]
        drops = [base - score(fused_probs(trainer, features, m, perm)) for perm in perms]
        mean = np.nanmean(drops, axis=0) if drops else np.full(2, np.nan)
        out[m] = {"auc": float(mean[0]), "es_auc": float(mean[1])}
    return out


def flat_reliance(reliance: dict, prefix: str) -> dict[str, float]:
    """{"<prefix>/reliance/<modality>/auc": ..., ...} for epoch metrics."""
    return {f"{prefix}/reliance/{m}/{k}": float(v)
            for m, d in reliance.items() for k, v in d.items()}
