"""A group fairness regulariser in the style of the Sinkhorn-distance loss of the fair
vision-language papers (Luo et al., "FairCLIP: Harnessing Fairness in Vision-Language
Learning", CVPR 2024; the FairVLMed dataset paper).

loss = task + sinkhorn_weight * mean over groups present in the batch of
       SinkhornDivergence(group g's scores, the whole batch's scores)

Readings (docs/methods.md): FairCLIP matches the distributions of image-text similarities; our
model has one fused score per sample, so we match the distributions of the fused PROBABILITIES
(sigmoid of the logit: bounded, so one blur of 0.1 means the same at every stage of training).
The divergence is geomloss's debiased Sinkhorn (p = 2, blur 0.1), the same as FIS uses; it is ~0
when a group's scores are distributed like the batch's and grows with their shift. Missing
modalities: the fused probabilities exist for every sample; only c_m's losses use the samples that
have m.
"""
from __future__ import annotations

import torch

from trainer.methods.registry import register_method
from trainer.methods.base import Method, classifier_outputs, contract, task_loss
from trainer.methods.fis import group_distances


def sinkhorn_fairness(scores: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean over present groups of the Sinkhorn divergence of the group's scores (probabilities,
    so their spread is at most 1) to all scores."""
    present = torch.stack([(groups == g).any() for g in range(num_groups)]).float()
    return (group_distances(scores, groups, num_groups, diameter=1.0) * present).sum() / present.sum()


@register_method("sinkhorn")
class SinkhornFairness(Method):
    hyperparameters = ("sinkhorn_weight",)

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        task = task_loss(logits, labels)
        fair = sinkhorn_fairness(logits.float().sigmoid(), groups, self.num_groups)
        _, classifier_loss = classifier_outputs(classifiers, features, labels, self.modalities,
                                                present)
        scale = torch.ones(len(self.modalities), device=logits.device)
        return contract(task + self.cfg.sinkhorn_weight * fair, task, classifier_loss, scale,
                        self.modalities, fairness=fair.detach())
