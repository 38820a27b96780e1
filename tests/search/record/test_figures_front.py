"""The front figure draws the study's own objectives: its points are decision.json's front
(search.decide.select.front over the same keys), not always (AUC, ES-AUC)."""
import pytest

from search.decide import select
from search.record import figures

MISSING = "val/missing/oct/es_auc"


def trial(i, auc, es_auc, missing, rho=1.0):
    return {"trial_id": f"t{i}", "status": "FINISHED", "epochs": 3,
            "params": {"rho": rho + i / 10, "lambda_gm": 0.1, "tau": 0.05, "delta": 0.3, "lambda_f": 0.5},
            "val": {"auc": auc, "es_auc": es_auc, MISSING: missing}, "curve": {3: (auc, es_auc)}}


# t2 is dominated in (AUC, ES-AUC) by t1 but holds best without the OCT: on the 3-key front only;
# t4 has no finite value of the third key (undefined): on the front by its AUC, it cannot be drawn.
FULL = [trial(0, 0.90, 0.70, 0.60), trial(1, 0.85, 0.80, 0.62), trial(2, 0.84, 0.79, 0.75),
        trial(3, 0.80, 0.60, 0.50), trial(4, 0.95, 0.50, float("nan"))]


@pytest.mark.parametrize("keys, decided_ids, drawn_ids", [
    (["auc", "es_auc"], {"t0", "t1", "t4"}, {"t0", "t1", "t4"}),
    (["es_auc", MISSING], {"t1", "t2"}, {"t1", "t2"}),
    (["auc", "es_auc", MISSING], {"t0", "t1", "t2", "t4"}, {"t0", "t1", "t2"})])
def test_the_figure_front_is_the_decision_front(keys, decided_ids, drawn_ids):
    decided = {t["trial_id"] for t in select.front(FULL, keys)}
    drawn = {t.user_attrs["trial_id"] for t in figures.front_study(FULL, keys).best_trials}
    assert decided == decided_ids and drawn == drawn_ids   # hand-worked
    assert drawn == {i for i in decided if FULL[int(i[1])]["val"][keys[-1]] == FULL[int(i[1])]["val"][keys[-1]]}


def test_the_front_png_is_written_with_the_objectives_names(tmp_path):
    keys = ["auc", "es_auc", MISSING]
    out = figures.search_figures(FULL, FULL, epoch=3, out=tmp_path, keys=keys)
    assert (tmp_path / "pareto_front.png").stat().st_size > 1000
    html = (tmp_path / "pareto_front.html").read_text()
    assert "val ES-AUC, oct missing (best epoch)" in html and "val AUC (best epoch)" in html
    assert out["epoch"] == 3
    assert figures.axis_name("val/absent/slo/es_auc") == "val ES-AUC, slo absent"
