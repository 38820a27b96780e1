"""The dataset card reaches the study run in MLflow (aggregate counts only, no file names); the
study file is strict JSON."""
import json
from pathlib import Path

import pytest

from search.record.study import STUDY_FILE
from tests.search.conftest import study_runs

pytestmark = pytest.mark.slow


def test_dataset_card_is_logged_to_the_study_run(study, tmp_path):
    scfg, outcome = study
    client, parents, _ = study_runs(scfg.tracking_uri)
    names = sorted(a.path for a in client.list_artifacts(parents[0].info.run_id, "dataset_card"))
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "txt"]
    local = client.download_artifacts(parents[0].info.run_id, names[1], str(tmp_path))
    text = open(local).read()
    assert "gender        female" in text and "val n/pos/neg" in text and "data_0" not in text


def test_study_file_is_strict_json(study):
    scfg, _ = study
    text = (Path(scfg.study_dir) / STUDY_FILE).read_text()
    study_file = json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert study_file["setup"]["base"]["dataset"] == "fairvision"
