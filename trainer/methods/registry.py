"""The registry of training methods by name, like timm's model registry: a plain dict filled by
`register_method` when a method's module is imported (trainer/methods/__init__.py imports them).

Its own module, so a method file imports the registry without importing the package that imports
every method file (no import circle)."""
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


def available_methods(family: str | None = None) -> tuple[str, ...]:
    """Every `--mode`, or those training one model family ("fusion": the fusion model the
    comparison on FairVision uses; "clip", "dualfairvl": the vision-language family)."""
    return tuple(name for name, cls in METHODS.items()
                 if family is None or getattr(cls, "family", "fusion") == family)


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown mode {name!r}; choose one of {available_methods()}")
    return METHODS[name]


def create_method(cfg, modalities: tuple[str, ...], num_groups: int):
    return method_class(cfg.mode)(cfg, tuple(modalities), num_groups)
