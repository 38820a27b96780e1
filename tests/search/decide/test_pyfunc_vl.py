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


@pytest.mark.slow
def test_a_fairclip_search_is_confirmed_against_clip_and_registers_a_champion(cache_dir, dataset, tmp_path):
    """A `--mode fairclip` FairVLMed search through confirmation, the rule and registration (the
    entry script, --local, tiny preset): the reference the confirmation TRAINED is clip (each
    reference run's checkpoint config, not only the plan), and the decision, the console and the
    report name it CLIP (issue 28 item 3). About 5-8 minutes on 2 shared cores."""
    from tests.search.decide.test_pyfunc_serve import run_search
    from trainer.checkpoint import read_manifest

    run = run_search("fairvlmed", str(dataset("vl")), tmp_path, "--mode", "fairclip", "--set", "batch_size=8")
    study = tmp_path / "results" / "fairvlmed-gender-fairclip"
    decision = json.loads((study / "decision.json").read_text())
    assert decision["reference"] == {"mode": "clip", "name": "CLIP", "default_point": False}
    conf = decision["confirmation"]
    assert conf["candidates"]["baseline"]["mode"] == "clip"
    assert {c["mode"] for k, c in conf["candidates"].items() if k != "baseline"} == {"fairclip"}
    # what was trained: every confirmation run's checkpoint names its mode
    trained = {}
    for manifest in (tmp_path / "results" / "fairvlmed-gender-fairclip-confirm").rglob("checkpoint.json"):
        trial = next(p for p in manifest.parents if (p / "params.json").is_file())
        candidate = json.loads((trial / "params.json").read_text())["candidate"]
        trained.setdefault(candidate, set()).add(read_manifest(manifest.parent)["config"]["mode"])
    assert trained.pop("baseline") == {"clip"} and trained and all(m == {"fairclip"} for m in trained.values())
    assert "against CLIP" in conf["choice"]["rule"] and "plain fusion" not in conf["choice"]["reason"]
    assert "[confirm] reference (candidate 'baseline'): CLIP, --mode clip" in run["log"]
    assert "candidate - CLIP, validation ES-AUC" in run["log"]
    assert "plain fusion" not in (study / "report.html").read_text()
    # the champion: registered, and the model the decision deployed (CLIP or a fairclip candidate)
    assert run["cfg"].mode == conf["candidates"][conf["choice"]["label"]]["mode"]
    assert decision["registered"]["name"] == run["name"]
    assert decision["robustness"]["same_site"]["auc"] is not None and decision["test"]["n_test"] == 40
