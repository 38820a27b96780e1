"""Training methods by name (trainer/methods/registry.py), like timm's model registry.

`create_method(cfg, modalities, num_groups)` builds the method named by cfg.mode. Every method is
a small nn.Module (its state is checkpointed with the trainer) that supplies the hooks the loop
calls (trainer/methods/base.py), so trainer/loop.py never branches on a method's name.
docs/methods.md describes each method, its paper and the reading chosen where the paper is
ambiguous.
"""
from __future__ import annotations

from trainer.methods.registry import (METHODS, available_methods, create_method, method_class,
                                      register_method)

# One file per method; importing them fills METHODS (the order is the order of `--mode` choices).
from trainer.methods import multifair  # noqa: F401
from trainer.methods import ogm_ge, cggm, fis, sinkhorn  # noqa: F401
from trainer.methods import modality_dropout, unimodal_ensemble  # noqa: F401
from trainer.methods import vl, dualfairvl  # noqa: F401   (the vision-language family)

__all__ = ["METHODS", "register_method", "create_method", "available_methods", "method_class"]
