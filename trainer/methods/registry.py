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


def available_methods() -> tuple[str, ...]:
    return tuple(METHODS)


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown mode {name!r}; choose one of {available_methods()}")
    return METHODS[name]


def create_method(cfg, modalities: tuple[str, ...], num_groups: int):
    return method_class(cfg.mode)(cfg, tuple(modalities), num_groups)
