"""CGGM: classifier-guided gradient modulation (Guo et al., "Classifier-guided Gradient
Modulation for Enhanced Multimodal Learning", NeurIPS 2024).

Per step: a classifier per modality (our c_m, trained on detached h_m) gives its batch accuracy
acc_m; d_m = acc_m - acc_m(previous batch); coefficient_m = (sum_k d_k - d_m) / sum_k d_k; encoder
m's gradient is multiplied by rho * coefficient_m (the slower-improving modality gets more).

Readings (docs/methods.md):
- d_m is taken as |d_m| + 1e-4 (the MultiFair authors do the same for the same formula): with
  signed d the denominator can cross zero and the factors explode or turn negative; with |d| each
  coefficient lies in (0, 1) and the factors in (0, rho).
- The paper also has a direction loss; in the authors' code it is computed from .grad tensors as
  a NumPy number and added to the next step's loss, so it carries no gradient. We omit it: only
  the gradient scaling shapes training there, and here.
- The previous accuracy starts at 0.5 (chance) and is a buffer, so it is checkpointed.
- The factors go through the loop's per-encoder scale, so modulation_target=update applies too.
- Missing modalities: acc_m is c_m's accuracy on the samples that have m; a modality absent from
  the whole batch keeps its previous accuracy (d_m = 0 before the epsilon).
"""
from __future__ import annotations

import torch

from trainer.methods.registry import register_method
from trainer.methods.base import (Method, classifier_outputs, contract, masked_mean, present_rows,
                                  task_loss)

CGGM_EPS = 1e-4


def cggm_coefficients(change: torch.Tensor) -> torch.Tensor:
    """(M,) coefficients (sum d - d_m) / sum d from (M,) accuracy changes, d = |change| + eps."""
    d = change.abs() + CGGM_EPS
    return (d.sum() - d) / d.sum()


@register_method("cggm")
class CGGM(Method):
    min_modalities = 2
    scales_encoders = True
    hyperparameters = ("rho",)

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, modalities, num_groups)
        self.register_buffer("prev_accuracy", torch.full((len(modalities),), 0.5))

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        task = task_loss(logits, labels)
        cls_logits, classifier_loss = classifier_outputs(classifiers, features, labels,
                                                         self.modalities, present)
        with torch.no_grad():
            acc = []
            for i, (m, z) in enumerate(zip(self.modalities, cls_logits)):
                rows = present_rows(present, m, z)
                correct = ((z > 0).float() == labels).float()
                a = masked_mean(correct, rows)
                acc.append(a if rows is None else torch.where(rows.any(), a, self.prev_accuracy[i]))
            acc = torch.stack(acc)
            coef = cggm_coefficients(acc - self.prev_accuracy)
            self.prev_accuracy.copy_(acc)
        out = contract(task, task, classifier_loss, self.cfg.rho * coef, self.modalities)
        for i, m in enumerate(self.modalities):
            out[f"cggm_accuracy/{m}"] = acc[i]
        return out
