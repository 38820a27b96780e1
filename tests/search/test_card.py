"""The dataset card reaches the study run in MLflow (aggregate counts only, no file names)."""
import pytest

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
