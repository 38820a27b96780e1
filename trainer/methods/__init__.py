"""Training methods by name, like timm's model registry: a plain dict filled by `register_method`.

`create_method(cfg, modalities, num_groups)` builds the method named by cfg.mode. Every method is
a small nn.Module (its state is checkpointed with the trainer) that supplies the hooks the loop
calls (trainer/methods/base.py), so trainer/loop.py never branches on a method's name.
docs/methods.md describes each method, its paper and the reading chosen where the paper is
ambiguous.
"""
from __future__ import annotations

METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make the method available as `--mode name`."""
    def add(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls
    return add


def available_methods() -> tuple[str, ...]:
    return tuple(METHODS)


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown mode {name!r}; choose one of {available_methods()}")
    return METHODS[name]


def create_method(cfg, modalities: tuple[str, ...], num_groups: int):
    return method_class(cfg.mode)(cfg, tuple(modalities), num_groups)


# One file per method; importing them fills METHODS (the order is the order of `--mode` choices).
from trainer.methods import multifair  # noqa: E402,F401
from trainer.methods import ogm_ge, cggm, fis, sinkhorn  # noqa: E402,F401
from trainer.methods import modality_dropout, unimodal_ensemble  # noqa: E402,F401

__all__ = ["METHODS", "register_method", "create_method", "available_methods", "method_class"]
