"""FIS: fair identity scaling (Luo et al., "FairVision: Equitable Deep Learning for Eye Disease
Screening via Fair Identity Scaling", the FairVision dataset paper; Fair_Loss_Scaler in the
authors' FairVision code).

Per step, with x_i the per-sample fused loss:
  individual weight  w_i = softmax over the batch of x_i / T
  group distance     D_g = Sinkhorn divergence between group g's losses and the whole batch's
  group weight       v_i = softmax over the batch of D_{g(i)} / T
  loss               sum_i ((1 - c) * w_i + c * v_i) * x_i
The Sinkhorn divergence is geomloss's SamplesLoss("sinkhorn", p=2, blur=0.1), as the authors use
(pinned in pyproject.toml), not a hand-written one.

Readings (docs/methods.md):
- The weights sum to one, and we SUM the weighted losses (a weighted mean); the authors take the
  MEAN of weight * loss, which is 1/B of that (harmless under Adam, not under clipping or SGD).
  With uniform weights ours equals the plain task loss.
- The weights are scale factors: computed from detached losses (no gradient through them).
- The authors draw a separate no-grad batch per group for the group distances; we use the
  groups' samples in the current batch (no extra forward pass). A group absent from the batch
  gets no weight (it has no samples to weight).
- Missing modalities: the fused loss exists for every sample (the fusion masks absent
  modalities), so the weights are unchanged; only c_m's losses use the samples that have m.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.methods.registry import register_method
from trainer.methods.base import Method, classifier_outputs, contract

SINKHORN_BLUR = 0.1
LOSS_DIAMETER = 10.0     # per-sample cross-entropies rarely exceed it; larger ones still work


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, diameter: float,
                        blur: float = SINKHORN_BLUR):
    """Debiased Sinkhorn divergence between two 1-D samples (geomloss, p = 2). `diameter` is a
    fixed bound on the values' spread (where the epsilon-scaling starts): geomloss would measure
    it from the data, which is a device sync and fails when every value is equal."""
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=blur, diameter=diameter, backend="tensorized")
    return loss(x.float().reshape(-1, 1), y.float().reshape(-1, 1))


def group_distances(values: torch.Tensor, groups: torch.Tensor, num_groups: int,
                    diameter: float = LOSS_DIAMETER) -> torch.Tensor:
    """(G,) Sinkhorn divergence of each group's values to all values; 0 for absent groups."""
    out = values.new_zeros(num_groups)
    for g in range(num_groups):
        member = groups == g
        if member.any():
            out[g] = sinkhorn_divergence(values[member], values, diameter)
    return out


def fis_weights(losses: torch.Tensor, groups: torch.Tensor, num_groups: int, c: float,
                temperature: float) -> torch.Tensor:
    """(B,) per-sample weights (summing to one) from detached per-sample losses."""
    losses = losses.detach().float()
    individual = F.softmax(losses / temperature, dim=0)
    distance = group_distances(losses, groups, num_groups)
    group = F.softmax(distance[groups] / temperature, dim=0)
    return (1 - c) * individual + c * group


@register_method("fis")
class FIS(Method):
    hyperparameters = ("fis_c", "fis_temperature")

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        per_sample = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        weights = fis_weights(per_sample, groups, self.num_groups, self.cfg.fis_c,
                              self.cfg.fis_temperature)
        loss = (weights * per_sample).sum()
        _, classifier_loss = classifier_outputs(classifiers, features, labels, self.modalities,
                                                present)
        scale = torch.ones(len(self.modalities), device=logits.device)
        return contract(loss, per_sample.mean(), classifier_loss, scale, self.modalities,
                        fis_max_weight=weights.max() * len(weights))
