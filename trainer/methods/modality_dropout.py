"""Modality dropout: drop whole modalities at train time so the fusion cannot lean on one of them
(Neverova et al., "ModDrop: Adaptive Multi-modal Gesture Recognition", IEEE TPAMI 2016; a
standard remedy for the lazy modality, and the natural way to prepare a model for patients who
lack a modality).

Readings (docs/methods.md):
- Per sample and per modality, independently with probability modality_dropout_rate, the
  modality is marked ABSENT in the presence mask the fusion sees (issue 22): its token is masked
  out of attention, exactly as for a sample that really lacks it, so training sees the same
  situation as deployment. (Before presence masks, h_m was zeroed; a zero token still carried
  its projection bias and modality embedding into attention.) Its encoder gets no fused-loss
  gradient from that sample; the classifiers c_m still learn from it (the input was real).
- Only modalities the sample has can be dropped, and a sample never loses all of them: if every
  one it has was drawn, one of those, chosen uniformly at random, is kept.
- No rescaling of the kept features (unlike unit dropout), and nothing is dropped in evaluation.
- The draws use the loop's seeded per-epoch generator, so a resumed fit draws the same masks.
"""
from __future__ import annotations

import torch

from trainer.methods.registry import register_method
from trainer.methods.base import Method, classifier_outputs, contract, task_loss


def dropout_mask(batch: int, modalities: int, rate: float, generator, device,
                 present: torch.Tensor | None = None) -> torch.Tensor:
    """(B, M) bool, True = dropped. Only present entries (`present`, (B, M) bool; None = all)
    are dropped, and a row never loses all of its present ones (one drawn uniformly is kept)."""
    have = (torch.ones(batch, modalities, dtype=torch.bool, device=device) if present is None
            else present.to(device, torch.bool))
    drop = (torch.rand(batch, modalities, generator=generator, device=device) < rate) & have
    # the kept one: the present modality with the largest uniform draw
    pick = torch.rand(batch, modalities, generator=generator, device=device).masked_fill(~have, -1)
    keep = torch.zeros_like(drop).scatter_(1, pick.argmax(dim=1, keepdim=True), True)
    everything = (drop == have).all(dim=1, keepdim=True)
    return drop & ~(keep & everything)


@register_method("modality_dropout")
class ModalityDropout(Method):
    min_modalities = 2
    hyperparameters = ("modality_dropout_rate",)

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, modalities, num_groups)
        self.last_drop_rate = None

    def features(self, features: dict, present, generator) -> tuple[dict, dict]:
        if not self.training:
            return features, present
        first = features[self.modalities[0]]
        b, device = first.shape[0], first.device
        have = None if present is None else torch.stack(
            [present[m].reshape(-1).to(device, torch.bool) if m in present
             else torch.ones(b, dtype=torch.bool, device=device) for m in self.modalities], dim=1)
        drop = dropout_mask(b, len(self.modalities), self.cfg.modality_dropout_rate, generator,
                            device, have)
        self.last_drop_rate = drop.float().mean()
        kept = ~drop if have is None else have & ~drop
        return features, {m: kept[:, i] for i, m in enumerate(self.modalities)}

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        task = task_loss(logits, labels)
        _, classifier_loss = classifier_outputs(classifiers, features, labels, self.modalities,
                                                present)
        scale = torch.ones(len(self.modalities), device=logits.device)
        extra = {} if self.last_drop_rate is None else {"dropped": self.last_drop_rate}
        return contract(task, task, classifier_loss, scale, self.modalities, **extra)
