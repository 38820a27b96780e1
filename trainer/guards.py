"""Guards that turn silent failures into one clear error line (docs/science.md, "Guards").

- A training split smaller than one batch is REFUSED (the loop drops the last partial batch so
  that every step sees batch_size samples, which the group surrogate AUC of MultiFair needs; an
  epoch of 0 steps would still report metrics of the untrained model).
- Divergence: every step's scalar loss terms are stacked on the device (no host sync per step);
  once per epoch one isfinite().all() sync checks them, and on failure the first bad step and the
  terms that became non-finite are named. Cost: one small stack per step, one sync per epoch.
"""
from __future__ import annotations

import numpy as np
import torch


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss term or prediction."""


def check_train_size(n_train: int, batch_size: int) -> None:
    if n_train < batch_size:
        raise ValueError(f"split 'train' has {n_train} samples, fewer than batch_size="
                         f"{batch_size}: an epoch would train 0 steps (the last partial batch is "
                         f"dropped); lower batch_size or add training data")


class FiniteWatch:
    """Collects the scalar terms of each step's output dict; check() raises on the first bad one."""

    def __init__(self):
        self.names: list[str] | None = None
        self.rows: list[torch.Tensor] = []

    def add(self, out: dict) -> None:
        scalars = {k: v for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}
        if self.names is None:
            self.names = list(scalars)
        self.rows.append(torch.stack([scalars[k].detach().float() for k in self.names]))

    def check(self, epoch: int) -> None:
        if not self.rows:
            return
        table = torch.stack(self.rows)
        finite = torch.isfinite(table)
        if bool(finite.all()):                                   # the one sync per epoch
            return
        step = int((~finite).any(dim=1).nonzero()[0])
        bad = [(n, float(table[step, j])) for j, n in enumerate(self.names)
               if not bool(finite[step, j])]
        parts = [f"{n}={v}" for n, v in bad if n != "loss"] or [f"{n}={v}" for n, v in bad]
        raise DivergenceError(
            f"training diverged in epoch {epoch}, step {step + 1} of {len(self.rows)}: "
            f"non-finite loss term(s) {', '.join(parts)}; lower lr or grad_clip")


def check_predictions(probs: np.ndarray, split: str, epoch: int) -> None:
    bad = ~np.isfinite(probs)
    if bad.any():
        raise DivergenceError(f"training diverged: after epoch {epoch} the model predicts "
                              f"non-finite scores on split {split!r} ({int(bad.sum())} of "
                              f"{len(probs)}); its weights are no longer finite; lower lr")
