"""Data audit: every file checked in the pass that builds the cache, duplicates, the dataset card.

Per file (cache.py calls these on the arrays it reads anyway, so the audit costs no extra read):
- keys: the label `glaucoma` and a key for the evaluated attribute; a requested modality's key
  may be absent (a missing modality: counted in the card, never checked, never hashed), but a
  present one is checked like any image and refused when corrupt;
- label: one value, 0 or 1 (an integer, not 0.5);
- attribute codes: one value, a code of trainer.config.ATTRIBUTES or -1 (unknown), for every
  attribute whose key exists (strings: the released race spellings);
- images: numeric dtype, rank and shape (SLO (H, W), or (H, W, 3) RGB; OCT (D, H, W)), no empty
  axis, every value finite, not constant (a blank export);
- a content hash (BLAKE2b of dtype, shape and bytes) of each image, kept beside the cache.

Across files: two files with identical pixels in one image modality (a byte-for-byte copy, or the
same image re-saved) are refused naming both, within a split or across splits (a test-set leak
inflates every figure); `allow_duplicates=true` (`--allow-duplicates`) goes on knowingly, with a
warning. Notes are not hashed: short notes may legitimately repeat.

RGB fundus images, decided: converted to grey with the ITU-R 601-2 luma weights (0.299 R +
0.587 G + 0.114 B, as PIL's convert("L")), then handled like the released grey SLO; the card
counts them and every run says so. Other channel counts (RGBA, channels-first) are refused.

A defect refuses the whole dataset before any training, in one line: the first defective file
and its defect, plus how many other files have defects (`python -m trainer audit` lists them).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from trainer.config import ATTRIBUTES
from trainer.data.common import ATTRIBUTE_ORDER, LABEL_KEY, MISSING, SPLITS, DataError
from trainer.data.transforms import LUMA

HASH_BYTES = 16
NO_IMAGE = np.zeros(HASH_BYTES, np.uint8)   # the "hash" of an absent image: never a duplicate
# Fewer positives or negatives than this in a group of the validation or test split: its AUC is
# noise. Hanley & McNeil (Radiology 1982) standard error at AUC 0.8 with 10 + 10 cases is ~0.10.
MIN_PER_CLASS = 10


class AuditError(DataError):
    """One or more defective files; the message is one line, `.defects` lists them all."""

    def __init__(self, defects: list[str]):
        self.defects = list(defects)
        others = len(self.defects) - 1
        tail = f" (and {others} other file{'s' if others != 1 else ''} with defects: " \
               f"`python -m trainer audit` lists them)" if others else ""
        super().__init__(self.defects[0] + tail)


# ----------------------------------------------------------------------------- one file

def content_hash(array: np.ndarray) -> np.ndarray:
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).data)
    return np.frombuffer(h.digest(), np.uint8)


def _check_dtype(array: np.ndarray, path: Path, key: str) -> None:
    if array.dtype.kind not in "uif":
        raise DataError(f"{path}: key {key!r} has dtype {array.dtype}, expected numbers")


def _check_pixels(array: np.ndarray, path: Path, key: str) -> None:
    if 0 in array.shape:
        raise DataError(f"{path}: key {key!r} is empty, shape {array.shape}")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(f"{path}: key {key!r} has {bad} of {array.size} values NaN or infinite")
    if array.min() == array.max():
        raise DataError(f"{path}: key {key!r} is constant (every value {array.flat[0]}): "
                        f"a blank image")


def check_slo(image: np.ndarray, path: Path, key: str) -> bool:
    """Refuse a bad SLO fundus; True when it is RGB (converted to grey by preprocess_slo)."""
    _check_dtype(image, path, key)
    rgb = image.ndim == 3 and image.shape[-1] == 3
    if not (image.ndim == 2 or rgb or (image.ndim == 3 and image.shape[-1] == 1)):
        raise DataError(f"{path}: key {key!r} has shape {image.shape}, expected (H, W) grey "
                        f"or (H, W, 3) RGB")
    _check_pixels(image, path, key)
    return rgb


def check_oct(volume: np.ndarray, path: Path, key: str) -> None:
    _check_dtype(volume, path, key)
    if volume.ndim != 3:
        raise DataError(f"{path}: key {key!r} has shape {volume.shape} (rank {volume.ndim}), "
                        f"expected a (D, H, W) volume of B-scans")
    _check_pixels(volume, path, key)


def check_label(value: np.ndarray, path: Path) -> int:
    value = np.asarray(value)
    if value.size != 1 or value.dtype.kind not in "biuf":
        raise DataError(f"{path}: key {LABEL_KEY!r} must be one number 0 or 1, found dtype "
                        f"{value.dtype} shape {value.shape}")
    item = value.reshape(-1)[0].item()
    if item not in (0, 1):
        raise DataError(f"{path}: key {LABEL_KEY!r} must be 0 or 1, found {item}")
    return int(item)


def check_codes(codes, path: Path, layout) -> None:
    """Every attribute code of one file known or -1 (MISSING: no key, judged per attribute)."""
    for attribute, code in zip(ATTRIBUTES, codes):
        if code not in ATTRIBUTES[attribute] and code not in (-1, MISSING):
            keys = "/".join(layout.attribute_keys[attribute])
            raise DataError(f"{path}: key {keys!r} has unknown {attribute} code {code}")


# ----------------------------------------------------------------------------- across files

def duplicates(splits: dict) -> list[tuple[str, Path, str, Path, str]]:
    """(keys, file, split, first file with the same pixels, its split) per repeated file.

    `splits`: {split: (files [Path], {modality key: (n, HASH_BYTES) uint8 hashes})}."""
    first: dict[tuple[str, bytes], tuple[Path, str]] = {}
    found: dict[tuple[Path, str, Path, str], list[str]] = {}
    for split in (s for s in SPLITS if s in splits):   # in split order: the first copy is named
        files, hashes = splits[split]
        for key, table in hashes.items():
            for path, digest in zip(files, table):
                if not digest.any():   # NO_IMAGE: the sample lacks this modality
                    continue
                seen = first.setdefault((key, digest.tobytes()), (path, split))
                if seen[0] != path:
                    found.setdefault((path, split, *seen), []).append(repr(key))
    return [(" and ".join(keys), *pair) for pair, keys in found.items()]


def check_duplicates(found: list, allow: bool) -> list[str]:
    """Refuse `duplicates()` naming both files; with `allow`, return a warning line instead."""
    if not found:
        return []
    key, path, split, other, other_split = found[0]
    where = "in the same split" if split == other_split else "across splits: a test-set leak" \
        if "test" in (split, other_split) else "across splits"
    line = (f"{path} ({split}) has the same {key} pixels as {other} ({other_split}), {where}"
            + (f"; {len(found) - 1} more duplicated file(s)" if len(found) > 1 else ""))
    if not allow:
        raise DataError(line + "; remove them, or set allow_duplicates=true "
                        "(--allow-duplicates) to go on knowingly")
    return [f"{len(found)} duplicated file(s) kept (allow_duplicates=true): " + line]


# ----------------------------------------------------------------------------- the card

def dataset_card(layout_name: str, split_meta: dict, rgb: int, n_duplicates: int) -> dict:
    """Per split, attribute and group: n, positives, negatives; unknown (-1) and absent keys;
    under "missing", per modality lacking in at least one sample of the split (from the meta's
    `present:<modality>` flags), how many lack it, overall and per group of every attribute.

    Aggregates only (no file names): safe to print, save and log."""
    card = {"layout": layout_name, "min_per_class": MIN_PER_CLASS, "rgb_converted": int(rgb),
            "duplicates": int(n_duplicates), "splits": {}}
    for split, meta in split_meta.items():
        labels, codes = meta["labels"], meta["codes"]
        entry = {"n": int(len(labels)), "positives": int(labels.sum()), "attributes": {}}
        for j, attribute in enumerate(ATTRIBUTE_ORDER):
            col = codes[:, j]
            groups = {name: {"n": int((col == c).sum()), "positives": int(labels[col == c].sum()),
                             "negatives": int((labels[col == c] == 0).sum())}
                      for c, name in ATTRIBUTES[attribute].items()}
            entry["attributes"][attribute] = {"groups": groups, "unknown": int((col == -1).sum()),
                                              "absent": int((col == MISSING).sum())}
        entry["missing"] = missing_counts(meta)
        card["splits"][split] = entry
    return card


def missing_counts(meta: dict) -> dict:
    """{modality: {"n", "attributes": {attribute: {group: n, "unknown": n}}}} of the samples
    lacking each modality; a modality every sample has is left out (a complete split: {})."""
    out, codes = {}, meta["codes"]
    for key in sorted(k for k in meta if k.startswith("present:")):
        absent = ~np.asarray(meta[key], bool)
        if not absent.any():
            continue
        per = {}
        for j, attribute in enumerate(ATTRIBUTE_ORDER):
            col = codes[:, j]
            per[attribute] = {name: int((absent & (col == c)).sum())
                              for c, name in ATTRIBUTES[attribute].items()}
            per[attribute]["unknown"] = int((absent & (col == -1)).sum())
        out[key.removeprefix("present:")] = {"n": int(absent.sum()), "attributes": per}
    return out


def thin_groups(card: dict, attribute: str) -> list[str]:
    """Warning lines: groups of `attribute` in val/test with too few positives or negatives."""
    lines = []
    for split in (s for s in ("val", "test") if s in card["splits"]):
        groups = card["splits"][split]["attributes"][attribute]["groups"]
        thin = [f"{name} ({g['positives']} positive, {g['negatives']} negative)"
                for name, g in groups.items()
                if g["n"] and min(g["positives"], g["negatives"]) < MIN_PER_CLASS]
        if thin:
            lines.append(f"split {split!r}, {attribute}: fewer than {MIN_PER_CLASS} positives or "
                         f"negatives in {', '.join(thin)}; their group AUC, and ES-AUC over them, "
                         f"is mostly noise")
    return lines


def render_card(card: dict, attributes=None) -> str:
    """A plain-text table: one row per (attribute, group), columns n / pos / neg per split."""
    splits = list(card["splits"])
    head = f"{'attribute':<14}{'group':<18}" + "".join(f"{s + ' n/pos/neg':>20}" for s in splits)
    rows = [f"dataset card ({card['layout']}): " + ", ".join(
        f"{s} {card['splits'][s]['n']} samples, {card['splits'][s]['positives']} positive"
        for s in splits), head, "-" * len(head)]
    for attribute in attributes or ATTRIBUTES:
        parts = [card["splits"][s]["attributes"][attribute] for s in splits]
        for name in ATTRIBUTES[attribute].values():
            cells = "".join(f"{'{n}/{positives}/{negatives}'.format(**p['groups'][name]):>20}"
                            for p in parts)
            rows.append(f"{attribute:<14}{name:<18}{cells}")
        cells = "".join(f"{_missing(p):>20}" for p in parts)
        rows.append(f"{attribute:<14}{'unknown (-1)':<18}{cells}")
    rows += _render_missing(card, splits, attributes or list(ATTRIBUTES))
    rows.append(f"RGB fundus converted to grey: {card['rgb_converted']}; duplicated files: "
                f"{card['duplicates']}; groups need >= {card['min_per_class']} positives and "
                f"negatives in val/test for a usable group AUC")
    return "\n".join(rows)


def _render_missing(card: dict, splits: list, attributes: list) -> list[str]:
    """Rows of samples lacking a modality, per group and split (none: one line saying so)."""
    found = sorted({m for s in splits for m in card["splits"][s].get("missing", {})})
    if not found:
        return ["missing modalities: none (every sample has every modality read)"]
    rows = []
    for m in found:
        parts = [card["splits"][s].get("missing", {}).get(m) for s in splits]
        cells = "".join(f"{(p['n'] if p else 0):>20}" for p in parts)
        rows.append(f"{'missing ' + m:<14}{'all':<18}{cells}")
        for attribute in attributes:
            for name in [*ATTRIBUTES[attribute].values(), "unknown"]:
                cells = "".join(f"{(p['attributes'][attribute][name] if p else 0):>20}"
                                for p in parts)
                rows.append(f"{'  ' + attribute:<14}{name:<18}{cells}")
    return rows


def _missing(part: dict) -> str:
    return f"{part['unknown']}" + (f" (+{part['absent']} no key)" if part["absent"] else "")


def save_card(card: dict, directory: Path, key: str) -> Path:
    """card-<key>.json (strict JSON) and card-<key>.txt beside the cache; returns the .txt."""
    from trainer.jsonout import dumps

    base = Path(directory) / f"card-{key}"
    for path, content in ((base.with_suffix(".json"), dumps(card, indent=1)),
                          (base.with_suffix(".txt"), render_card(card) + "\n")):
        if not path.exists():   # trials of a search load the same data at once: write atomically
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(content)
            os.replace(tmp, path)
    return base.with_suffix(".txt")


__all__ = ["AuditError", "NO_IMAGE", "missing_counts", "check_slo", "check_oct", "check_label",
           "check_codes", "content_hash",
           "check_duplicates", "dataset_card", "thin_groups", "render_card", "save_card",
           "MIN_PER_CLASS", "LUMA"]
