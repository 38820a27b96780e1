"""Prepared data as shards: the format written once by the cluster's preparation job
(search/dataprep.py) and read here, memory-mapped, from a local folder.

A prepared folder holds `manifest.json` and .npy files named in it:
- per shard (SHARD_SAMPLES consecutive files of one split, in the local cache's file order):
  `shards/<split>-<k>.<modality>.npy`, the same preprocessed rows as the local cache's entries
  (cache.preprocess_file makes both);
- per split: `<split>.labels.npy` (int64), `<split>.codes.npy` (int64, columns ATTRIBUTE_ORDER),
  `<split>.files.npy` (npz names, for error messages only), `<split>.hash-<modality>.npy` (the
  audit's content hashes), `<split>.rgb.npy` (RGB fundus flags) and `<split>.present-<modality>.npy`
  (bool, N bytes: which samples have the modality; absent rows of a shard are zeros). A folder
  without the presence files (made before them) reads an image as absent where its hash is the
  audit's NO_IMAGE (all zeros), and every note as present.
The manifest lists every file with its sha256, shape and dtype, the preprocessing parameters,
the label and group counts per split and the dataset card. Its own sha256 names it: a node's
local copy lives in a folder of that name, so changed data or parameters never reuse a copy.

Nothing here reads raw files or object storage: search/ downloads, trainer/ only maps.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from trainer.data.cache import CACHE_VERSION
from trainer.data.common import ATTRIBUTE_ORDER
from trainer.data.common import MODALITY_KEYS, SPLITS, DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_SAMPLES = 32     # ~32 MB of paper-size OCT rows per shard file: 313 tasks for 10,000 samples
IMAGE_MODALITIES = ("slo", "oct")   # hashed by the audit; notes are not (short notes repeat)
NOTE_KEYS = ("note", "note_extra")   # note sources inside the npz (not the CSV's summaries)
META_PARTS = ("labels", "codes", "files", "rgb")   # + hash-<m> per image, present-<m> per modality


class SourceFolder(str):
    """The raw split folder a shard came from (a local path or an s3:// URI), joined with a file
    name for messages the way a Path is (`folder / name`), without collapsing `s3://`."""

    def __truediv__(self, name) -> str:
        return f"{self.rstrip('/')}/{name}"


def params(cfg, layout_name: str, shard_samples: int = SHARD_SAMPLES) -> dict:
    """The preprocessing parameters a prepared folder is made for (part of its key)."""
    modalities = list(cfg.resolved_modalities())
    if "note" in modalities and cfg.note_source not in NOTE_KEYS:
        raise DataError(f"note_source {cfg.note_source}: cluster preparation reads notes from the "
                        f"npz ({'/'.join(NOTE_KEYS)}) only (key: note_source); the CSV's summaries "
                        f"need the local cache (--data-root on a local folder)")
    return {**_fixed(cfg, layout_name, modalities), "modalities": modalities,
            "shard_samples": int(shard_samples)}


def _fixed(cfg, layout_name: str, modalities) -> dict:
    fixed = {"format": FORMAT_VERSION, "cache_version": CACHE_VERSION, "layout": layout_name,
             "image_size": cfg.image_size, "oct_slices": cfg.oct_slices,
             "attribute_order": list(ATTRIBUTE_ORDER)}
    if "note" in modalities:   # tokenised notes: the source key, the length, the tokenizer
        fixed.update(note_source=cfg.note_source, note_max_length=cfg.note_max_length,
                     note_encoder=cfg.note_encoder)
        from trainer.data.tokenizer import note_tokenizer

        name = getattr(note_tokenizer(cfg), "name_or_path", "")
        if name != cfg.note_encoder:   # the vision-language modes: CLIP's tokens, not BERT's
            fixed["note_tokenizer"] = name
    return fixed


def shard_name(split: str, index: int, part: str) -> str:
    return f"shards/{split}-{index:05d}.{part}.npy"


def split_name(split: str, part: str) -> str:
    return f"{split}.{part}.npy"


def npy_bytes(array: np.ndarray) -> bytes:
    """The exact bytes of np.save(array): deterministic, so a shard's sha256 is its content's."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def describe(name: str, data: bytes, array: np.ndarray) -> dict:
    """The manifest entry of one file."""
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "shape": list(array.shape), "dtype": array.dtype.str}


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def manifest_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def files_of(manifest: dict, images: bool = True) -> list[dict]:
    """Every file entry of a manifest (the per-split meta files; plus image shards if `images`)."""
    out = []
    for split in manifest["splits"].values():
        out += list(split["meta"].values())
        if images:
            out += [entry for shard in split["shards"] for entry in shard["parts"].values()]
    return out


