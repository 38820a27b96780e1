"""benchmarks/service_known_answer.py --truth: committed service runs scored against a
hand-made known answer (no service run). Seconds."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import service_known_answer as ka  # noqa: E402

CONFIGS = [{"rho": 1.2, "lambda_gm": 0.15, "tau": 0.04, "delta": 0.3, "lambda_f": 0.5},
           {"rho": 0.5, "lambda_gm": 0.9, "tau": 0.005, "delta": 0.9, "lambda_f": 1.9},
           {"rho": 1.9, "lambda_gm": 0.02, "tau": 0.09, "delta": 0.05, "lambda_f": 0.1}]
# test ES-AUC per config and seed; validation curves pick config 2 as the design's best
TEST = {0: [0.70, 0.74], 1: [0.60, 0.64], 2: [0.80, 0.78]}
VAL = {0: 0.7, 1: 0.6, 2: 0.9}


def _files():
    table = {"world": "sensitive", "sizes": [8, 4, 4], "epochs": 2, "seeds": 2, "configs": CONFIGS,
             "entries": [{"config": c, "seed": s, "curve": [[0.8, VAL[c] - 0.1], [0.8, VAL[c]]],
                          "test": [0.9, v]} for c, vs in TEST.items() for s, v in enumerate(vs)]}
    fused = ["oct", "slo"]
    confirm = {"fits": [{"mode": "baseline", "modalities": fused, "config": None, "seed": s, "test": [0.9, v]}
                        for s, v in enumerate([0.70, 0.72, 0.68])]
               + [{"mode": "baseline", "modalities": ["oct"], "config": None, "seed": 0, "test": [0.9, 0.99]}]
               + [{"mode": "full", "modalities": fused, "config": 2, "seed": s, "test": [0.9, v]}
                  for s, v in enumerate([0.75, 0.73, 0.74])]}
    near_1 = dict(CONFIGS[1], rho=0.51)           # a searched setting next to design point 1
    raw = {"args": {"world": "sensitive"},
           "runs": [{"run": 0, "deployed": "baseline", "candidate_deployed": False, "params": {}},
                    {"run": 1, "deployed": "full-ab", "candidate_deployed": True, "params": near_1},
                    {"run": 2, "deployed": "full-cd", "candidate_deployed": True, "params": CONFIGS[2]},
                    {"run": 3, "deployed": None, "candidate_deployed": False, "params": None}]}
    return raw, table, confirm


def test_deployments_scored_against_the_known_answer_by_hand():
    raw, table, confirm = _files()
    out = ka.score_runs(raw, table, confirm)
    s, rows = out["summary"], out["runs"]
    plain = np.mean([0.70, 0.72, 0.68])                       # the one-modality fit is not plain fusion
    assert s["plain_fusion_true_test_es_auc"]["mean"] == pytest.approx(plain)
    assert s["design_best"]["config"] == 2                    # highest validation mean
    assert s["design_best"]["true_test_es_auc_fresh_seeds"]["mean"] == pytest.approx(0.74)
    assert s["design_best"]["best_table_test_mean_winners_curse"] == pytest.approx(0.79)
    assert s["design_best"]["vs_plain_paired_by_seed"]["mean"] == pytest.approx(0.74 - plain)
    assert s["design_best"]["vs_plain_paired_by_seed"]["n"] == 3
    assert rows[1]["design_point"] == 1 and 0 < rows[1]["distance"] < 0.02
    assert rows[1]["true_test_es_auc"] == pytest.approx(0.62) and rows[1]["truly_worse"]
    assert rows[2]["true_test_es_auc"] == pytest.approx(0.79) and rows[2]["truly_better"]
    assert rows[0]["true_test_es_auc"] == pytest.approx(plain) and not rows[0]["truly_worse"]
    assert s["decided"] == 3 and s["truly_worse_deployed"] == 1 and s["truly_better_deployed"] == 1
    assert s["truly_worse_rate_95ci"] == pytest.approx(ka.wilson(1, 3))
    assert s["deployed_true_test_es_auc_mean"] == pytest.approx((plain + 0.62 + 0.79) / 3)
    assert s["deployed_gap_to_design_best_mean"] == pytest.approx((plain + 0.62 + 0.79) / 3 - 0.74)
    assert s["design_points_truly_better_than_plain"] == 2    # configs 0 (0.72 > 0.70) and 2
    assert not s["goal_met_point_estimate"] and not s["goal_shown_95ci"]
    # Welch interval of config 1 against plain fusion: scipy's, independent of the code's arithmetic
    from scipy.stats import ttest_ind

    ci = ttest_ind([0.60, 0.64], [0.70, 0.72, 0.68], equal_var=False).confidence_interval(0.95)
    assert rows[1]["vs_plain"]["lo"] == pytest.approx(ci.low) and rows[1]["worse_beyond_noise"] == (ci.high < 0)


def test_truth_refuses_a_table_of_another_world(tmp_path):
    raw, table, confirm = _files()
    table["world"] = "default"
    for name, obj in (("raw", raw), ("table", table), ("confirm", confirm)):
        (tmp_path / f"{name}.json").write_text(json.dumps(obj))
    with pytest.raises(SystemExit, match="same world"):
        ka.main(["--truth", str(tmp_path / "raw.json"), "--table", str(tmp_path / "table.json"),
                 "--confirm", str(tmp_path / "confirm.json"), "--out", str(tmp_path / "o.json")])
    table["world"] = "sensitive"
    (tmp_path / "table.json").write_text(json.dumps(table))
    assert ka.main(["--truth", str(tmp_path / "raw.json"), "--table", str(tmp_path / "table.json"),
                    "--confirm", str(tmp_path / "confirm.json"), "--out", str(tmp_path / "o.json")]) == 0
    assert math.isclose(json.loads((tmp_path / "o.json").read_text())["summary"]["truly_worse_rate"], 1 / 3)
