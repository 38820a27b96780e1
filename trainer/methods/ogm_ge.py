"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (Peng, Wei, Deng, Wang,
Hu, "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022).

Per step: score_m = sum over the batch of modality m's probability of the true class; the
dominant modality's encoder gradient is multiplied by 1 - tanh(alpha * ratio), the others' by 1
(the paper's Eq. 10, a jump at ratio = 1); then Gaussian noise N(0, std(g)) is added to every
modulated encoder gradient (GE). Modulation runs in a window of epochs
[ogm_start_epoch, ogm_end_epoch) (0 = to the end).

Readings (docs/methods.md):
- Per-modality scores. The authors' concat fusion lets them split the head's last layer into a
  slice per modality; our fusion is a transformer over modality tokens, which does not split.
  We take the modality classifiers c_m (trained on detached h_m, so they do not steer the
  encoders) as each modality's predictor: they measure the same thing, how much of the label h_m
  already carries.
- M > 2 modalities: ratio_m = score_m / mean_{k != m} score_k; coefficient 1 - tanh(alpha *
  ratio_m) where ratio_m > 1, else 1. For M = 2 this is the authors' rule exactly.
- Missing modalities: score_m is the MEAN over the samples that have m (on a complete batch the
  ratio of means is the authors' ratio of sums); a modality absent from the whole batch has no
  score, gets coefficient 1 and is left out of the others' ratios.
- Order as in their code: after backward, g <- c_m * g + N(0, std(g)) with std taken from the
  gradient BEFORE scaling, for every parameter of encoder m (their code touches only 4-D conv
  weights; our encoders are ViTs, so every encoder parameter). Our loop then clips as for every
  method (grad_clip).
"""
from __future__ import annotations

import torch

from trainer.methods.registry import register_method
from trainer.methods.base import (Method, classifier_outputs, contract, masked_mean, present_rows,
                                  task_loss)


def ogm_coefficients(scores: torch.Tensor, alpha: float,
                     defined: torch.Tensor | None = None) -> torch.Tensor:
    """(M,) coefficients from (M,) per-modality scores (sum or mean of true-class probabilities);
    `defined` (bool (M,)) marks the scores that exist (False: modality absent from the batch)."""
    if defined is None:
        m = scores.numel()
        others = (scores.sum() - scores) / (m - 1)
        ratio = scores / others.clamp_min(1e-12)
        return torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))
    s = torch.where(defined, scores, torch.zeros_like(scores))
    n_others = defined.sum() - defined.long()
    ratio = s / ((s.sum() - s) / n_others.clamp_min(1)).clamp_min(1e-12)
    dominant = defined & (n_others > 0) & (ratio > 1)
    return torch.where(dominant, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))


def ge_noise_(grad: torch.Tensor, coefficient, generator) -> None:
    """In place: grad <- coefficient * grad + N(0, std(grad)) (std of the unscaled gradient)."""
    std = grad.float().std(correction=0)
    noise = torch.randn(grad.shape, generator=generator, device=grad.device, dtype=torch.float32)
    grad.mul_(coefficient).add_((noise * std).to(grad.dtype))


@register_method("ogm_ge")
class OGMGE(Method):
    min_modalities = 2
    hyperparameters = ("ogm_alpha",)

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, modalities, num_groups)
        self.active = True

    def begin_epoch(self, model, epoch: int) -> None:
        end = self.cfg.ogm_end_epoch or float("inf")
        self.active = self.cfg.ogm_start_epoch <= epoch < end

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        task = task_loss(logits, labels)
        cls_logits, classifier_loss = classifier_outputs(classifiers, features, labels,
                                                         self.modalities, present)
        with torch.no_grad():
            probs = torch.stack([z.sigmoid() for z in cls_logits])             # (M, B)
            true_class = torch.where(labels > 0.5, probs, 1 - probs)
            if present is None:
                coef = ogm_coefficients(true_class.sum(dim=1), self.cfg.ogm_alpha)
            else:
                rows = [present_rows(present, m, labels) for m in self.modalities]
                means = torch.stack([masked_mean(t, r) for t, r in zip(true_class, rows)])
                defined = torch.stack([r.any() if r is not None else torch.ones((), dtype=torch.bool,
                                       device=labels.device) for r in rows])
                coef = ogm_coefficients(means, self.cfg.ogm_alpha, defined)
        coef = coef if self.active else torch.ones_like(coef)
        out = contract(task, task, classifier_loss, torch.ones_like(coef), self.modalities,
                       ogm_active=task.new_tensor(float(self.active)))
        for i, m in enumerate(self.modalities):
            out[f"ogm_coef/{m}"] = coef[i]
        out["ogm_coef"] = coef
        return out

    def after_backward(self, model, out, generator) -> None:
        if not self.active:
            return
        for i, m in enumerate(self.modalities):
            for p in model.encoders[m].parameters():
                if p.grad is not None:
                    ge_noise_(p.grad, out["ogm_coef"][i].to(p.grad.dtype), generator)
