"""The hooks every training method supplies, with do-nothing defaults, and shared step pieces.

The loop (trainer/loop.py) calls, per epoch and per step:
  begin_epoch(model, epoch)            stage schedules (unimodal_ensemble freezes encoders)
  features(features, present, generator) -> (features, present)
                                       what the fusion sees: modality dropout marks modalities
                                       absent in the presence mask, frozen features
  step(model, classifiers, features, logits, labels, groups, present) -> the step contract dict:
      "loss" (backpropagated), "task" (detached), "classifier_loss" (trains the modality
      classifiers c_m; backpropagated with "loss"), "scale" (M,) per-encoder factors and
      "scale/<m>" entries; any other 0-d entry is logged as train/<key>.
  after_backward(model, out, generator) methods that edit gradients (OGM-GE)
The per-encoder factors out["scale"] act on the encoder's gradient (a hook on h_m) or, with
cfg.modulation_target = "update", on the encoder's learning rate; methods whose factors may act
either way set scales_encoders = True.

Missing modalities: `present` is the batch's {modality: bool (B,)} (None = every sample has every
modality). Everything computed from h_m (the classifiers c_m and their losses, MultiFair's speed
and group statistics, OGM-GE's scores, CGGM's accuracies) uses only the samples that have m; an
absent row's h_m is zeros and must never count as data. The fused prediction exists for every
sample (the fusion masks absent tokens), so fused-loss terms use every sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.presence import classifier_loss_of, masked_mean, present_rows  # noqa: F401


class MethodHooks:
    """Default hooks (a mixin: MultiFair's methods are MultiFairModulator subclasses)."""
    name = ""
    min_modalities = 1          # validate() refuses fewer, naming the mode and the modalities
    scales_encoders = False     # out["scale"] may be moved onto the update (modulation_target)
    hyperparameters: tuple[str, ...] = ()   # TrainConfig fields of its own (searched by search/)
    # The model family the method trains (trainer/models: MODEL_FAMILIES): the loop builds the
    # model and the tokenizer through it, once; "fusion" is MultimodalFusionModel.
    family = "fusion"
    preset_settings: dict[str, dict] = {}   # {preset: config fields}, after the preset (config.py)
    augment = True      # training batches get the train transforms (flip, jitter); CLIP's: none

    @classmethod
    def check_config(cls, cfg, bad) -> None:
        """Refuse bad values of the method's own fields: bad(name, why) raises."""

    def attach(self, datasets: dict, device) -> None:
        """Once, when the trainer is built: its splits (FairCLIP draws its group batches)."""

    def begin_step(self, batch: dict) -> None:
        """Before each step's forward: the batch as the model sees it ("index": item positions)."""

    def make_optimizer(self, param_groups: list[dict], cfg, **kw) -> torch.optim.Optimizer:
        """The model's optimiser (the project's AdamW; FairCLIP's Adam for its family)."""
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)

    def final_report(self, trainer) -> dict:
        """After the final test, the best model loaded: {"test": blocks added to the fit's test
        result, "private": {name: rows}} (rows naming files go to local files only, never to the
        printed JSON or logs: `fit --out DIR` writes DIR/<name>.csv)."""
        return {}

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        pass

    def features(self, features: dict, present: dict | None,
                 generator: torch.Generator | None) -> tuple[dict, dict | None]:
        """(features, presence mask) the fusion sees; the defaults pass both through."""
        return features, present

    def after_backward(self, model: nn.Module, out: dict, generator) -> None:
        pass


class Method(MethodHooks, nn.Module):
    """Base of the non-MultiFair methods: holds cfg, modalities and the number of groups."""

    def __init__(self, cfg, modalities: tuple[str, ...], num_groups: int):
        super().__init__()
        self.cfg, self.modalities, self.num_groups = cfg, tuple(modalities), num_groups


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3: cross-entropy of the fused prediction (one logit, binary label)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels)


def classifier_outputs(classifiers: nn.ModuleDict, features: dict, labels: torch.Tensor,
                       modalities, present: dict | None = None
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The modality classifiers c_m on DETACHED h_m: their logits (every row; absent rows' are
    meaningless) and their own training loss on the samples that have m. Every method trains
    them, so logs stay comparable and methods that read them (OGM-GE here, CGGM) have them."""
    logits = [classifiers[m](features[m].detach()).squeeze(-1).float() for m in modalities]
    return logits, sum(classifier_loss_of(z, labels, present_rows(present, m, z))
                       for m, z in zip(modalities, logits))


def contract(loss, task, classifier_loss, scale, modalities, **extra) -> dict:
    """The step contract dict (keys as MultiFair's, so logging is one loop)."""
    out = {"loss": loss, "task": task.detach(), "classifier_loss": classifier_loss,
           "scale": scale.detach(), **extra}
    for i, m in enumerate(modalities):
        out[f"scale/{m}"] = out["scale"][i]
    return out
