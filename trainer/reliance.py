"""Modality reliance: how much a trained fusion model uses each modality (no retraining).

reliance_m = metric(predictions) - mean over permutations of metric(predictions with modality m's
inputs permuted across samples), for metric in (auc, es_auc). A model that ignores m scores 0; a
model that needs m loses up to auc - 0.5. This is permutation feature importance (Breiman 2001,
"Random Forests"; Fisher, Rudin & Dominici 2019, model reliance) with a modality as the feature.

Exact shortcut: the encoders act per sample, so in eval mode permuting x_m across samples equals
permuting h_m = encoder_m(x_m) across samples. The split is encoded ONCE; each permutation only
re-runs fusion + head (tests/trainer/test_reliance.py checks the equality against actually
permuted inputs). Cost per call: one encoder pass over the split + M * N_PERMUTATIONS fusion passes.

Missing modalities (issue 22) from the same encoded split: "removed" re-fuses the features with
present[m] all False (exactly what a sample without m gets: the fusion masks absent tokens, so no
approximation), "absent" scores the samples that really lack m (their ordinary predictions). Cost:
M more fusion passes per evaluation, no encoder pass. A permutation of h_m carries present[m]
with it (a permuted input carries its presence).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from trainer.metrics import auc_summary, evaluate_fairness

N_PERMUTATIONS = 5


def encode_split(trainer, split: str):
    """(features {modality: tensor on the device}, labels, groups, present {modality: bool (N,)
    on the CPU}) of a whole split, eval mode, read through the trainer's inference path
    (Trainer.forward). Absent rows' features are zeros."""
    feats, labels, groups, present = {}, [], [], {}
    for batch, encoded in trainer.forward(split, encode=True):
        n = len(batch["label"])
        for m, h in encoded.items():
            feats.setdefault(m, []).append(h)
            p = batch.get("present", {}).get(m)
            present.setdefault(m, []).append(torch.ones(n, dtype=torch.bool) if p is None
                                             else p.reshape(-1).bool().cpu())
        labels.append(batch["label"].cpu()); groups.append(batch["group"].cpu())
    return ({m: torch.cat(v) for m, v in feats.items()}, torch.cat(labels).numpy(),
            torch.cat(groups).numpy(), {m: torch.cat(v) for m, v in present.items()})


@torch.no_grad()
def fused_probs(trainer, features: dict, modality: str | None = None,
                perm: torch.Tensor | None = None, present: dict | None = None) -> np.ndarray:
    """Probabilities from encoded features (and presence masks on the CPU, None = all present),
    with features[modality] (and present[modality]) permuted by `perm` if given. A chunk in which
    every modality is present is fused without a mask, as the model fuses a complete batch."""
    if modality is not None:
        features = {**features, modality: features[modality][perm.to(features[modality].device)]}
        if present is not None:
            present = {**present, modality: present[modality][perm.cpu()]}
    n, step, out = len(next(iter(features.values()))), trainer.cfg.batch_size * 2, []
    for s in range(0, n, step):
        chunk = None if present is None else {m: p[s:s + step] for m, p in present.items()}
        if chunk is not None and all(bool(p.all()) for p in chunk.values()):
            chunk = None
        if chunk is not None:
            chunk = {m: p.to(trainer.device) for m, p in chunk.items()}
        with trainer.autocast():
            out.append(trainer.model.fuse({m: h[s:s + step] for m, h in features.items()}, chunk)
                       .float().sigmoid().cpu())
    return torch.cat(out).numpy()


def modality_reliance(trainer, split: str, n_permutations: int = N_PERMUTATIONS,
                      encoded: tuple | None = None, probs: np.ndarray | None = None) -> dict:
    """{modality: {"auc": drop, "es_auc": drop}}, mean over n_permutations (seeded by cfg.seed,
    so the same permutations every epoch). `encoded` (encode_split's result) and `probs` (its
    unpermuted fusion) when the caller has them already: no second encoder pass."""
    features, y, g, present = encoded if encoded is not None else encode_split(trainer, split)
    names = trainer.group_names

    def score(p):
        m = evaluate_fairness(y, p, g, group_names=names)
        return np.array([m["auc"], m["es_auc"]])

    base = score(fused_probs(trainer, features, present=present) if probs is None else probs)
    gen, out = torch.Generator().manual_seed(trainer.cfg.seed), {}
    for m in features:
        perms = [torch.randperm(len(y), generator=gen) for _ in range(n_permutations)]
        drops = [base - score(fused_probs(trainer, features, m, perm, present)) for perm in perms]
        mean = np.nanmean(drops, axis=0) if drops else np.full(2, np.nan)
        out[m] = {"auc": float(mean[0]), "es_auc": float(mean[1])}
    return out


def missing_modalities(trainer, encoded: tuple, probs: np.ndarray) -> dict:
    """{modality: {"removed": {auc, es_auc, group_auc}, "absent": {n, auc, es_auc, group_auc}}}
    (the contract of issue 22) from one encoded split and its ordinary probabilities: "removed"
    fuses every sample with modality m marked absent, "absent" scores the samples that really
    lack m. Undefined metrics (fewer than two classes) are NaN (null in JSON)."""
    features, y, g, present = encoded
    names, out = trainer.group_names, {}
    # A model whose score is computed from a modality alone (CLIP's zero-shot score reads only
    # the image: `score_needs`) has no score without it: its "removed" block is undefined (NaN),
    # never the complete figures again (the fuse ignores the presence mask)
    needs = getattr(trainer.model, "score_needs", ())
    for m in features:
        if m in needs:
            removed = _undefined(y, g, names)
        else:
            removed = auc_summary(y, fused_probs(trainer, features, present={
                **present, m: torch.zeros(len(y), dtype=torch.bool)}), g, names)
        lacks = ~present[m].numpy()
        out[m] = {"removed": removed,
                  "absent": {"n": int(lacks.sum()),
                             **auc_summary(y[lacks], probs[lacks], g[lacks], names)}}
    return out


def _undefined(y, g, names) -> dict:
    """An AUC summary of a split with nothing scored: every figure NaN (null in JSON), the
    split's groups named as auc_summary names them."""
    groups = auc_summary(y, np.zeros(len(y)), g, names)["group_auc"]
    return {"auc": math.nan, "es_auc": math.nan, "group_auc": dict.fromkeys(groups, math.nan)}


def flat_missing(missing: dict, prefix: str) -> dict[str, float]:
    """Epoch metrics: <prefix>/missing/<m>/auc and es_auc (m removed from every sample),
    <prefix>/absent/<m>/n and es_auc (the samples that lack m; NaN when undefined)."""
    out = {}
    for m, d in missing.items():
        out[f"{prefix}/missing/{m}/auc"] = float(d["removed"]["auc"])
        out[f"{prefix}/missing/{m}/es_auc"] = float(d["removed"]["es_auc"])
        out[f"{prefix}/absent/{m}/n"] = float(d["absent"]["n"])
        out[f"{prefix}/absent/{m}/es_auc"] = float(d["absent"]["es_auc"])
    return out


def flat_reliance(reliance: dict, prefix: str) -> dict[str, float]:
    """{"<prefix>/reliance/<modality>/auc": ..., ...} for epoch metrics."""
    return {f"{prefix}/reliance/{m}/{k}": float(v)
            for m, d in reliance.items() for k, v in d.items()}
