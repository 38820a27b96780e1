"""Logging the champion as an MLflow pyfunc model that takes what a clinic has.

The model is the models-from-code file search/decide/pyfunc_model.py (MultiFairPyfunc: input
and output described there and in docs/tracking.md, "Deploying the champion"). A logged model
folder holds
  MLmodel, pyfunc_model.py        the pyfunc flavor: the code file MLflow runs to load it;
  artifacts/checkpoint/           best_model.safetensors (bf16, as the trial kept it) and
                                  checkpoint.json (config, threshold): nothing pickled;
  artifacts/tokenizer/            the note's tokenizer (FairVLMed), saved with save_pretrained;
  code/trainer/                   the trainer package (code_paths): a served model does not
                                  depend on the caller's PYTHONPATH or installed project;
  input_example.json              two SYNTHETIC rows from the project's generator (never a
                                  patient): one complete, one without its second modality.
The signature is column based: one optional column per modality (an image: array or path, so
AnyType; a note: string), output `probability` (double) and `modalities_used` (string).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
# The load-time settings the model takes (search/decide/pyfunc_model.py), with their defaults:
# MLflow passes a key of load_model(model_config=...) or of the server's SERVING_MODEL_CONFIG
# only when the logged model declares it (it drops the others with a warning).
MODEL_CONFIG = {"device": "cpu", "batch_size": None, "allowed_root": None}
# the example's image sides: the smallest the model takes (pyfunc_model.MIN_IMAGE_SIDE), so the
# logged JSON stays small; its OCT has as many B-scans as the model reads (cfg.oct_slices)
EXAMPLE_SIDE = 32


def model_signature(cfg):
    """Inputs: one optional column per modality of cfg; outputs: probability, modalities_used."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = [ColSpec("string", m, required=False) if m == "note" else
              ColSpec(AnyType(), m, required=False) for m in cfg.resolved_modalities()]
    outputs = [ColSpec("double", "probability"), ColSpec("string", "modalities_used")]
    return ModelSignature(Schema(inputs), Schema(outputs))


def input_example(cfg):
    """Two synthetic rows drawn by the project's generator (trainer/data/synthetic.py): the
    first with every modality, the second without the model's last modality (None)."""
    import numpy as np
    import pandas as pd

    from trainer.data.synthetic import note_texts, render_oct, render_slo, synthesize_metadata

    layout = cfg.dataset
    rng = np.random.default_rng(0)
    meta = synthesize_metadata(layout, 2, seed=0)
    mods = cfg.resolved_modalities()
    example = {}
    for m in mods:
        if m == "slo":
            cells = [render_slo(rng, (EXAMPLE_SIDE,) * 2, 0.5, 0).tolist() for _ in range(2)]
        elif m == "oct":
            shape = (cfg.oct_slices, EXAMPLE_SIDE, EXAMPLE_SIDE)
            cells = [render_oct(rng, shape, 0.1).tolist() for _ in range(2)]
        else:
            cells = list(note_texts(rng, meta, layout)["note"])
        example[m] = cells
    example[mods[-1]][1] = None     # the second patient lacks a modality
    return pd.DataFrame(example)


def requirements() -> list[str]:
    """The served model's packages, pinned to this environment's versions (no inference run)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mlflow", "torch", "numpy", "pandas", "safetensors", "filelock", "timm",
                 "transformers", "tokenizers"):
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def log_model(tracking_uri: str, run_id: str, files_dir: str | Path, signature=None,
              metadata=None) -> str:
    """Log the best-model files in `files_dir` (best_model.safetensors + checkpoint.json, e.g.
    search/decide/mlmodel.py model_files) to `run_id` as the pyfunc model; returns its models:/ URI."""
    import mlflow

    import trainer
    from trainer.checkpoint import read_manifest
    from trainer.config import config_from_dict

    cfg = config_from_dict({**read_manifest(files_dir)["config"], "pretrained": False})
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="multifair-pyfunc-") as tmp:
        artifacts = {"checkpoint": str(files_dir)}
        if "note" in cfg.resolved_modalities():
            from trainer.data.tokenizer import note_tokenizer   # the model family's (BERT or CLIP)

            note_tokenizer(cfg).save_pretrained(str(Path(tmp) / "tokenizer"))
            artifacts["tokenizer"] = str(Path(tmp) / "tokenizer")
        code = Path(tmp) / "code" / "trainer"   # the package without bytecode caches
        shutil.copytree(Path(trainer.__file__).parent, code,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with mlflow.start_run(run_id=run_id):   # the model belongs to the run's experiment
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE), artifacts=artifacts,
                code_paths=[str(code)], model_config=MODEL_CONFIG,
                signature=signature or model_signature(cfg),
                input_example=input_example(cfg), metadata=metadata,
                pip_requirements=requirements())
    return info.model_uri




def patients(cfg, split: str):
    """One split of cfg.data_root as the pyfunc's input: (DataFrame with one row per sample of a
    known cfg.attribute, each image column the sample's npz path, the note column its text or
    None; labels; group codes; file names). Labels and groups come from the trainer's cached meta
    (built without reading an image); the images are read by the model, per chunk of rows."""
    import numpy as np
    import pandas as pd

    from trainer.config import canonical_attribute
    from trainer.data import LAYOUTS
    from trainer.data.cache import load_split
    from trainer.data.common import ATTRIBUTE_ORDER, check_codes

    layout, attribute = LAYOUTS[cfg.dataset], canonical_attribute(cfg.attribute)
    meta, _arrays, folder = load_split(cfg, layout, cfg.data_root, split, ())
    codes = meta["codes"][:, ATTRIBUTE_ORDER.index(attribute)]
    check_codes(codes, meta["files"], folder, layout, attribute)
    rows = np.flatnonzero(codes != -1)           # unknown attribute: left out, as in training
    files = [folder / str(meta["files"][i]) for i in rows]
    table = {m: [str(f) for f in files] for m in cfg.resolved_modalities() if m != "note"}
    if "note" in cfg.resolved_modalities():
        table["note"] = _notes(cfg, layout, files)
    return pd.DataFrame(table), meta["labels"][rows], codes[rows], [f.name for f in files]


def _notes(cfg, layout, files) -> list:
    """Each file's note text (cfg.note_source: the npz key, or the summary CSV), None if absent."""
    import numpy as np

    from trainer.data.cache import csv_notes, find_csv
    from trainer.data.common import open_npz

    if cfg.note_source == "gpt4_summary":
        texts = csv_notes(find_csv(layout, cfg.data_root), files)
    else:
        texts = []
        for f in files:
            with open_npz(f) as z:
                texts.append(str(np.asarray(z[cfg.note_source]).reshape(-1)[0])
                             if cfg.note_source in z.files else None)
    return [t if t and t.strip() else None for t in texts]
