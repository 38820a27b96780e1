"""Modality dropout: drop whole modalities at train time so the fusion cannot lean on one of them
(Neverova et al., "ModDrop: Adaptive Multi-modal Gesture Recognition", IEEE TPAMI 2016; a
standard remedy for the lazy modality).

Readings (docs/methods.md):
- Per sample and per modality, independently with probability modality_dropout_rate, the
  encoder's output h_m is replaced by zeros before projection and fusion (the modality is
  absent; its encoder gets no fused-loss gradient from that sample). Inputs are not zeroed: a
  zero image still has a non-zero embedding.
- A sample never loses all its modalities: if every one was drawn, one chosen uniformly at
  random is kept.
- No rescaling of the kept features (unlike unit dropout), and nothing is dropped in evaluation.
- The draws use the loop's seeded per-epoch generator, so a resumed fit draws the same masks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.methods.registry import register_method
from trainer.methods.base import Method, classifier_outputs, contract, task_loss


def dropout_mask(batch: int, modalities: int, rate: float, generator, device) -> torch.Tensor:
    """(B, M) bool, True = dropped; never a whole row (one modality is always kept)."""
    drop = torch.rand(batch, modalities, generator=generator, device=device) < rate
    keep = torch.randint(modalities, (batch,), generator=generator, device=device)
    return drop & ~(F.one_hot(keep, modalities).bool() & drop.all(dim=1, keepdim=True))


@register_method("modality_dropout")
class ModalityDropout(Method):
    min_modalities = 2
    hyperparameters = ("modality_dropout_rate",)

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, modalities, num_groups)
        self.last_drop_rate = None

    def features(self, features: dict, generator) -> dict:
        if not self.training:
            return features
        first = features[self.modalities[0]]
        drop = dropout_mask(first.shape[0], len(self.modalities), self.cfg.modality_dropout_rate,
                            generator, first.device)
        self.last_drop_rate = drop.float().mean()
        return {m: features[m] * (~drop[:, i]).to(features[m].dtype).unsqueeze(-1)
                for i, m in enumerate(self.modalities)}

    def step(self, model, classifiers, features, logits, labels, groups) -> dict:
        task = task_loss(logits, labels)
        _, classifier_loss = classifier_outputs(classifiers, features, labels, self.modalities)
        scale = torch.ones(len(self.modalities), device=logits.device)
        extra = {} if self.last_drop_rate is None else {"dropped": self.last_drop_rate}
        return contract(task, task, classifier_loss, scale, self.modalities, **extra)
