"""TrainConfig: paper defaults, presets, overrides, validation messages, path resolution."""
import json
from pathlib import Path

import pytest

from trainer.config import config_from_dict, make_config


def test_paper_settings_per_dataset_and_attribute():
    race = make_config("fairvision", "race")
    assert (race.tau, race.delta, race.lambda_f, race.proj_dim, race.fusion_heads) == (0.02, 0.6, 0.6, 128, 4)
    gender = make_config("fairvision", "gender")
    assert (gender.tau, gender.delta, gender.lambda_f, gender.lr, gender.rho, gender.lambda_gm) == \
        (0.04, 0.3, 0.5, 3e-5, 1.2, 0.15)
    vl = make_config("fairvlmed", "gender")
    assert (vl.tau, vl.delta, vl.proj_dim, vl.fusion_heads, vl.fusion_layers) == (0.07, 0.5, 256, 8, 3)


def test_overrides_file_then_set_and_round_trip(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"tau": 0.1, "epochs": 7}))
    cfg = make_config("fairvision", "gender", preset="tiny", config_file=f,
                      sets=["tau=0.2", "modalities=slo,oct,note", "amp=false"])
    assert (cfg.tau, cfg.epochs, cfg.modalities, cfg.amp) == (0.2, 7, ("slo", "oct", "note"), False)
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("sets, word", [(["tau=0"], "tau"), (["tau=-1"], "tau"), (["lr=-1"], "lr"),
                                        (["batch_size=1"], "batch_size"), (["nope=1"], "nope"),
                                        (["epochs=two"], "epochs"), (["fusion_heads=3"], "fusion_heads"),
                                        (["modalities=slo"], "modalities")])
def test_invalid_values_are_refused_with_the_field_named(sets, word):
    with pytest.raises(ValueError, match=word):
        make_config("fairvision", "gender", sets=sets)


def test_unknown_attribute_and_dataset():
    with pytest.raises(ValueError, match="height"):
        make_config("fairvision", "height")
    with pytest.raises(ValueError, match="mimic"):
        make_config("mimic", "gender")


def test_relative_paths_are_resolved_where_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_config("fairvision", "gender", data_root="data/fv", sets=["cache_dir=c"])
    assert cfg.data_root == str(tmp_path / "data" / "fv") and Path(cfg.cache_dir).is_absolute()
