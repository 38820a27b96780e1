"""The decide stage cannot leave a wrong champion (slow: real Ray, Tune, MLflow; tiny preset, 2 epochs):
a comparison method's search with figures and the confirmation on; a confirmation interrupted
by a real SIGINT (Ctrl-C) leaves no decision and no registration, then --resume completes it and
registers from the complete table; an incomplete table is refused with the stage named."""
import pytest

from search.decide.confirm import BASELINE, StageStopped, complete

pytestmark = pytest.mark.slow


def _runs(cands, seeds, epochs=2, drop=()):
    return [{"candidate": c, "seed": s, "status": "FINISHED", "epochs": epochs,
             "val": {"auc": 0.8, "es_auc": 0.7}} for c in cands for s in seeds if (c, s) not in drop]


def test_an_incomplete_confirmation_is_refused_with_the_stage_named():
    cands = {"full-x": {}, BASELINE: {}}
    assert len(complete(_runs(cands, [1, 2]), cands, [1, 2], 2, "confirm")) == 4
    with pytest.raises(StageStopped) as err:       # a run missing (failed, or fewer seeds)
        complete(_runs(cands, [1, 2], drop={("full-x", 2)}), cands, [1, 2], 2, "confirm")
    assert "confirm stage failed" in str(err.value) and "full-x seed 2" in str(err.value)
    assert not err.value.interrupted
    short = _runs(cands, [1, 2], epochs=1)         # stopped before the last epoch
    with pytest.raises(StageStopped, match="4 of 4 runs"):
        complete(short, cands, [1, 2], 2, "confirm")


def _client(scfg):
    from mlflow import MlflowClient

    client = MlflowClient(scfg.tracking_uri)
    exp = client.get_experiment_by_name(scfg.experiment)
    return client, client.search_runs([exp.experiment_id], max_results=200)


def test_ogm_ge_search_with_figures_and_confirmation_decides_and_reports(ray_session, search_config, tmp_path):
    """--mode ogm_ge searches one hyperparameter (ogm_alpha): the figures follow its space
    (they assumed MultiFair's five), decision.json, the report and the champion exist."""
    from pathlib import Path

    from search.record.study import DECISION_FILE, read_json

    scfg = search_config(tmp_path, mode="ogm_ge", num_samples=3, max_epochs=2, grace_period=1,
                         finalists=1, confirm_seeds=2, figures=True, register_name="multifair-ogm")
    from search.runner import run_search

    outcome = run_search(scfg)
    d = outcome.decision
    assert not outcome.stopped_stage and "error" not in d["figures"], d.get("figures")
    names = {Path(f).name for f in d["figures"]["files"]}
    assert {"pareto_front.png", "slice_es_auc.png", "parallel_coordinate.png"} <= names
    assert set(d["figures"]["importance"]["es_auc"]["fanova"]) == {"ogm_alpha"}
    saved = read_json(scfg.study_dir, DECISION_FILE)
    choice = saved["confirmation"]["choice"]
    assert choice["label"] == d["deployed_run"]["candidate"]
    assert choice["reason"] and set(choice["evidence"]["candidates"]) == set(saved["confirmation"]["candidates"]) - {BASELINE}
    assert all(c["mode"] == "ogm_ge" for k, c in saved["confirmation"]["candidates"].items() if k != BASELINE)
    report = Path(d["report"]).read_text()
    assert "Holm p" in report and choice["reason"].split(" (")[0] in report
    client, runs = _client(scfg)
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"
    version = client.get_model_version_by_alias("multifair-ogm", "champion")
    assert version.run_id == d["deployed_run"]["run_id"]


