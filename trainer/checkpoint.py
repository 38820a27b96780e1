"""Checkpoint folders: what a trainer writes, how complete folders are recognised, how the kept
best model is read back.

A folder holds
  best_model.safetensors  the validation-best epoch's model weights only (no optimiser), cast to
                          cfg.best_model_dtype (bfloat16 by default: 2 bytes a parameter; the
                          paper preset's 181 M parameters are ~0.34 GiB instead of ~0.68 GiB);
  state.pt                only in a resume checkpoint: the exact training state (fp32 weights,
                          both AdamW optimisers' moments, the method's state, RNG, history;
                          ~2 GiB at the paper preset);
  checkpoint.json         the manifest, written last: epoch, best epoch and score, dtype, whether
                          it can be resumed, the config, the per-epoch history (aggregate metrics)
                          and the size of every file above. A folder is complete when its manifest
                          exists and every file it lists has the listed size (an upload cut off
                          midway is not).
Reading the best model upcasts it to float32: a model deployed from a checkpoint, its test
figures and the model logged to MLflow all come from the same rounded weights.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.jsonout import dumps

STATE_FILE, BEST_FILE, MANIFEST = "state.pt", "best_model.safetensors", "checkpoint.json"
FORMAT = 1
BEST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class NotResumable(FileNotFoundError):
    """The folder holds no exact-resume state (a best-model-only checkpoint, or none at all)."""


def best_tensors(weights: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The weights as stored: floating tensors cast to `dtype`, each its own contiguous memory
    (safetensors refuses tensors that share storage, e.g. tied embeddings)."""
    target = BEST_DTYPES[dtype]
    out = {}
    for name, tensor in weights.items():
        t = tensor.detach().cpu()
        t = t.to(target) if t.is_floating_point() else t
        out[name] = t.contiguous().clone() if t.data_ptr() == tensor.data_ptr() else t.contiguous()
    return out


def as_kept(weights: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """The weights as a kept best model holds them (rounded to `dtype`, back in their own
    dtype): what fit() scores on the test split, so that its figures are the saved model's and
    a resumed fit's equal an uninterrupted one's."""
    target = BEST_DTYPES[dtype]
    return {k: (v.to(target).to(v.dtype) if v.is_floating_point() else v) for k, v in weights.items()}


@dataclass
class Snapshot:
    """What a checkpoint folder holds, frozen at one epoch: write_snapshot() turns it into files.
    Taken on the training thread (snapshot()), it can be written on another while training goes
    on (the search writes and reports it in the background: search/trainable.py)."""
    config: dict
    dtype: str
    epoch: int
    best: dict
    history: list
    best_weights: dict[str, torch.Tensor] | None   # never modified in place (fit replaces it)
    state: dict | None                             # Trainer.state_dict(), or None: best only


def _copied(obj):
    """obj with every tensor copied to its own CPU memory (from a GPU: one device-to-host copy),
    so later optimiser steps cannot change it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _copied(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copied(v) for v in obj)
    return copy.deepcopy(obj)


def snapshot(trainer, resume: bool = True, copy_tensors: bool = True) -> Snapshot:
    """The trainer's checkpoint as of now. With copy_tensors (the default) the weights and the
    optimisers' moments are copied (at the paper preset ~2 GiB, a memory copy: what the training
    thread pays for a checkpoint written in the background); the kept best weights are shared,
    since fit() replaces them rather than changing them."""
    state = trainer.state_dict() if resume else None
    if state is not None and copy_tensors:
        state = _copied(state)
    return Snapshot(config=trainer.cfg.to_dict(), dtype=trainer.cfg.best_model_dtype,
                    epoch=trainer.epoch, best=copy.deepcopy(trainer.best),
                    history=copy.deepcopy(trainer.history), best_weights=trainer.best_weights,
                    state=state)


def write_snapshot(snap: Snapshot, directory: str | Path) -> Path:
    """Write a Snapshot into `directory` (see the module docstring); the manifest goes last."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stale in (BEST_FILE, STATE_FILE, MANIFEST):   # a reused folder: nothing of an older one
        (directory / stale).unlink(missing_ok=True)
    if snap.best_weights is not None:
        save_file(best_tensors(snap.best_weights, snap.dtype), str(directory / BEST_FILE))
        written.append(BEST_FILE)
    if snap.state is not None:
        torch.save(snap.state, directory / STATE_FILE)
        written.append(STATE_FILE)
    best = snap.best or {}
    manifest = {"format": FORMAT, "epoch": snap.epoch, "best_epoch": best.get("epoch"),
                "best_score": best.get("score"), "best_dtype": snap.dtype,
                "best_threshold_val": (best.get("val") or {}).get("threshold_val"),
                "resume": snap.state is not None, "config": snap.config, "history": snap.history,
                "files": {name: (directory / name).stat().st_size for name in written}}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(dumps(manifest))
    os.replace(tmp, directory / MANIFEST)
    return directory


def write_checkpoint(trainer, directory: str | Path, resume: bool = True) -> Path:
    """Write `trainer`'s checkpoint into `directory` now, on this thread (see the module
    docstring)."""
    return write_snapshot(snapshot(trainer, resume, copy_tensors=False), directory)


def read_manifest(directory: str | Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def complete(manifest: dict | None, sizes: dict[str, int]) -> bool:
    """Whether a folder whose files have `sizes` ({name: bytes}, e.g. from an S3 listing) holds
    everything its manifest lists."""
    if not manifest or not isinstance(manifest.get("files"), dict):
        return False
    return all(sizes.get(name) == size for name, size in manifest["files"].items())


def folder_complete(directory: str | Path) -> bool:
    directory = Path(directory)
    if not directory.is_dir():
        return False
    sizes = {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()}
    return complete(read_manifest(directory), sizes)


def resumable(manifest: dict | None) -> bool:
    return bool(manifest and manifest.get("resume") and STATE_FILE in manifest.get("files", {}))


def load_state(directory: str | Path, device) -> dict:
    """The exact-resume state of a checkpoint folder; NotResumable names the folder otherwise."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        what = "the best model only" if (Path(directory) / BEST_FILE).is_file() else "no checkpoint"
        raise NotResumable(f"resume: {directory} holds {what} (no {STATE_FILE}): it cannot be "
                           f"resumed; resume from a checkpoint written with resume state")
    return torch.load(path, map_location=device, weights_only=False)


def load_best(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """The kept best model's weights, upcast to float32; None when the folder has none."""
    from safetensors.torch import load_file

    path = Path(directory) / BEST_FILE
    if not path.is_file():
        return None
    return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}


def checkpoint_weights(directory: str | Path, best: bool = True) -> dict:
    """{"config", "epoch", "model"} of a checkpoint folder: the validation-best weights when kept
    (and `best`), else the state's current weights."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = load_best(directory) if best else None
    if weights is not None:
        if manifest is None:
            raise FileNotFoundError(f"{directory}: {BEST_FILE} without its {MANIFEST}")
        return {"config": manifest["config"], "epoch": manifest["best_epoch"], "model": weights,
                "threshold_val": manifest.get("best_threshold_val")}
    state = load_state(directory, "cpu")
    return {"config": state["config"], "epoch": state["epoch"], "model": state["model"],
            "best": state.get("best")}
