"""The MLflow model of a trial: its kept best model file, as stored, plus what builds the network.

A logged model folder (an MLflow model, flavor `multifair`) holds
  best_model.safetensors  the checkpoint's validation-best weights, byte for byte (bfloat16 by
                          default: 0.34 GiB at the paper preset, half the float32 pickle that
                          mlflow.pytorch.log_model wrote before);
  checkpoint.json         a best-model-only manifest (trainer/checkpoint.py: config, best epoch,
                          dtype, validation threshold, the file's size; no resume state);
  MLmodel                 signature and metadata (the trainer config), the flavor's file names.
So the folder is itself a complete best-model checkpoint folder: `load_model` downloads it and
builds the network with the trainer's own loader (weights upcast to float32). Nothing is
pickled: loading needs the installed project, not the code that logged it.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

FLAVOR = "multifair"
LOADER = "search.decide.mlmodel.load_model"


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


def save_model(path, mlflow_model, checkpoint_dir, signature=None, **_):
    """The flavor's save_model (mlflow.models.Model.log calls it with a local `path`)."""
    import torch

    from trainer.checkpoint import BEST_FILE, MANIFEST

    path = Path(path)
    model_files(checkpoint_dir, path)
    mlflow_model.signature = signature
    mlflow_model.add_flavor(FLAVOR, weights=BEST_FILE, manifest=MANIFEST, format="safetensors",
                            loader=LOADER, torch_version=torch.__version__.split("+")[0])
    mlflow_model.save(str(path / "MLmodel"))
    (path / "requirements.txt").write_text(f"torch=={torch.__version__.split('+')[0]}\n"
                                           "safetensors\nmultifair-tune\n")


def log_model(tracking_uri: str, run_id: str, checkpoint_dir: str | Path, signature=None,
              metadata=None) -> str:
    """Log a checkpoint's best model to `run_id` as an MLflow model; returns its URI
    (models:/<model id>), which mlflow.register_model accepts."""
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):   # the model belongs to the run's experiment
        info = Model.log(artifact_path=None, name="model", flavor=sys.modules[__name__],
                         run_id=run_id, metadata=metadata, checkpoint_dir=str(checkpoint_dir),
                         signature=signature)
    return info.model_uri


def load_model(model_uri: str):
    """The network of a logged or registered model (runs:/..., models:/NAME@alias, models:/m-...),
    on the CPU, in eval mode, weights upcast to float32 (trainer.loop.load_model)."""
    import mlflow

    from trainer.loop import load_model as load_checkpoint

    with tempfile.TemporaryDirectory(prefix="multifair-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return load_checkpoint(local)
