"""`dualfairvl`: our READING of DualFairVL (arXiv 2508.18886, no public code), trained on the
frozen-CLIP prompt model of trainer/models/dualfairvl.py. docs/methods.md separates the
abstract's parts from ours.

loss = CE(target-branch class logits, y)                       (the task)
     + CE(sensitive-branch group logits, g)                    (the sensitive branch learns the
                                                                group, so the target need not)
     + lambda_orth * mean_{c,g} cos(class anchor c, group anchor g)^2
     + lambda_proto * [CE(cos(f_target, class prototypes), y) + CE(cos(f_sensitive, group
                       prototypes), g)]
Prototypes are per-class and per-group means of the branches' unit features, kept as EMAs
(momentum PROTO_MOMENTUM, no gradient; the method's state, so a checkpoint holds them); a
prototype joins the loss once its class or group was seen.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.methods.base import Method, classifier_outputs, contract
from trainer.methods.registry import register_method
from trainer.methods.vl import check_vl_config, linear_probe

PROTO_MOMENTUM = 0.9


def orthogonality(class_anchors: torch.Tensor, group_anchors: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between every class anchor and every group anchor (0: orthogonal)."""
    cos = F.normalize(class_anchors.float(), dim=-1) @ F.normalize(group_anchors.float(), dim=-1).T
    return cos.pow(2).mean()


@register_method("dualfairvl")
class DualFairVL(Method):
    family = "dualfairvl"
    augment = False     # as CLIP's preprocessing (no flip, no jitter)
    hyperparameters = ("vl_context_length", "lambda_orth", "lambda_proto")
    # prompt learning on a frozen backbone: a larger lr than fine-tuning (our choice)
    preset_settings = {
        "paper": dict(lr=1e-3, epochs=10, batch_size=32, note_max_length=77,
                      modalities=("slo",)),
        "tiny": dict(note_max_length=77, modalities=("slo",)),
    }

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, ("slo",), num_groups)
        # prototypes (code, width) and whether each code was seen; extra state: the width is the
        # model's, known at the first batch
        self.protos = {"class": None, "group": None}
        self.seen = {"class": torch.zeros(2, dtype=torch.bool),
                     "group": torch.zeros(num_groups, dtype=torch.bool)}

    def get_extra_state(self):
        return {"protos": self.protos, "seen": self.seen}

    def set_extra_state(self, state):
        self.protos, self.seen = state["protos"], state["seen"]

    @classmethod
    def check_config(cls, cfg, bad) -> None:
        check_vl_config(cfg, bad, needs_note=False)

    def _update(self, kind: str, features: torch.Tensor, codes: torch.Tensor):
        """EMA of the unit features per code; returns (prototypes, seen) before this batch."""
        unit = F.normalize(features.detach().float(), dim=-1)
        seen = self.seen[kind].to(unit.device)
        proto = self.protos[kind]
        proto = unit.new_zeros(len(seen), unit.shape[1]) if proto is None else proto.to(unit.device)
        now, seen_now = proto.clone(), seen.clone()
        for c in range(len(seen)):
            rows = codes == c
            if rows.any():
                mean = unit[rows].mean(dim=0)
                now[c] = torch.where(seen[c], PROTO_MOMENTUM * now[c]
                                     + (1 - PROTO_MOMENTUM) * mean, mean)
                seen_now[c] = True
        self.protos[kind], self.seen[kind] = now, seen_now
        return proto, seen

    def _proto_loss(self, model, feature, prototypes, seen, codes) -> torch.Tensor:
        usable = seen[codes]
        if not usable.any():
            return feature.new_zeros(())
        logits = model.cosine_logits(feature, prototypes)
        logits = logits.masked_fill(~seen, -1e4)         # unseen prototypes are no class
        return F.cross_entropy(logits[usable], codes[usable])

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        target, sensitive = model.branches(features)
        class_logits = model.cosine_logits(target, model.anchors()[0])
        task = F.cross_entropy(class_logits, labels.long())
        group = F.cross_entropy(model.group_logits(features), groups)
        orth = orthogonality(*model.anchors())
        y = labels.long()
        proto_c, seen_c = self._update("class", target, y)
        proto_g, seen_g = self._update("group", sensitive, groups)
        proto = (self._proto_loss(model, target, proto_c, seen_c, y)
                 + self._proto_loss(model, sensitive, proto_g, seen_g, groups))
        loss = task + group + self.cfg.lambda_orth * orth + self.cfg.lambda_proto * proto
        _, classifier_loss = classifier_outputs(classifiers, features, labels, ("slo",), present)
        scale = torch.ones(1, device=logits.device)
        return contract(loss, task, classifier_loss, scale, self.modalities,
                        group=group.detach(), orth=orth.detach(), proto=proto.detach())

    def final_report(self, trainer) -> dict:
        return {"test": {"linear_probe": linear_probe(trainer)}} if self.cfg.linear_probe else {}
