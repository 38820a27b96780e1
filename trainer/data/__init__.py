"""Data layer: the released FairVision / FairVLMed layouts, a preprocessed cache, torch Datasets.

    datasets = build_datasets(cfg)            # {"train", "val", "test"} -> CachedDataset
    batch = datasets["train"].get_batch(idx)  # stacked tensors, no DataLoader needed
    summary = prepare(cfg)                    # builds the cache; counts per split and group
    datasets = build_datasets(cfg, prepared=folder)   # a local folder of prepared shards instead
    report = audit_dataset(cfg)               # the card and warnings, for `python -m trainer audit`

A prepared folder (shards.py: written once by the cluster's preparation job, search/dataprep.py,
and pulled to the node) replaces the raw files and the cache: same checks, same dataset classes.

Samples whose code for cfg.attribute is -1 (unknown) are dropped, for that attribute only. Every
path here audits the data first (audit.py): a defect refuses the dataset before any training.

Missing modalities (docs/data.md): a sample may lack a modality (no npz key; a note: no key or
blank text). Its cached row is zeros and every item and batch carries
`batch["present"] = {modality: bool tensor}` for every modality held (all True when none is
missing), so the model encodes present rows only. A split where a modality is absent in every
sample is refused (DataError naming split and modality); samples with none of the chosen
modalities are dropped with a warning counting them.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.config import ATTRIBUTES, canonical_attribute
from trainer.data import audit, fairvision, fairvlmed, shards
from trainer.data.tokenizer import note_tokenizer
from trainer.data.cache import _hash, cache_root, load_split
from trainer.data.common import ATTRIBUTE_ORDER, MODALITY_KEYS, SPLITS, DataError, check_codes

LAYOUTS = {"fairvision": fairvision.LAYOUT, "fairvlmed": fairvlmed.LAYOUT}
__all__ = ["DataError", "CachedDataset", "build_datasets", "prepare", "audit_dataset", "LAYOUTS",
           "presence"]


class CachedDataset(Dataset):
    """Rows of the cache for one split and attribute. Items follow docs/architecture.md."""

    def __init__(self, arrays: dict, labels: np.ndarray, groups: np.ndarray, rows: np.ndarray,
                 group_names: dict[int, str], present: dict | None = None):
        self.arrays, self.rows, self.group_names = arrays, rows, group_names
        self.labels = labels[rows].astype(np.float32)     # per-item label, in item order
        self.groups = groups[rows].astype(np.int64)       # per-item group code, in item order
        present = present or {}   # per-item presence of each modality (N bytes each), item order
        self.present = {m: np.asarray(present[m], bool)[rows] if m in present
                        else np.ones(len(rows), bool) for m in arrays}

    def __getstate__(self):  # DataLoader workers: pass memmap paths, not array copies
        state = dict(self.__dict__)    # (a ShardedArray pickles as its shard paths itself)
        state["arrays"] = {m: a.filename if isinstance(a, np.memmap) else a
                           for m, a in self.arrays.items()}
        return state

    def __setstate__(self, state):
        state["arrays"] = {m: f if isinstance(f, shards.ShardedArray) else np.load(f, mmap_mode="r")
                           for m, f in state["arrays"].items()}
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.rows)

    def _take(self, rows) -> dict:
        out = {}
        for name, arr in self.arrays.items():
            block = torch.from_numpy(np.array(arr[rows]))
            if name == "note":
                block = block.long()
                out[name] = {"input_ids": block[..., 0, :], "attention_mask": block[..., 1, :]}
            else:
                out[name] = block
        return out

    def __getitem__(self, i: int) -> dict:
        item = self._take(int(self.rows[i]))
        item["label"] = torch.tensor(self.labels[i])
        item["group"] = torch.tensor(self.groups[i])
        item["present"] = {m: torch.tensor(bool(p[i])) for m, p in self.present.items()}
        item["index"] = torch.tensor(i)     # the item's position (per-sample state: DBPM)
        return item

    def get_batch(self, indices) -> dict:
        """A whole batch by item indices: the same keys as items, stacked along a first axis."""
        idx = np.ascontiguousarray(indices, dtype=np.int64)   # torch takes no negative strides
        batch = self._take(self.rows[idx])
        batch["label"] = torch.from_numpy(self.labels[idx])
        batch["group"] = torch.from_numpy(self.groups[idx])
        batch["present"] = {m: torch.from_numpy(p[idx]) for m, p in self.present.items()}
        batch["index"] = torch.from_numpy(idx)
        return batch


def presence(meta: dict, modalities) -> dict[str, np.ndarray]:
    """{modality: bool (N,)} of a split's meta (all True where its producer recorded none)."""
    n = len(meta["labels"])
    return {m: np.asarray(meta.get(f"present:{m}", np.ones(n, bool)), bool) for m in modalities}


