"""The MLflow model of a trial: its kept best model file, as stored, inside the pyfunc model.

A logged model (search/decide/pyfunc.py: an MLflow pyfunc model, what `mlflow models serve` and
mlflow.pyfunc.load_model run) holds in artifacts/checkpoint/
  best_model.safetensors  the checkpoint's validation-best weights, byte for byte (bfloat16 by
                          default: 0.34 GiB at the paper preset, half the float32 pickle that
                          mlflow.pytorch.log_model wrote before);
  checkpoint.json         a best-model-only manifest (trainer/checkpoint.py: config, best epoch,
                          dtype, validation threshold, the file's size; no resume state).
So that folder is itself a complete best-model checkpoint folder: `load_model` downloads it and
builds the network with the trainer's own loader (weights upcast to float32). Nothing is pickled.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def model_files(checkpoint_dir: str | Path, out: str | Path) -> Path:
    """Write a checkpoint's best model and its best-model-only manifest into `out`."""
    from trainer.checkpoint import BEST_FILE, FORMAT, MANIFEST, best_tensors, checkpoint_weights, \
        read_manifest
    from trainer.jsonout import dumps

    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(checkpoint_dir) or {}
    if (checkpoint_dir / BEST_FILE).is_file():
        shutil.copyfile(checkpoint_dir / BEST_FILE, out / BEST_FILE)
        dtype = manifest.get("best_dtype", "bfloat16")
        weights = {"config": manifest["config"], "epoch": manifest.get("best_epoch"),
                   "threshold_val": manifest.get("best_threshold_val")}
    else:   # an older checkpoint with resume state only: its weights, stored as a best model
        from safetensors.torch import save_file

        weights, dtype = checkpoint_weights(checkpoint_dir, best=False), "bfloat16"
        save_file(best_tensors(weights["model"], dtype), str(out / BEST_FILE))
    kept = {"format": FORMAT, "epoch": weights["epoch"], "best_epoch": weights["epoch"],
            "best_dtype": dtype, "best_threshold_val": weights.get("threshold_val"), "resume": False,
            "config": weights["config"], "history": [],
            "files": {BEST_FILE: (out / BEST_FILE).stat().st_size}}
    (out / MANIFEST).write_text(dumps(kept))
    return out


def log_model(tracking_uri: str, run_id: str, checkpoint_dir: str | Path, signature=None,
              metadata=None) -> str:
    """Log a checkpoint's best model to `run_id` as the pyfunc model (search/decide/pyfunc.py);
    returns its URI (models:/<model id>), which mlflow.register_model accepts."""
    from search.decide.pyfunc import log_model as log_pyfunc

    with tempfile.TemporaryDirectory(prefix="multifair-files-") as tmp:
        files = model_files(checkpoint_dir, Path(tmp) / "checkpoint")
        return log_pyfunc(tracking_uri, run_id, files, signature, metadata)


def load_model(model_uri: str):
    """The network of a logged or registered model (runs:/..., models:/NAME@alias, models:/m-...),
    on the CPU, in eval mode, weights upcast to float32 (trainer.loop.load_model)."""
    import mlflow

    from trainer.loop import load_model as load_checkpoint

    with tempfile.TemporaryDirectory(prefix="multifair-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        pyfunc = local / "artifacts" / "checkpoint"   # the pyfunc model's copy of the files
        return load_checkpoint(pyfunc if pyfunc.is_dir() else local)


def log_run_model(tracker, run_id: str, checkpoint_dir, signature=None, metadata=None) -> str:
    """Log a trial's kept best model as its run's MLflow model (log_model) and tag the run
    `model_logged`; returns the model URI."""
    uri = log_model(tracker.tracking_uri, run_id, checkpoint_dir, signature=signature, metadata=metadata)
    tracker.client.set_tag(run_id, "model_logged", "true")
    return uri
