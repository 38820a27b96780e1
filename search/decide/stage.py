"""After the search: finalists -> confirmation (Tune) -> the rule (search.decide.rule) -> test
split once (paired against the study's reference: plain fusion, or CLIP for the vision-language
family, search.record.reference) -> registry -> decision.json -> figures -> report, all
written through search.record.study and logged to the study's MLflow run. Returns the decision dict.

decision.json is written as soon as the decision and registration are made, before figures and
the report: a failure there (a plotting bug, a full disk) never loses the decision; a figure
failure is recorded in it (`figures.error`) and the report is still written."""
from __future__ import annotations

import math

from search.record import study as S

THRESHOLDED = ("val/dpd_at_val_threshold", "val/deodds_at_val_threshold")


def decide(scfg, setup: dict, trials: list[dict], tracker, auc_floor: float | None) -> dict:
    from search.decide import confirm, select

    from search.run.objectives import floors, objective_keys

    search = scfg.to_dict()
    full = S.full_length(trials, scfg.max_epochs)
    keys = objective_keys(scfg) if scfg.objective == "pareto" else ["auc", "es_auc"]
    front = select.front(full, keys)
    decision = {"objective": scfg.objective, "auc_floor_search": auc_floor, "front_keys": keys,
                "floors": floors(scfg, auc_floor),
                "space": {k: str(v) for k, v in S.space_summary(scfg.mode).items()},
                "front": [{"trial_id": t["trial_id"], "auc": t["val"]["auc"], "es_auc": t["val"]["es_auc"],
                           "values": {k: t["val"].get(k) for k in keys},
                           "feasible": select.feasible(t, floors(scfg, auc_floor)), "params": t["params"]}
                          for t in front]}
    if len(full) >= 2:   # would more trials help? (search.record.expected_max)
        from search.record.expected_max import curve

        decision["expected_max"] = curve([t["val"]["es_auc"] for t in full], seed=scfg.seed)
    if setup.get("prepared"):   # prepared by the cluster (search/run/dataprep.py): its manifest's hash
        decision["data_fingerprint"] = setup["prepared"]["sha256"]
    elif scfg.data_root:
        from search.record.report import data_fingerprint

        decision["data_fingerprint"] = data_fingerprint(scfg.data_root)
    if scfg.finalists > 0 and full:
        finals = select.finalists(scfg, full, auc_floor, scfg.finalists)
        conf = confirm.run_confirmation(scfg, setup, finals, tracker)
        decision["reference"] = conf["reference"]   # what the candidate "baseline" is (record/reference)
        decision["confirmation"] = {k: conf[k] for k in ("candidates", "stats", "seeds", "looks", "choice")}
        print(f"[decide] {conf['choice']['reason']}", flush=True)
        _test_and_register(scfg, conf, tracker, decision, setup)
    S.write_json(scfg.study_dir, S.DECISION_FILE, decision)   # before figures: never lost to them
    _figures_and_report(scfg, search, trials, full, tracker, decision)
    S.write_json(scfg.study_dir, S.DECISION_FILE, decision)   # with the figures' and report's paths
    return decision


def _test_and_register(scfg, conf: dict, tracker, decision: dict, setup: dict | None = None) -> None:
    from search.decide.confirm import BASELINE, seed_run

    choice = conf["choice"]
    if choice.get("error"):   # no decision (search.decide.confirm.no_decision): nothing to test or register
        return
    label = choice["label"]
    # the candidate scored against the reference: the deployed one, or (the reference
    # deployed) the best candidate, so the decision always shows the comparison it rests on
    compared = label if label != BASELINE else choice.get("best_candidate")
    chosen, base = seed_run(conf, label), seed_run(conf, BASELINE)
    if chosen is None or base is None:
        return
    decision["deployed_run"] = {"candidate": label, "seed": chosen["seed"], "run_id": chosen["run_id"]}
    # thresholded fairness at the validation-chosen threshold, once the trainer reports it
    decision["thresholded"] = {k: chosen["val"][k] for k in THRESHOLDED if k in chosen["val"]}
    other = seed_run(conf, compared) if compared else None
    side = "chosen" if label != BASELINE else "baseline"      # the deployed model's column
    if scfg.final_test:   # --no-final-test: the test split stays untouched
        _test(scfg, base, other, side, chosen, tracker, decision, setup)
    if tracker is not None and chosen["run_id"] and scfg.register_name:
        from search.record.summary import robustness_metrics

        tags = {**{f"hp.{k}": v for k, v in conf["candidates"][label].items()},
                **{f"test.{k}": v for k, v in _flat_test(decision.get("test", {}), side).items()},
                **{k.replace("/", "."): v for k, v in robustness_metrics(decision.get("robustness") or {}).items()},
                "data_fingerprint": decision.get("data_fingerprint", ""), "report": "report/report.html",
                "study_run_id": tracker.parent_run_id}
        from search.decide.registry import checkpoint_signature, register
        from search.run.remote import data_of, run

        sig = run(scfg, "model signature", checkpoint_signature, chosen["checkpoint"], data_of(setup))
        with chosen["checkpoint"].as_directory() as d:
            decision["registered"] = register(tracker, chosen["run_id"], d, scfg.register_name, tags, sig=sig)