def _with_modalities(cfg, split, meta, folder, keep: np.ndarray) -> np.ndarray:
    """`keep` less the samples with none of the chosen modalities (counted in a warning); a
    modality absent from every kept sample refuses the split."""
    mods = cfg.resolved_modalities()
    present = presence(meta, mods)
    anything = np.logical_or.reduce([present[m] for m in mods])
    dropped = int((keep & ~anything).sum())
    if dropped:
        warnings.warn(f"{folder}: split {split!r}: {dropped} sample(s) have none of the "
                      f"modalities {','.join(mods)}: dropped", stacklevel=5)
    keep = keep & anything
    for m in mods:
        if keep.any() and not (present[m] & keep).any():
            raise DataError(f"{folder}: split {split!r} has no sample with modality {m!r} (key "
                            f"{MODALITY_KEYS[m]!r} absent in every file); choose --modalities "
                            f"without it")
    return keep


def _select(cfg, layout, split, meta, folder):
    """Rows kept for cfg.attribute (and having a chosen modality), their group codes, and the
    per-group counts."""
    attribute = canonical_attribute(cfg.attribute)
    codes = meta["codes"][:, ATTRIBUTE_ORDER.index(attribute)]
    check_codes(codes, meta["files"], folder, layout, attribute)
    rows = np.flatnonzero(_with_modalities(cfg, split, meta, folder, codes != -1))
    counts = {name: int((codes[rows] == c).sum()) for c, name in ATTRIBUTES[attribute].items()}
    keys = "/".join(layout.attribute_keys[attribute])
    empty = [name for name, k in counts.items() if k == 0]
    if empty:
        warnings.warn(f"{folder}: split {split!r} has no samples for {attribute} group(s) "
                      f"{empty} (key {keys!r})", stacklevel=4)
    if sum(k > 0 for k in counts.values()) < 2:
        raise DataError(f"{folder}: split {split!r} has fewer than 2 groups for {attribute} "
                        f"(key {keys!r}); counts {counts}")
    positives, n = int(meta["labels"][rows].sum()), len(rows)
    if positives in (0, n):
        raise DataError(f"{folder}: split {split!r} has only label {int(positives > 0)} (key "
                        f"'glaucoma', {n} samples with a known {attribute}); AUC needs both classes")
    return rows, codes, counts, empty


def _load_all(cfg, tokenizer, prepared=None, splits=SPLITS):
    """Every split's cache built (each file audited in that pass), or a prepared folder's shards
    (audited when they were made), duplicates checked, the card saved beside the cache.
    `splits`: the cache's splits to read (another site's test split alone: trainer/loop.py).
    Returns ({split: (meta, arrays, folder)}, card, card path, notes)."""
    layout = LAYOUTS[cfg.dataset]
    mods = cfg.resolved_modalities()
    if prepared is not None:
        loaded = shards.load(prepared, cfg, layout.name)
    else:
        loaded = _load_cache(cfg, layout, mods, note_tokenizer(cfg, tokenizer), splits)
    metas = {split: meta for split, (meta, _a, _f) in loaded.items()}
    found = audit.duplicates({
        split: ([folder / str(name) for name in meta["files"]],
                {k[len("hash:"):]: v for k, v in meta.items() if k.startswith("hash:")})
        for split, (meta, _a, folder) in loaded.items()})
    notes = audit.check_duplicates(found, cfg.allow_duplicates)
    rgb = sum(int(m["rgb:slo"].sum()) for m in metas.values() if "rgb:slo" in m)
    if rgb:
        notes.append(f"{rgb} SLO fundus image(s) are RGB (H, W, 3): converted to grey with "
                     f"ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B (docs/data.md)")
    card = audit.dataset_card(layout.name, metas, rgb, len(found))
    key = _hash({"entries": [m["entry"] for m in metas.values()], "modalities": list(mods)})
    return loaded, card, audit.save_card(card, cache_root(cfg), key), notes