class ShardedArray:
    """One split's rows of one modality over its memory-mapped shard files, read-only; indexed
    like the local cache's memmap (an int or an int array of rows). Shards open on first use, so
    a folder with only the meta files (the driver) can still be summarised. Pickles as paths."""

    def __init__(self, files: list[str], rows: list[int], row_shape, dtype):
        self.files, self.rows = [str(f) for f in files], [int(r) for r in rows]
        self.shape = (sum(self.rows), *row_shape)
        self.dtype = np.dtype(dtype)
        self._starts = np.cumsum([0, *self.rows])
        self._maps = None

    def __reduce__(self):
        return ShardedArray, (self.files, self.rows, self.shape[1:], self.dtype.str)

    def __len__(self) -> int:
        return self.shape[0]

    def _parts(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(f, mmap_mode="r") for f in self.files]
        return self._maps

    def __getitem__(self, rows):
        parts, rows = self._parts(), np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        if rows.ndim == 0:
            return parts[int(shard)][int(rows - self._starts[shard])]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for k in np.unique(shard):
            picked = shard == k
            out[picked] = parts[k][rows[picked] - self._starts[k]]
        return out

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self._parts()) if self.files else np.empty(self.shape, self.dtype)
        return whole if dtype is None else whole.astype(dtype)


def read_manifest(folder: Path) -> tuple[dict, str]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder}: no {MANIFEST} (key: prepared); pull the prepared data first")
    data = path.read_bytes()
    return json.loads(data), manifest_hash(data)


def check_params(manifest: dict, cfg, layout_name: str, where) -> None:
    """Refuse a prepared folder made for other parameters, naming the key at fault."""
    made = manifest["params"]
    for key, value in _fixed(cfg, layout_name, cfg.resolved_modalities()).items():
        if made.get(key) != value:
            raise DataError(f"{where}/{MANIFEST}: prepared with {key}={made.get(key)!r}, this run "
                            f"needs {value!r} (key: {key}); prepare the data again")
    missing = [m for m in cfg.resolved_modalities() if m not in made["modalities"]]
    if missing:
        raise DataError(f"{where}/{MANIFEST}: prepared without modality {','.join(missing)} (key: "
                        f"modalities; prepared: {','.join(made['modalities'])})")


def small_parts(rows: list[dict], names: list[str], modalities) -> dict[str, np.ndarray]:
    """The per-split meta arrays of a shard from its cache.preprocess_file rows (in order):
    labels, codes, files, rgb, hash-<image modality>, present-<modality>."""
    out = {"labels": np.array([r["meta"][0] for r in rows], np.int64),
           "codes": np.array([r["meta"][1] for r in rows], np.int64).reshape(len(rows), -1),
           "files": np.array(names), "rgb": np.array([r.get("rgb", False) for r in rows], bool)}
    out.update({f"hash-{m}": np.stack([r[f"hash:{m}"] for r in rows])
                for m in modalities if m in IMAGE_MODALITIES})
    out.update({f"present-{m}": np.array([r.get(f"present:{m}", True) for r in rows], bool)
                for m in modalities})
    return out


def _presence(folder: Path, entry: dict, meta: dict, m: str) -> np.ndarray:
    if f"present-{m}" in entry["meta"]:
        return np.load(folder / entry["meta"][f"present-{m}"]["file"])
    if m in IMAGE_MODALITIES:   # made before presence files: absent images hash to NO_IMAGE
        return meta[f"hash:{MODALITY_KEYS[m]}"].any(axis=1)
    return np.ones(len(meta["labels"]), bool)


def load(folder, cfg, layout_name: str) -> dict:
    """{split: (meta, {modality: ShardedArray}, source folder)} from a local prepared folder,
    shaped as cache.load_split returns it, so the dataset classes and the audit's duplicate check
    and card read either."""
    folder = Path(folder)
    manifest, digest = read_manifest(folder)
    check_params(manifest, cfg, layout_name, folder)
    loaded = {}
    for split in SPLITS:
        entry = manifest["splits"][split]
        meta = {part: np.load(folder / entry["meta"][part]["file"], allow_pickle=False)
                for part in ("labels", "codes", "files")}
        meta = {"labels": meta["labels"], "codes": meta["codes"], "files": meta["files"],
                "entry": f"prepared-{digest}-{split}"}
        arrays = {}
        for m in cfg.resolved_modalities():
            if m in IMAGE_MODALITIES:
                meta[f"hash:{MODALITY_KEYS[m]}"] = np.load(
                    folder / entry["meta"][f"hash-{m}"]["file"])
            if m == "slo":
                meta["rgb:slo"] = np.load(folder / entry["meta"]["rgb"]["file"])
            meta[f"present:{m}"] = _presence(folder, entry, meta, m)
            parts = [shard["parts"][m] for shard in entry["shards"]]
            arrays[m] = ShardedArray([folder / p["file"] for p in parts],
                                     [p["shape"][0] for p in parts], parts[0]["shape"][1:],
                                     parts[0]["dtype"])
        loaded[split] = (meta, arrays, SourceFolder(entry["source"]))
    return loaded