def _test(scfg, base: dict, other: dict | None, side: str, chosen: dict, tracker, decision: dict,
          setup) -> None:
    """decision["test"]: the candidate against the reference, paired over the test samples
    (`other`: the candidate's run; None: no candidate to compare); decision["robustness"]: the
    deployed model's test figures complete, with each modality removed, on the samples that lack
    one and (--shift-root) on the other site's test split. One Ray task in which the deployed
    model's test pass is made once and serves both (search.decide.scoring.deployed_test);
    logged as test/<metric>..., test/missing/<m>/... and test/shift/... on its run and the
    study's."""
    from search.decide.scoring import log_metrics, run_deployed_test
    from search.record.summary import robustness_metrics

    scored = run_deployed_test(base["checkpoint"], other["checkpoint"] if other else None, side, n=1000,
                               seed=scfg.seed, scfg=scfg, setup=setup)   # a Ray task: the head reads no data
    run_ids = [chosen["run_id"], tracker.parent_run_id] if tracker is not None else []
    if scored["paired"] is not None:
        test = {**scored["paired"], "candidate": other["candidate"], "deployed": chosen["candidate"]}
        decision["test"] = test
        if tracker is not None:
            _log_test(tracker, run_ids, test, side)
    rob = scored["robustness"]
    decision["robustness"] = {"candidate": chosen["candidate"], **rob}
    if tracker is not None:
        log_metrics(tracker, run_ids, robustness_metrics(rob))


def _flat_test(test: dict, side: str = "chosen") -> dict[str, float]:
    """test/<metric> (and _lo/_hi) = the DEPLOYED model's figures (`side`: "chosen" for the
    candidate, "baseline" when the reference is deployed); _baseline = the reference's (plain
    fusion, or CLIP: decision.json "reference"); _diff = candidate - the reference."""
    out = {}
    for key, row in test.items():
        if isinstance(row, dict) and "diff" in row:
            out[key] = row[side]
            out[f"{key}_lo"], out[f"{key}_hi"] = row[f"{side}_lo"], row[f"{side}_hi"]
            out[f"{key}_baseline"] = row["baseline"]
            out[f"{key}_diff"], out[f"{key}_diff_lo"], out[f"{key}_diff_hi"] = row["diff"], row["diff_lo"], row["diff_hi"]
    return out


def _log_test(tracker, run_ids, test: dict, side: str = "chosen") -> None:
    """test/<metric> (point value on the whole test split), _lo/_hi, and paired differences."""
    metrics = {f"test/{k}": v for k, v in _flat_test(test, side).items() if math.isfinite(v)}
    for run_id in filter(None, run_ids):
        for k, v in metrics.items():
            tracker.client.log_metric(run_id, k, float(v))


def _figures_and_report(scfg, search, trials, full, tracker, decision) -> None:
    from search.record.figures import search_figures
    from search.record.report import render
    from search.record.tracking import git_commit

    out = S.local_dir(search)
    decision["figures"] = {}
    files = []
    if scfg.figures:
        try:
            fig = search_figures(trials, full, scfg.grace_period, out / "figures", scfg.mode,
                                 keys=decision["front_keys"])   # the front decision.json lists
            files = fig["files"]
            if decision.get("expected_max"):
                from search.record.expected_max import figure

                files.append(figure(decision["expected_max"], out / "figures"))
            decision["figures"] = {"epoch": fig["epoch"], "importance": fig["importance"],
                                   "files": [str(f) for f in files]}
        except Exception as exc:   # noqa: BLE001  figures explain the decision; they are not it
            decision["figures"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"[decide] warning: figures failed ({type(exc).__name__}: {exc}); the decision "
                  "and the report are kept", flush=True)
    report = out / "report.html"
    report.write_text(render(search, decision, files, full, git_commit()))
    decision["report"] = str(report)
    if tracker is not None:
        if files:
            tracker.log_artifacts(tracker.parent_run_id, str(out / "figures"), "figures")
        for run_id in filter(None, (tracker.parent_run_id, (decision.get("deployed_run") or {}).get("run_id"))):
            tracker.log_artifact(run_id, str(report), "report")
