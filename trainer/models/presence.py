"""Presence masks (issue 22): batch["present"] = {modality: bool (B,)}, True = the sample has it.

The loaders give every batch this dict (all True when nothing is missing); None or no key means
every modality is present. The fusion model (fusion.py) encodes only present rows and masks absent
tokens; the methods (trainer/methods/) compute every statistic of h_m on present rows only with the
helpers here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def complete(batch: dict) -> dict:
    """`batch` without its "present" entry when every modality is present in every row, so a
    complete batch takes the unmasked path (exactly the numbers of a model without presence, and
    no device sync in encode). Call it on the host, before the batch goes to the device."""
    present = batch.get("present")
    if present is not None and all(bool(p.all()) for p in present.values()):
        batch = {k: v for k, v in batch.items() if k != "present"}
    return batch


def present_rows(present: dict | None, modality: str, like: torch.Tensor) -> torch.Tensor | None:
    """(B,) bool on like's device: the samples that have `modality`; None when all have it."""
    if present is None or present.get(modality) is None:
        return None
    return present[modality].reshape(-1).to(like.device, torch.bool)


def masked_mean(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Mean over the rows that are True (0 when none is); the plain mean when rows is None, so
    complete batches give exactly the numbers they gave before presence masks existed."""
    if rows is None:
        return values.mean()
    w = rows.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def classifier_loss_of(logits: torch.Tensor, labels: torch.Tensor,
                       rows: torch.Tensor | None) -> torch.Tensor:
    """c_m's cross-entropy on the samples that have modality m (rows; None = all)."""
    if rows is None:
        return F.binary_cross_entropy_with_logits(logits, labels)
    return masked_mean(F.binary_cross_entropy_with_logits(logits, labels, reduction="none"), rows)
