"""The decide stage's test scoring (search/decide/scoring.py): the deployed model's complete test
pass is made ONCE and serves both the paired test against the reference and the robustness block
(issue 29 item 3). The passes are counted through the trainer's real inference path
(Trainer.forward, wrapped, still run); the figures are checked against the old path's own
predictions (predict_test per model, the paired test's function before) with sklearn.
In this process, no Ray: two 1-epoch tiny fits, about 20 s on 2 cores."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from search.decide.paired import paired_bootstrap
from search.decide.scoring import deployed_test, predict_test, score_checkpoint
from search.record.summary import robustness_of


@pytest.fixture(scope="module")
def checkpoints(dataset, cache_dir, tmp_path_factory):
    """(plain fusion, MultiFair full) Tune Checkpoints of 1-epoch tiny fits on the search data."""
    from ray import tune

    from trainer.config import make_config
    from trainer.loop import fit

    root, out = str(dataset("search")), tmp_path_factory.mktemp("scoring")
    cfg = make_config("fairvision", "gender", preset="tiny", data_root=root, epochs=1, evaluate_test=False)
    def fitted(mode: str, seed: int):
        saved = {}
        fit(cfg.replace(mode=mode, seed=seed),
            on_epoch=lambda r: saved.__setitem__("dir", r.save_checkpoint(out / mode, resume=False)),
            progress=False)
        return tune.Checkpoint.from_directory(str(saved["dir"]))

    return root, fitted("baseline", 1), fitted("full", 7)


@pytest.fixture
def passes(monkeypatch):
    """The splits of every pass through Trainer.forward (the one inference path), the real one run."""
    from trainer.loop import Trainer

    seen, real = [], Trainer.forward

    def counted(self, split, encode=False):
        seen.append(split)
        return real(self, split, encode)

    monkeypatch.setattr(Trainer, "forward", counted)
    return seen


def es_auc(y, p, g) -> float:
    """ES-AUC from sklearn's AUCs: auc / (1 + sum over groups |auc_g - auc|)."""
    auc = roc_auc_score(y, p)
    return auc / (1 + sum(abs(roc_auc_score(y[g == k], p[g == k]) - auc) for k in np.unique(g)))


def old_path(base, cand):
    """The old path's predictions: each model through predict_test (the paired test's pass)."""
    out = []
    for ckpt in (base, cand):
        with ckpt.as_directory() as d:
            out.append(predict_test(d))
    (y, pa, g, names), (y2, pb, g2, _) = out
    assert np.array_equal(y, y2) and np.array_equal(g, g2)
    return y, pa, pb, g, names


@pytest.mark.parametrize("deployed", ["chosen", "baseline"])
def test_the_deployed_model_is_scored_once_for_the_paired_test_and_its_robustness(
        checkpoints, passes, deployed):
    root, base, cand = checkpoints
    shift = {"shift_root": root, "evaluate_test": True}   # the same data as "another site"
    got = deployed_test(base, cand, deployed, n=200, seed=3, overrides=shift)
    # one complete test pass per model (the old path made three: two paired, one robustness);
    # the other site's pass is its own; each modality missing re-fuses the encoded features
    assert passes.count("test") == 2 and passes.count("shift") == 1, passes

    y, pa, pb, g, names = old_path(base, cand)
    mine = pb if deployed == "chosen" else pa
    paired, rob = got["paired"], got["robustness"]
    assert paired["n_test"] == len(y)
    for col, p in (("baseline", pa), ("chosen", pb)):
        assert paired["auc"][col] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert paired["es_auc"][col] == pytest.approx(es_auc(y, p, g), abs=1e-12)
    # the intervals: the old path's paired bootstrap on its own predictions, exactly
    expected = paired_bootstrap(y, pa, pb, g, n=200, seed=3, group_names=names)
    for key in ("auc", "es_auc", "worst_group_auc"):
        for k in ("diff", "diff_lo", "diff_hi", "baseline_lo", "chosen_hi", "n_valid"):
            assert paired[key][k] == pytest.approx(expected[key][k], abs=1e-12), (key, k)
    # the robustness block: the deployed model's complete figures, and the same data as the
    # "other site" gives the same figures again
    for block in (rob["same_site"], rob["shift"]):
        assert block["auc"] == pytest.approx(roc_auc_score(y, mine), abs=1e-12)
        assert block["es_auc"] == pytest.approx(es_auc(y, mine, g), abs=1e-12)
    # each modality missing, as the old robustness task (its own scoring) gave it
    old = robustness_of(score_checkpoint(cand if deployed == "chosen" else base, overrides=shift))
    assert set(rob["missing"]) == {"slo", "oct"}
    for m, d in old["missing"].items():
        for k in ("auc", "es_auc"):
            assert rob["missing"][m]["removed"][k] == pytest.approx(d["removed"][k], abs=1e-12), (m, k)
    assert not any(isinstance(v, np.ndarray) for v in rob.values()), "per-sample values came back"


def test_without_a_candidate_only_the_deployed_model_is_scored(checkpoints, passes):
    _, base, _ = checkpoints
    got = deployed_test(base, None, "baseline", n=50)
    assert got["paired"] is None and passes.count("test") == 1, passes
    y, pa, _, _, _ = old_path(base, base)
    assert got["robustness"]["same_site"]["auc"] == pytest.approx(roc_auc_score(y, pa), abs=1e-12)
    with pytest.raises(ValueError, match="deployed='chosen'"):
        deployed_test(base, None, "chosen")
