"""Shared pieces of the data layer: the error type, layout descriptions and counted npz reads.

Every npz is opened through `open_npz`, which counts opens in `DECODE_COUNT` so tests can check
that the cache never decodes a file twice. Error messages name the offending file and key only;
patient content (notes, images) never enters a message or a log.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.config import ATTRIBUTES

SPLITS = ("train", "val", "test")
LABEL_KEY = "glaucoma"
MODALITY_KEYS = {"slo": "slo_fundus", "oct": "oct_bscans", "note": "note"}
RACE_STRINGS = {"asian": 0, "black or african american": 1, "black": 1,
                "white or caucasian": 2, "white": 2}
ATTRIBUTE_ORDER = tuple(ATTRIBUTES)   # columns of the cached code table (cache, audit card)
MISSING = -100  # attribute key absent from the npz (distinct from -1, "unknown")
DECODE_COUNT = {"npz": 0}
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


class DataError(ValueError):
    """A dataset problem; the message names the file (or folder) and the key."""


@dataclass(frozen=True)
class Layout:
    """How one released dataset spells its folders and keys."""
    name: str
    subdir: str                                   # "" or e.g. "Glaucoma" under the data root
    split_folders: dict[str, tuple[str, ...]]
    attribute_keys: dict[str, tuple[str, ...]]    # canonical attribute -> npz keys, in preference
    csv_names: tuple[str, ...] = field(default=())

    def base_dir(self, root: str | Path) -> Path:
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist (key: data_root)")
        if self.subdir and (root / self.subdir).is_dir():
            return root / self.subdir
        return root

    def split_dir(self, root: str | Path, split: str) -> Path:
        base = self.base_dir(root)
        for name in self.split_folders[split]:
            if (base / name).is_dir():
                return base / name
        tried = ", ".join(self.split_folders[split])
        raise DataError(f"{base}: no folder for split {split!r} (key: split; tried {tried})")

    def files(self, root: str | Path, split: str) -> list[Path]:
        folder = self.split_dir(root, split)
        files = sorted(folder.glob("data_*.npz"))
        if not files:
            raise DataError(f"{folder}: split {split!r} holds no data_*.npz files (key: split)")
        return files


def open_npz(path: Path, fileobj=None):
    """np.load an npz (counted); a corrupt or truncated file raises DataError naming it.
    `fileobj`: the file's bytes already read (e.g. from object storage), `path` its name."""
    DECODE_COUNT["npz"] += 1
    try:
        return np.load(path if fileobj is None else fileobj, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot open npz (key: <archive>): {type(exc).__name__}") from None


def read_key(npz, path: Path, key: str) -> np.ndarray:
    """One array from an open npz; absent key or corrupt member -> DataError naming both."""
    if key not in npz.files:
        raise DataError(f"{path}: required key {key!r} is missing")
    try:
        return npz[key]
    except _READ_ERRORS as exc:
        if "allow_pickle" in str(exc):   # an object array: loading it would run pickled code
            raise DataError(f"{path}: key {key!r} holds pickled Python objects (refused, "
                            f"never unpickled); expected a numeric array") from None
        raise DataError(f"{path}: cannot decode key {key!r}: {type(exc).__name__}") from None


def attribute_code(npz, path: Path, layout: Layout, attribute: str) -> int:
    """Canonical code of `attribute` (-1 unknown, MISSING when no key for it exists)."""
    for key in layout.attribute_keys[attribute]:
        if key in npz.files:
            return _to_code(read_key(npz, path, key), path, key, attribute)
    return MISSING


def _to_code(value: np.ndarray, path: Path, key: str, attribute: str) -> int:
    value = np.asarray(value).reshape(-1)
    if value.size != 1:
        raise DataError(f"{path}: key {key!r} should be a scalar, has shape {value.shape}")
    item = value[0]
    if isinstance(item, (str, np.str_, bytes, np.bytes_)):
        text = item.decode() if isinstance(item, bytes) else str(item)
        if attribute == "race" and text.strip().lower() in RACE_STRINGS:
            return RACE_STRINGS[text.strip().lower()]
        if text.strip().lstrip("-").isdigit():
            return int(text)
        raise DataError(f"{path}: key {key!r} holds an unrecognised {attribute} string")
    return int(item)


def check_codes(codes: np.ndarray, files: np.ndarray, folder: Path, layout: Layout,
                attribute: str) -> None:
    """Refuse codes that are absent or not in ATTRIBUTES (besides -1), naming the file and key."""
    valid = set(ATTRIBUTES[attribute]) | {-1}
    keys = "/".join(layout.attribute_keys[attribute])
    for code, name in zip(codes.tolist(), files.tolist()):
        if code == MISSING:
            raise DataError(f"{folder / name}: no key for attribute {attribute!r} (tried {keys})")
        if code not in valid:
            raise DataError(f"{folder / name}: key {keys!r} has unknown {attribute} code {code}")

