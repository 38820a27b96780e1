"""MultiFair (Zubair et al., "MultiFair: Multimodal Balanced Fairness-Aware Medical
Classification with Dual-Level Gradient Modulation", arXiv 2510.07328, IEEE TMI) and its
ablations (the paper's Fig. 3), plus the authors' behaviour as `full_reference`.

The step quantities live in trainer/modulation.py (MultiFairModulator); the classes here only
name the modes and say what each uses (the class attributes uses_balance / uses_fairness):
  baseline        plain fusion: task loss only, no scaling (the classifiers c_m still learn, so
                  their factors are logged for comparison, but nothing is applied)
  modality        MultiFair_M: balance factors B_m and the direction loss L_gm (Eqs. 4-8)
  fairness        MultiFair_G: fairness factors f_m and F_G behind the trigger (Eqs. 9-14)
  full            both (Eqs. 14-15)
  full_reference  the authors' code: the same factors, but L_gm and F_G carry no gradient (in
                  their code L_gm is identically zero and F_G a Python float), so only the
                  gradient scaling shapes training. Reading: we keep their VALUES in the loss
                  (logged, comparable with `full`) and detach them.
"""
from __future__ import annotations

from trainer.methods.registry import register_method
from trainer.methods.base import MethodHooks, task_loss
from trainer.modulation import MultiFairModulator

MULTIFAIR_HYPERPARAMETERS = ("rho", "lambda_gm", "tau", "delta", "lambda_f")


class MultiFair(MethodHooks, MultiFairModulator):
    """A MultiFair mode: its class says which terms act (uses_balance, uses_fairness)."""
    min_modalities = 2
    scales_encoders = True
    hyperparameters = MULTIFAIR_HYPERPARAMETERS


@register_method("baseline")
class Baseline(MultiFair):
    min_modalities = 1
    scales_encoders = False
    hyperparameters = ()


@register_method("modality")
class ModalityOnly(MultiFair):
    uses_balance = True


@register_method("fairness")
class FairnessOnly(MultiFair):
    # the fairness factor is per encoder and per group: meaningful with a single modality too
    min_modalities = 1
    uses_fairness = True


@register_method("full")
class Full(MultiFair):
    uses_balance = True
    uses_fairness = True


@register_method("full_reference")
class FullReference(Full):
    """`full` with L_gm and F_G detached: same logged values, no gradient from either."""

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        out = super().step(model, classifiers, features, logits, labels, groups, present)
        task = task_loss(logits, labels)                       # the only term with gradient
        extra = (out["loss"] - task).detach()                  # lambda_gm*L_gm + trig*lambda_f*F_G
        out.update(loss=task + extra, gm=out["gm"].detach(), fairness=out["fairness"].detach())
        return out
