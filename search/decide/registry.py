"""The chosen model in the MLflow model registry, and a scorer that uses it.

Registered as an MLflow pyfunc model (search/decide/pyfunc.py: one optional column per modality,
images as arrays or npz/npy paths, the note as text, any modality absent; output: probability and
the modalities used), the kept bf16 safetensors weights inside (search/decide/mlmodel.py), its trainer
configuration in the MLmodel metadata, tags (hyperparameters, test metrics, data fingerprint,
report artifact) and the alias `champion`.

    python -m search.decide.registry --model models:/multifair-fairvision-race@champion \\
        --tracking-uri URI --data-root /data/FairVision --split test --out predictions.csv

scores a data folder in the released format and writes per-sample predictions to a LOCAL file
only (never to MLflow), scoring each patient through the registered pyfunc (the scorer a served
model runs; here allowed to read the files under --data-root): a patient whose npz lacks a
modality is scored without it, the CSV says which modalities each score used (`--without oct`
removes one from every patient); it prints aggregate metrics.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def signature(cfg):
    """The pyfunc model's signature: one optional column per modality (search/decide/pyfunc.py)."""
    from search.decide.pyfunc import model_signature

    return model_signature(cfg)


def checkpoint_signature(ckpt, data: dict | None = None):
    """The signature of a Tune Checkpoint's model (in a Ray task: search.run.remote), from its
    config alone: the columns do not depend on the data (`data` is kept for the callers)."""
    from trainer.checkpoint import read_manifest
    from trainer.config import config_from_dict

    with ckpt.as_directory() as d:
        cfg = config_from_dict({**read_manifest(d)["config"], "pretrained": False})
    return signature(cfg)


def register(tracker, run_id: str, checkpoint_dir: str, name: str, tags: dict[str, str],
             sig=None) -> dict:
    """Log the model to `run_id` (signature, config), register it, tag it, alias it champion.
    `sig`: the signature, computed where the data is (checkpoint_signature); None: here."""
    from search.decide.mlmodel import log_run_model
    from trainer.config import config_from_dict
    from trainer.checkpoint import checkpoint_weights

    cfg = config_from_dict({**checkpoint_weights(checkpoint_dir)["config"], "pretrained": False})
    sig = sig or signature(cfg)
    model_uri = log_run_model(tracker, run_id, checkpoint_dir, signature=sig,
                              metadata={"trainer_config": cfg.to_dict()})
    version = register_champion(tracker.tracking_uri, model_uri, name, tags)
    tracker.client.set_tag(run_id, "registered_model", f"{name}/{version}")
    return {"name": name, "version": version, "uri": f"models:/{name}@champion"}


def register_champion(tracking_uri: str, model_uri: str, name: str, tags: dict | None = None) -> str:
    """A logged model registered as a new version of `name` (tags cut to MLflow's 5000
    characters), aliased champion; returns the version. The one place a champion is named."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(model_uri, name, tags={k: str(v)[:5000] for k, v in (tags or {}).items()})
    mlflow.MlflowClient(tracking_uri).set_registered_model_alias(name, "champion", version.version)
    return version.version


def score(model_uri: str, data_root: str, split: str, out: str, without=()) -> dict:
    """Predictions of a registered model on one split of a data folder -> local CSV, through the
    model's own pyfunc (search/decide/pyfunc_model.py: the one scorer, the one a served model
    runs): each patient as its npz path, a modality absent where its key is; `without`: remove
    those modalities from every patient. Returns the aggregate metrics (AUC, ES-AUC, worst-group
    AUC) and the count of patients per modalities used."""
    import mlflow

    from search.decide.pyfunc import patients
    from search.decide.paired import point_metrics
    from trainer.config import ATTRIBUTES, canonical_attribute, config_from_dict

    info = mlflow.models.get_model_info(model_uri)
    cfg = config_from_dict({**info.metadata["trainer_config"], "data_root": data_root, "pretrained": False})
    table, y, g, files = patients(cfg, split)
    for m in without:
        table[m] = None
    config = {"allowed_root": batch_roots(data_root, table)}
    pred = mlflow.pyfunc.load_model(model_uri, model_config=config).predict(table)
    p, used = pred["probability"].to_numpy(), pred["modalities_used"].tolist()
    names = ATTRIBUTES[canonical_attribute(cfg.attribute)]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "group", "probability", "modalities_used", "file"])
        for i, (yi, gi, pi, ui, fi) in enumerate(zip(y, g, p, used, files)):
            w.writerow([i, int(yi), names.get(int(gi), "unknown"), f"{float(pi):.8f}", ui, fi])
    counts = {k: used.count(k) for k in sorted(set(used), key=lambda k: (-used.count(k), k))}
    return {**point_metrics(y, p, g, group_names=names), "modalities_used": counts}


def batch_roots(data_root: str, table) -> list[str]:
    """The folders batch scoring lets the model read (its allowed_root, docs/tracking.md): the
    data root the user gave, plus the folders its own listing's files resolve to (a data tree
    whose split folders are links elsewhere). The paths are the scorer's listing, not a caller's."""
    listed = {str(Path(p).resolve().parent) for m in table.columns if m != "note"
              for p in table[m] if isinstance(p, str)}
    return [str(Path(data_root).resolve()), *sorted(listed)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="score a data folder with a registered MultiFair model")
    ap.add_argument("--model", required=True, help="e.g. models:/multifair-fairvision-race@champion")
    ap.add_argument("--tracking-uri", default="", help="default: $MLFLOW_TRACKING_URI")
    ap.add_argument("--data-root", required=True, help="a data folder in the released format")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--out", required=True, help="LOCAL csv for the per-sample predictions")
    ap.add_argument("--without", default="", help="comma list of modalities to remove from every "
                    "patient (e.g. oct): the score without them")
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
    m = score(a.model, a.data_root, a.split, a.out, [x for x in a.without.split(",") if x])
    used = ", ".join(f"{k or 'none'} {n}" for k, n in m["modalities_used"].items())
    print(f"{a.model} on {a.split}: auc {m['auc']:.4f}  es_auc {m['es_auc']:.4f}  "
          f"worst-group auc {m['worst_group_auc']:.4f}  modalities used: {used}  "
          f"predictions -> {a.out} (local)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