def test_interrupted_confirmation_leaves_no_decision_then_resume_registers_from_the_full_table(
        ray_session, search_config, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    import search.runner as runner
    from search.record.study import DECISION_FILE, read_json

    hooks = {"interrupt_stage": "confirm", "interrupt_after_results": 3,
             "interrupt_marker": str(tmp_path / "interrupted-once")}
    kw = dict(num_samples=2, max_epochs=2, grace_period=1, finalists=1, confirm_seeds=2,
              register_name="multifair-int", test_hooks=hooks)
    scfg = search_config(tmp_path, **kw)
    outcome = runner.run_search(scfg)
    assert outcome.stopped_stage == "confirm" and outcome.interrupted and outcome.decision is None
    assert "confirm stage interrupted" in outcome.stop_message
    with pytest.raises(Exception):
        read_json(scfg.study_dir, DECISION_FILE)                   # no decision from part of the table
    client, runs = _client(scfg)
    assert client.get_run(outcome.parent_run_id).info.status == "KILLED"
    with pytest.raises(MlflowException):
        client.get_registered_model("multifair-int")                # nothing registered
    left = [(r.info.run_name, r.data.tags.get("trial_id")) for r in runs if r.data.tags.get("run_kind") == "confirm" and r.info.status == "RUNNING"]
    assert not left, (left, outcome.stop_message)
    monkeypatch.setattr(runner, "run_search", lambda s: outcome)    # the exit code of that outcome
    monkeypatch.setattr(runner, "parse_args", lambda *a, **k: scfg)
    assert runner.main("fairvision", "gender") == 130
    monkeypatch.undo()

    resumed = runner.run_search(search_config(tmp_path, resume=True, **kw))
    d = resumed.decision
    assert not resumed.stopped_stage and d is not None
    conf = d["confirmation"]
    assert all(s["n_seeds"] == 2 for s in conf["stats"].values())   # the complete table
    assert read_json(scfg.study_dir, DECISION_FILE)["confirmation"]["choice"]["label"] == conf["choice"]["label"]
    client, runs = _client(scfg)
    confirm = [r for r in runs if r.data.tags.get("run_kind") == "confirm"]
    assert len(confirm) == 2 * len(conf["candidates"]) and all(r.info.status == "FINISHED" for r in confirm)
    assert d["deployed_run"]["run_id"] in {r.info.run_id for r in confirm}
    version = client.get_model_version_by_alias("multifair-int", "champion")
    assert version.run_id == d["deployed_run"]["run_id"]
    assert client.get_run(resumed.parent_run_id).info.status == "FINISHED"


def _trial(tid, es, params):
    curve = {e: (0.8, es - 0.01 * (2 - e)) for e in (1, 2)}
    return {"trial_id": tid, "params": params, "config": params, "history": {e: v[1] for e, v in curve.items()},
            "curve": curve, "epochs": 2, "best_epoch": 2, "val": {"auc": 0.8, "es_auc": es}, "status": "FINISHED"}


def test_a_figure_failure_keeps_the_decision_and_the_report(tmp_path, monkeypatch):
    """decision.json is written before the figures; a figure that raises is recorded in it and
    the report is still written (no Ray needed: no confirmation)."""
    import json
    from pathlib import Path

    import search.record.figures
    from search.decide.stage import decide
    from search.runner import SearchConfig
    from search.record.study import DECISION_FILE

    scfg = SearchConfig("fairvision", "gender", preset="tiny", storage_path=str(tmp_path), finalists=0,
                        figures=True, max_epochs=2, grace_period=1)
    point = dict(scfg.baseline)
    trials = [_trial(f"t{i}", 0.6 + 0.05 * i, {k: v * (1 + 0.1 * i) for k, v in point.items()}) for i in range(3)]
    seen = {}

    def broken(*a, **k):
        seen["decision_on_disk"] = (Path(scfg.study_dir) / DECISION_FILE).exists()
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(search.record.figures, "search_figures", broken)
    d = decide(scfg, {}, trials, None, None)
    assert seen["decision_on_disk"]                         # written before the figures ran
    assert d["figures"]["error"] == "RuntimeError: plotting broke"
    saved = json.loads((Path(scfg.study_dir) / DECISION_FILE).read_text())
    assert saved["figures"]["error"] == d["figures"]["error"] and Path(saved["report"]).exists()
    assert saved["expected_max"]["n_trials"] == 3


def test_intensification_adds_seeds_to_the_undecided_candidates_and_plain_fusion(ray_session, search_config, tmp_path):
    """--confirm-budget: after the first look (2 seeds, nothing can be shown better with these
    intervals unless a gain is huge) the undecided candidates and plain fusion get 2 more seeds
    in a second Tune run; the decision reads the whole table at alpha / 2 looks."""
    from search.runner import run_search

    scfg = search_config(tmp_path, num_samples=2, max_epochs=2, grace_period=1, finalists=1,
                         confirm_seeds=2, confirm_budget=2, register_name="multifair-seq")
    d = run_search(scfg).decision
    conf = d["confirmation"]
    looks = conf["looks"]
    assert looks[0]["seeds"] == [1, 2] and looks[0]["alpha"] == pytest.approx(0.025)
    evidence = conf["choice"]["evidence"]
    assert evidence["family"] == len(conf["candidates"]) - 1        # Holm over the first look's
    if len(looks) == 2:
        assert looks[1]["seeds"] == [3, 4] and BASELINE in looks[1]["candidates"]
        assert conf["stats"][BASELINE]["n_seeds"] == 4
        for c in looks[0]["undecided"]:
            assert conf["stats"][c]["n_seeds"] == 4 and evidence["candidates"][c]["n"] == 4
        for c in set(conf["candidates"]) - set(looks[1]["candidates"]):
            assert conf["stats"][c]["n_seeds"] == 2 and evidence["candidates"][c]["dropped_after_look"] == 1
    else:   # decided at the first look: shown better, or nothing undecided
        assert conf["choice"]["label"] != BASELINE or not looks[0]["undecided"]
