"""A vision-language champion (issue 28) served as every champion is: a tiny `fairclip` fit logged
as the pyfunc model (search/decide/pyfunc.py, its CLIP tokenizer and FairCLIP's note cut saved
beside it), loaded with mlflow.pyfunc.load_model, takes fundus images (arrays or npz paths) with
or without a note, and returns the zero-shot probability transformers' own CLIPModel gives."""
import json

import numpy as np
import pytest

from tests.trainer.test_vl_fit import _args, _zero_shot_probs
from trainer.__main__ import main as cli_main

# a 2-epoch tiny fit and an MLflow model: about 10 s on 2 cores


def test_a_fairclip_champion_predicts_through_mlflow_pyfunc(dataset, tmp_path, capsys):
    import mlflow
    import pandas as pd

    from search.decide.mlmodel import model_files
    from search.decide.pyfunc import log_model
    from trainer.config import make_config
    from trainer.data import LAYOUTS
    from trainer.loop import Trainer, load_model

    root, cache = dataset("vl"), tmp_path / "cache"
    assert cli_main(_args(root, cache, "fairclip", []) + ["--out", str(tmp_path / "fit")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["config"]["mode"] == "fairclip"
    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("vl-champion")
    with mlflow.start_run() as run:
        pass
    model_uri = log_model(uri, run.info.run_id, model_files(tmp_path / "fit" / "checkpoint", tmp_path / "files"))
    model = mlflow.pyfunc.load_model(model_uri, model_config={"allowed_root": str(root)})

    cfg = make_config("fairvlmed", "gender", preset="tiny", mode="fairclip", data_root=str(root),
                      cache_dir=str(cache), batch_size=8)
    test = Trainer(cfg).data["test"]
    expected = _zero_shot_probs(load_model(tmp_path / "fit" / "checkpoint"), test)   # CLIPModel's
    files = sorted(LAYOUTS["fairvlmed"].split_dir(str(root), "test").glob("data_*.npz"))[:4]
    with np.load(files[0]) as z:
        first = z["slo_fundus"]
    frame = pd.DataFrame({"slo": [first, *map(str, files[1:])],
                          "note": ["glaucoma, cdr 0.8, iop 26", None, "  ", "normal exam, return in a year"]})
    got = model.predict(frame)
    assert got["modalities_used"].tolist() == ["slo,note", "slo", "slo", "slo,note"]
    # the zero-shot score reads the image and the class prompts, never the note
    np.testing.assert_allclose(got["probability"], expected[:4], rtol=1e-4, atol=1e-5)
