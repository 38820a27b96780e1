"""The chosen model in the MLflow model registry, and a scorer that uses it.

Registered with a signature (the model's inputs after the trainer's transforms: one array per
modality, `<modality>.<key>` for a note's token ids and mask; output: one logit per sample), the
kept bf16 safetensors weights as the model (search/decide/mlmodel.py), its trainer configuration in
the MLmodel metadata, tags (hyperparameters, test metrics, data fingerprint, report artifact) and
the alias `champion`.

    python -m search.decide.registry --model models:/multifair-fairvision-race@champion \\
        --tracking-uri URI --data-root /data/FairVision --split test --out predictions.csv

scores a data folder in the released format and writes per-sample predictions to a LOCAL file
only (never to MLflow); it prints aggregate metrics.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def _batches(cfg, split: str, model, datasets: dict | None = None):
    """(batch, logits) batch by batch through the trainer's one inference path, on the CPU
    (`datasets`: the splits opened on this node, else the trainer's data path)."""
    from trainer.data import build_datasets
    from trainer.inference import forward

    yield from forward(model, (datasets or build_datasets(cfg))[split], cfg.batch_size * 2)


def signature_inputs(batch: dict, modalities) -> dict[str, np.ndarray]:
    """One named array per model input: an image modality's tensor as `<modality>`, a
    dict-valued one (a clinical note: token ids and attention mask) as `<modality>.<key>`."""
    inputs = {}
    for m in modalities:
        value = batch[m]
        if isinstance(value, dict):
            inputs.update({f"{m}.{k}": v.numpy() for k, v in value.items()})
        else:
            inputs[m] = value.numpy()
    return inputs


def signature(cfg, model, datasets: dict | None = None):
    from mlflow.models import infer_signature

    batch, logits = next(_batches(cfg, "val", model, datasets))
    return infer_signature(signature_inputs(batch, cfg.resolved_modalities()), logits.numpy())


def checkpoint_signature(ckpt, data: dict | None = None):
    """The signature of a Tune Checkpoint's model (in a Ray task: search.decide.remote): one batch of
    two validation samples through the model on the task's node, the data opened through the
    trials' path. Only the schema (names, dtypes, shapes) comes back, no sample."""
    from search.decide.remote import datasets
    from trainer.checkpoint import checkpoint_weights
    from trainer.config import config_from_dict
    from trainer.loop import load_model

    with ckpt.as_directory() as d:
        cfg = config_from_dict({**checkpoint_weights(d)["config"], "pretrained": False})
        model = load_model(d)
    # batch_size 1: _batches reads 2 samples; the schema's batch dimension is -1 whatever it is
    return signature(cfg.replace(batch_size=1), model, datasets(cfg, data))


def register(tracker, run_id: str, checkpoint_dir: str, name: str, tags: dict[str, str],
             sig=None) -> dict:
    """Log the model to `run_id` (signature, config), register it, tag it, alias it champion.
    `sig`: the signature, computed where the data is (checkpoint_signature); None: here."""
    from trainer.config import config_from_dict
    from trainer.checkpoint import checkpoint_weights
    from trainer.loop import load_model

    cfg = config_from_dict({**checkpoint_weights(checkpoint_dir)["config"], "pretrained": False})
    sig = sig or signature(cfg, load_model(checkpoint_dir))
    model_uri = tracker.log_model(run_id, checkpoint_dir, signature=sig,
                                  metadata={"trainer_config": cfg.to_dict()})
    import mlflow

    mlflow.set_tracking_uri(tracker.tracking_uri)
    version = mlflow.register_model(model_uri, name, tags={k: str(v)[:5000] for k, v in tags.items()})
    tracker.client.set_registered_model_alias(name, "champion", version.version)
    tracker.client.set_tag(run_id, "registered_model", f"{name}/{version.version}")
    return {"name": name, "version": version.version, "uri": f"models:/{name}@champion"}


def score(model_uri: str, data_root: str, split: str, out: str) -> dict:
    """Predictions of a registered model on one split of a data folder -> local CSV; returns the
    aggregate metrics (AUC, ES-AUC, worst-group AUC)."""
    import mlflow

    from search.decide.mlmodel import load_model
    from search.decide.paired import point_metrics
    from trainer.config import ATTRIBUTES, canonical_attribute, config_from_dict

    info = mlflow.models.get_model_info(model_uri)
    cfg = config_from_dict({**info.metadata["trainer_config"], "data_root": data_root, "pretrained": False})
    model = load_model(model_uri)   # the logged bf16 safetensors weights, upcast to float32
    ys, ps, gs = [], [], []
    for batch, logits in _batches(cfg, split, model):
        ys.append(batch["label"].numpy()); gs.append(batch["group"].numpy())
        ps.append(logits.sigmoid().numpy())
    y, p, g = np.concatenate(ys), np.concatenate(ps), np.concatenate(gs)
    names = ATTRIBUTES[canonical_attribute(cfg.attribute)]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "group", "probability"])
        for i, (yi, gi, pi) in enumerate(zip(y, g, p)):
            w.writerow([i, int(yi), names.get(int(gi), "unknown"), f"{float(pi):.8f}"])
    return point_metrics(y, p, g, group_names=names)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="score a data folder with a registered MultiFair model")
    ap.add_argument("--model", required=True, help="e.g. models:/multifair-fairvision-race@champion")
    ap.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI")
    ap.add_argument("--data-root", required=True, help="a data folder in the released format")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--out", required=True, help="LOCAL csv for the per-sample predictions")
    a = ap.parse_args(argv)
    if a.out.startswith(("s3://", "gs://", "http://", "https://", "models:/", "runs:/")):
        print(f"error: --out {a.out}: predictions are written to a local file only", file=sys.stderr)
        return 2
    if not Path(a.data_root).is_dir():
        print(f"error: --data-root {a.data_root} is not a folder", file=sys.stderr)
        return 2
    import mlflow

    if a.tracking_uri:
        mlflow.set_tracking_uri(a.tracking_uri)
    m = score(a.model, a.data_root, a.split, a.out)
    print(f"{a.model} on {a.split}: auc {m['auc']:.4f}  es_auc {m['es_auc']:.4f}  "
          f"worst-group auc {m['worst_group_auc']:.4f}  predictions -> {a.out} (local)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