def _load_cache(cfg, layout, mods, tokenizer, splits=SPLITS) -> dict:
    if not cfg.data_root:
        raise DataError("no data root given (key: data_root)")
    loaded, defects = {}, []
    for split in splits:
        try:
            loaded[split] = load_split(cfg, layout, cfg.data_root, split, mods, tokenizer)
        except audit.AuditError as exc:      # go on: the refusal counts every split's defects
            defects += exc.defects
    if defects:
        raise audit.AuditError(defects)
    return loaded


def _load(cfg, tokenizer, prepared=None, splits=SPLITS):
    loaded, card, path, notes = _load_all(cfg, tokenizer, prepared, splits)
    attribute = canonical_attribute(cfg.attribute)
    for line in notes + audit.thin_groups(card, attribute):
        warnings.warn(line, stacklevel=4)
    for split, (meta, arrays, folder) in loaded.items():
        meta["card_path"] = str(path)
        yield split, meta, arrays, folder, _select(cfg, LAYOUTS[cfg.dataset], split, meta, folder)


def build_datasets(cfg, tokenizer=None, prepared=None, splits=SPLITS) -> dict[str, CachedDataset]:
    """{"train", "val", "test"} datasets over the cache (built first if needed), or over the
    shards of a local `prepared` folder (shards.py; cfg.data_root is then not read). `splits`
    (the cache only): read and audit only those, e.g. ("test",) for another site's data, which
    may hold nothing else."""
    names = ATTRIBUTES[canonical_attribute(cfg.attribute)]
    out = {}
    for split, meta, arrays, _folder, (rows, codes, _c, _e) in _load(cfg, tokenizer, prepared,
                                                                        splits):
        out[split] = CachedDataset(arrays, meta["labels"], codes, rows, names,
                                   presence(meta, arrays))
        out[split].files = meta["files"][rows]   # npz names in item order (local reports only)
    return out


def audit_dataset(cfg, tokenizer=None, attribute: str | None = None) -> dict:
    """Audit (and cache) the dataset: {"card", "card_path", "warnings"}; raises AuditError or
    DataError on a defect. Warnings cover `attribute`, or every attribute when None."""
    loaded, card, path, notes = _load_all(cfg, tokenizer)
    attributes = [canonical_attribute(attribute)] if attribute else list(ATTRIBUTES)
    notes += [line for a in attributes for line in audit.thin_groups(card, a)]
    for split, (meta, _arrays, folder) in loaded.items():
        if attribute:
            _select(cfg.replace(attribute=attribute), LAYOUTS[cfg.dataset], split, meta, folder)
        else:
            _with_modalities(cfg, split, meta, folder, np.ones(len(meta["labels"]), bool))
    return {"card": card, "card_path": str(path), "warnings": notes}


def prepare(cfg, tokenizer=None, prepared=None) -> dict:
    """Build the cache for all splits (idempotent, process-safe), or check a `prepared` folder
    (its meta files suffice: the image shards are not opened); aggregate counts only."""
    summary = {"dataset": cfg.dataset, "attribute": canonical_attribute(cfg.attribute),
               "modalities": list(cfg.resolved_modalities()), "splits": {}}
    for split, meta, _arrays, _folder, (rows, _codes, counts, empty) in _load(cfg, tokenizer,
                                                                              prepared):
        summary["card_path"] = meta["card_path"]
        attribute = ATTRIBUTE_ORDER.index(summary["attribute"])
        unknown = int((meta["codes"][:, attribute] == -1).sum())
        summary["splits"][split] = {
            "n": int(len(rows)), "dropped_unknown": unknown,
            "dropped_no_modality": int(len(meta["labels"]) - len(rows) - unknown),
            "missing": {m: int((~p[rows]).sum()) for m, p in presence(
                meta, summary["modalities"]).items()},
            "positives": int(meta["labels"][rows].sum()), "groups": counts, "empty_groups": empty}
    return summary
