"""Process-safe on-disk cache of preprocessed arrays, read back with memory maps.

One entry per (absolute data root, split, modality, preprocessing parameters), stored as a .npy
file named by a hash of those parts (plus the source files' names, sizes and mtimes, so a changed
dataset gets a new entry). Labels, all attribute codes and npz file names of a split live in one
small meta .npz (cache only; never logged). Location: cfg.cache_dir, else $MULTIFAIR_CACHE, else
~/.cache/multifair-tune.

Audit (audit.py): the same pass checks every file it reads and hashes every image; a defect in
any file publishes nothing and raises audit.AuditError once all files were read. The presence
flags of every modality entry, and the hashes and RGB flags of an image entry, live beside it
(`<entry>.audit.npz`, published first), so a later run checks duplicates and writes the dataset
card without reading an npz again.

Missing modalities (docs/data.md): a sample whose npz has no key for a modality (a note: no key,
or blank text in the source used) gets a row of zeros in that entry and `present` False; the
row is never read as data (CachedDataset hands the flags out as batch["present"]).

Concurrency: each entry has a filelock.FileLock; a builder takes the locks of all entries it is
missing (in one global order, so no deadlock), re-checks, builds into a temp file in one pass over
the npz files (each opened once) and publishes with os.replace. A process that waited on the lock
finds the entry present and just reads it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from filelock import FileLock

from trainer.data import audit, common
from trainer.data.common import ATTRIBUTE_ORDER, MODALITY_KEYS, DataError, Layout
from trainer.data.transforms import preprocess_oct, preprocess_slo

CACHE_VERSION = 3   # 2: audit side files, RGB fundus -> grey by luma; 3: presence flags


def cache_root(cfg) -> Path:
    root = cfg.cache_dir or os.environ.get("MULTIFAIR_CACHE") or "~/.cache/multifair-tune"
    path = Path(root).expanduser().resolve() / f"v{CACHE_VERSION}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _hash(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _fingerprint(files: list[Path]) -> str:
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return _hash({"files": stats})


def find_csv(layout: Layout, root: str | Path) -> Path:
    base = layout.base_dir(root)
    for folder in (base, base.parent):
        for name in layout.csv_names:
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"{base}: no summary CSV (tried {', '.join(layout.csv_names)}); "
                    f"needed for key 'gpt4_summary'")


def modality_params(cfg, modality: str, tokenizer=None, csv: Path | None = None) -> dict:
    if modality == "slo":
        return {"size": cfg.image_size}
    if modality == "oct":
        return {"size": cfg.image_size, "k": cfg.oct_slices}
    params = {"source": cfg.note_source, "max_length": cfg.note_max_length,
              "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
              "vocab": len(tokenizer)}
    if csv is not None:
        params["csv"] = [str(csv), csv.stat().st_mtime_ns]
    return params


def _entry_paths(cfg, layout, root, split, files, modalities, tokenizer) -> dict[str, Path]:
    common_parts = {"v": CACHE_VERSION, "layout": layout.name, "split": split,
                    "root": str(Path(root).expanduser().resolve()), "fp": _fingerprint(files)}
    directory = cache_root(cfg)
    paths = {"meta": directory / f"meta-{_hash(common_parts)}.npz"}
    csv = find_csv(layout, root) if "note" in modalities and cfg.note_source in (
        "gpt4_summary", SUMMARY_OR_NOTE) else None
    for m in modalities:
        parts = {**common_parts, "modality": m, **modality_params(cfg, m, tokenizer, csv)}
        paths[m] = directory / f"{m}-{_hash(parts)}.npy"
    return paths


def load_split(cfg, layout: Layout, root, split: str, modalities, tokenizer=None):
    """Build what is missing, then return (meta dict, {modality: read-only memmap}, folder)."""
    files = layout.files(root, split)
    paths = _entry_paths(cfg, layout, root, split, files, modalities, tokenizer)
    missing = [n for n, p in paths.items() if not p.exists()]
    if missing:
        with contextlib.ExitStack() as stack:
            for name in sorted(missing, key=lambda n: paths[n].name):
                stack.enter_context(FileLock(str(paths[name]) + ".lock"))
            missing = [n for n in missing if not paths[n].exists()]
            if missing:
                _build(cfg, layout, root, files, {n: paths[n] for n in missing}, tokenizer)
    with np.load(paths["meta"], allow_pickle=False) as z:
        meta = {k: z[k] for k in z.files}
    meta["entry"] = paths["meta"].stem
    for m in modalities:   # side files: presence of every entry; hashes, RGB flags of images
        with np.load(_audit_path(paths[m]), allow_pickle=False) as z:
            meta[f"present:{m}"] = z["present"]
            if m in IMAGE_MODALITIES:
                meta[f"hash:{MODALITY_KEYS[m]}"], meta[f"rgb:{m}"] = z["hashes"], z["rgb"]
    arrays = {m: np.load(paths[m], mmap_mode="r") for m in modalities}
    return meta, arrays, files[0].parent


IMAGE_MODALITIES = ("slo", "oct")
SUMMARY_OR_NOTE = "gpt4_summary_or_note"   # the CSV summary, the npz note where it is blank


def _audit_path(entry: Path) -> Path:
    return entry.with_name(entry.stem + ".audit.npz")


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _build(cfg, layout, root, files, targets: dict[str, Path], tokenizer) -> None:
    n, size = len(files), cfg.image_size
    writers = {}
    if "slo" in targets:
        writers["slo"] = np.lib.format.open_memmap(
            _tmp(targets["slo"]), "w+", np.uint8, (n, size, size))
    if "oct" in targets:
        writers["oct"] = np.lib.format.open_memmap(
            _tmp(targets["oct"]), "w+", np.float16, (n, cfg.oct_slices, size, size))
    note_key = {"note": "note", "note_extra": "note_extra",
                SUMMARY_OR_NOTE: "note"}.get(cfg.note_source)
    read_notes = "note" in targets and note_key is not None
    labels, codes, notes = np.zeros(n, np.int64), np.zeros((n, len(ATTRIBUTE_ORDER)), np.int64), []
    hashes = {m: np.zeros((n, audit.HASH_BYTES), np.uint8) for m in writers}
    present = {m: np.ones(n, bool) for m in targets if m != "meta"}
    rgb, defects = np.zeros(n, bool), []
    parts = [name for name in ("meta", "slo", "oct") if name in targets]
    if writers or read_notes or "meta" in targets:
        for i, path in enumerate(files):
            try:   # a defect is recorded and the next file read: the refusal counts them all
                row = preprocess_file(cfg, layout, path, parts, note_key if read_notes else None)
            except DataError as exc:
                defects.append(str(exc))
                continue
            if "meta" in row:
                labels[i], codes[i] = row["meta"]
            for m in writers:
                hashes[m][i], present[m][i] = row[f"hash:{m}"], row[f"present:{m}"]
                if present[m][i]:   # an absent row stays the new file's zeros (a sparse hole)
                    writers[m][i] = row[m]
            if "slo" in row:
                rgb[i] = row["rgb"]
            if "note" in row:
                notes.append(row["note"])
    if defects:
        _discard(writers, targets)
        raise audit.AuditError(defects)
    for name, w in writers.items():
        w.flush()
        np.savez(_audit_path(targets[name]), hashes=hashes[name], rgb=rgb if name == "slo" else
                 np.zeros(n, bool), present=present[name])
        os.replace(_tmp(targets[name]), targets[name])
    writers.clear()
    if "note" in targets:
        if not read_notes:
            notes = csv_notes(find_csv(layout, root), files)
        elif cfg.note_source == SUMMARY_OR_NOTE:   # the summary where it is not blank
            summaries = csv_notes(find_csv(layout, root), files)
            notes = [s if s.strip() else note for s, note in zip(summaries, notes)]
        present["note"] = np.array([bool(t.strip()) for t in notes], bool)
        np.savez(_audit_path(targets["note"]), present=present["note"])
        np.save(_tmp(targets["note"]), tokenize(notes, tokenizer, cfg.note_max_length,
                                                present["note"]))
        os.replace(_tmp(targets["note"]), targets["note"])
    if "meta" in targets:
        with open(_tmp(targets["meta"]), "wb") as fh:
            np.savez(fh, labels=labels, codes=codes, files=np.array([f.name for f in files]))
        os.replace(_tmp(targets["meta"]), targets["meta"])


def preprocess_file(cfg, layout, path, parts, note_key=None, fileobj=None) -> dict:
    """Open one npz once, audit it (audit.py's per-file checks) and preprocess the `parts` asked
    for ("meta", "slo", "oct"; plus the note under `note_key`): the row of every cache entry.
    The one per-file step of both the local builder and the cluster preparation job
    (search/dataprep.py, which passes the downloaded bytes as `fileobj` and the object's URI as
    `path`). Returns {"meta": (label, codes), "slo": uint8 (S, S), "hash:slo", "rgb", "oct":
    float16 (K, S, S), "hash:oct", "note", "present:<modality>"} for what was asked; a defect
    raises DataError naming the file and key. A modality whose key is absent (a note: or blank)
    is not a defect: its row is zeros (a note ""), its hash all zeros, `present:<m>` False."""
    row = {}
    with common.open_npz(path, fileobj) as z:
        if "meta" in parts:
            label = audit.check_label(common.read_key(z, path, common.LABEL_KEY), path)
            codes = [common.attribute_code(z, path, layout, a) for a in ATTRIBUTE_ORDER]
            audit.check_codes(codes, path, layout)
            row["meta"] = (label, codes)
        for m in IMAGE_MODALITIES:
            if m in parts:
                row.update(_image_row(cfg, z, path, m))
        if note_key is not None:
            row["note"] = note_text(z, path, note_key)
            row["present:note"] = bool(row["note"].strip())
    return row


def absent_row(cfg, modality: str) -> np.ndarray:
    """The zeros stored for a sample without `modality` (never read as data)."""
    size = cfg.image_size
    if modality == "slo":
        return np.zeros((size, size), np.uint8)
    return np.zeros((cfg.oct_slices, size, size), np.float16)


def _image_row(cfg, z, path, m: str) -> dict:
    key = MODALITY_KEYS[m]
    if key not in z.files:    # the sample has no such image (docs/data.md, missing modalities)
        row = {m: absent_row(cfg, m), f"hash:{m}": audit.NO_IMAGE.copy(), f"present:{m}": False}
        return {**row, "rgb": False} if m == "slo" else row
    image = common.read_key(z, path, key)
    row = {f"present:{m}": True}
    if m == "slo":
        row["rgb"] = audit.check_slo(image, path, key)
        row["slo"] = preprocess_slo(image, cfg.image_size)
    else:
        audit.check_oct(image, path, key)
        row["oct"] = preprocess_oct(image, cfg.oct_slices, cfg.image_size)
    row[f"hash:{m}"] = audit.content_hash(image)
    return row


def note_text(z, path, key: str) -> str:
    """The note under `key` of an open npz; "" (missing) when the key is absent or empty."""
    if key not in z.files:
        return ""
    flat = np.asarray(common.read_key(z, path, key)).reshape(-1)
    return str(flat[0]) if flat.size else ""


def _discard(writers: dict, targets: dict) -> None:
    for name in list(writers):
        del writers[name]          # closes the memmap before its file goes
        _tmp(targets[name]).unlink(missing_ok=True)


def tokenize(notes: list[str], tokenizer, max_length: int, present=None) -> np.ndarray:
    """Notes -> int32 (N, 2, L): input_ids and attention_mask; rows not `present` (default:
    blank notes) are zeros, as every absent row of the cache."""
    enc = tokenizer(notes, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="np")
    out = np.stack([enc["input_ids"], enc["attention_mask"]], axis=1).astype(np.int32)
    if present is None:
        present = np.array([bool(t.strip()) for t in notes], bool)
    out[~np.asarray(present, bool)] = 0
    return out


def csv_notes(csv: Path, files: list[Path], column: str = "gpt4_summary") -> list[str]:
    """The CSV's `column` for each npz, matched by file name (columns read by name)."""
    import pandas as pd

    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{csv}: cannot read CSV (key: {column}): {type(exc).__name__}") from None
    for needed in ("filename", column):
        if needed not in table.columns:
            raise DataError(f"{csv}: required column {needed!r} is missing")
    stems = table["filename"].map(lambda s: Path(s.strip()).name.removesuffix(".npz"))
    by_name = dict(zip(stems, table[column]))
    out = []
    for f in files:
        if f.stem not in by_name:
            raise DataError(f"{csv}: no row for {f.name} (key: filename, needed for {column!r})")
        out.append(by_name[f.stem])
    return out
