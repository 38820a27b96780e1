"""Uni-modal first, then fuse: the strong baseline of Du et al., "On Uni-Modal Feature Learning in
Supervised Multi-Modal Learning", ICML 2023 (their Uni-Modal Ensemble / Uni-Modal Teacher: each
encoder must first learn its own modality's features, which joint training leaves unlearned).

Two stages in the same loop, model and metrics:
  stage 1 (epochs [0, unimodal_epochs)): each encoder trains ALONE with its own head (the modality
          classifier c_m on the live h_m); the fused loss trains projections, fusion and head on
          DETACHED features, so it sends no gradient into any encoder (validation still scores
          the fused model every epoch).
  stage 2 (the remaining epochs): encoders frozen (eval mode, features detached, so AdamW skips
          them: neither gradient nor weight decay moves them); projections, fusion and head train
          on the fused loss.
Readings (docs/methods.md): Du et al.'s UME averages the unimodal models' predictions; we fuse
the unimodally trained encoders with our fusion model instead (frozen-encoder fusion), so every
method shares one model and one evaluation. unimodal_epochs = 0 means half the epochs (at least
one). c_m trains at classifier_lr, the encoders at lr.
"""
from __future__ import annotations

import torch

from trainer.methods.registry import register_method
from trainer.methods.base import Method, classifier_loss_of, contract, present_rows, task_loss


@register_method("unimodal_ensemble")
class UnimodalEnsemble(Method):
    hyperparameters = ("unimodal_epochs",)

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, modalities, num_groups)
        self.stage = 1

    @property
    def unimodal_epochs(self) -> int:
        return self.cfg.unimodal_epochs or max(1, self.cfg.epochs // 2)

    def begin_epoch(self, model, epoch: int) -> None:
        self.stage = 1 if epoch < self.unimodal_epochs else 2
        if self.stage == 2:
            model.encoders.eval()          # frozen feature extractors: no dropout noise

    def features(self, features: dict, present, generator) -> tuple[dict, dict | None]:
        # the fused loss never reaches an encoder (stage 1: they learn alone; stage 2: frozen)
        if not self.training:
            return features, present
        return {m: h.detach() for m, h in features.items()}, present

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        task = task_loss(logits, labels)
        live = self.stage == 1 and self.training
        unimodal = [classifiers[m](features[m] if live else features[m].detach()).squeeze(-1)
                    for m in self.modalities]
        # each encoder learns alone from the samples that have its modality
        classifier_loss = sum(classifier_loss_of(z.float(), labels, present_rows(present, m, z))
                              for m, z in zip(self.modalities, unimodal))
        scale = torch.ones(len(self.modalities), device=logits.device)
        return contract(task, task, classifier_loss, scale, self.modalities,
                        stage=task.new_tensor(float(self.stage)))
