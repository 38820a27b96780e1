"""What a finished (or interrupted) search produced: per-trial records from Tune's ResultGrid,
the chosen trial (best validation ES-AUC among trials that trained every epoch), its model
logged to MLflow, and the summary printed at the end."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from search.record import study
from search.record.expected_max import line
from search.record.tracking import ui_hint
from search.record.reference import FUSION, saved_reference


@dataclass
class SearchOutcome:
    results: object                  # ray.tune.ResultGrid
    best: dict | None                # {"trial_id", "config", "val", "epoch", "full"}
    stopped_early: int
    failed: int
    wall_s: float
    interrupted: bool
    tracking_uri: str | None
    experiment_id: str | None
    parent_run_id: str | None
    best_run_id: str | None
    trials: list = field(default_factory=list)      # search.record.study.trial_record dicts
    decision: dict | None = None                    # search.decide: front, confirmation, test
    timings: dict = field(default_factory=dict)     # seconds per stage (runner.run_search)
    stopped_stage: str = ""          # a stage after the search that stopped (confirm): no decision
    stop_message: str = ""


def trials_from_results(results) -> list[dict]:
    """Per trial: search.record.study.trial_record plus path, Tune result and status (FINISHED /
    FAILED / UNFINISHED)."""
    tune_status = {t.trial_id: t.status for t in getattr(results._experiment_analysis, "trials", [])}
    out = []
    for r in results:
        trial_id = study.trial_id_of(r.path)
        df = r.metrics_dataframe   # None for a trial that never reported
        rows = df.to_dict("records") if df is not None and len(df) else []
        status = tune_status.get(trial_id, "ERROR" if r.error else "TERMINATED")
        out.append(study.trial_record(
            trial_id, r.config, rows, {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(status, "UNFINISHED"),
            path=r.path, result=r))
    return out


def robustness_of(scored: dict) -> dict:
    """The test figures with each modality missing and on the other site, from a scoring's
    result (the trainer's test["missing"][m] = {"removed", "absent"} and test["shift"]): with
    the complete same-site point figures beside them."""
    point = scored.get("point") or {}
    return {"same_site": {k: point.get(k) for k in ("auc", "es_auc", "group_auc")},
            "missing": scored.get("missing", point.get("missing")) or {},
            "shift": scored.get("shift", point.get("shift"))}


def robustness_metrics(rob: dict) -> dict[str, float]:
    """test/missing/<m>/auc|es_auc (m removed from every sample), test/absent/<m>/n|auc|es_auc
    (the samples that lack m), test/shift/... (the other site; its missing figures under
    test/shift/missing/<m>/...): the finite ones, for MLflow."""
    out: dict[str, float] = {}

    def put(key: str, v) -> None:
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[key] = float(v)

    def per_modality(prefix: str, missing: dict) -> None:
        for m, d in (missing or {}).items():
            removed, absent = d.get("removed") or {}, d.get("absent") or {}
            for k in ("auc", "es_auc"):
                put(f"{prefix}missing/{m}/{k}", removed.get(k))
                put(f"{prefix}absent/{m}/{k}", absent.get(k))
            put(f"{prefix}absent/{m}/n", absent.get("n"))

    per_modality("test/", rob.get("missing"))
    shift = rob.get("shift") or {}
    for k in ("auc", "es_auc", "dpd", "deodds", "n"):
        put(f"test/shift/{k}", shift.get(k))
    per_modality("test/shift/", shift.get("missing"))
    return out


AT_HALF = "  (threshold 0.5: 0 can mean no sample above 0.5)"


def _ci(row: dict, key: str) -> str:
    return f"{row[key]:+.4f} [{row[key + '_lo']:+.4f}, {row[key + '_hi']:+.4f}]"


def print_decision(d: dict) -> None:
    """The front, the confirmation and the paired test, a few lines each."""
    front = d.get("front", [])
    keys = d.get("front_keys") or ["auc", "es_auc"]
    print(f"Pareto front ({', '.join(keys)}, validation; full-length trials): {len(front)} trial(s)")
    for t in front[:6]:
        values = t.get("values") or {"auc": t["auc"], "es_auc": t["es_auc"]}
        flag = "" if t.get("feasible", True) else "  (below a floor)"
        print(f"  {t['trial_id']:14s} " + "  ".join(f"{k} {_f4(values.get(k))}" for k in keys) + flag)
    if d.get("floors"):
        print("floors (infeasible below): " + ", ".join(f"{k} >= {v:.4f}" for k, v in d["floors"].items()))
    if d.get("expected_max"):
        print(line(d["expected_max"]))
    conf = d.get("confirmation")
    if conf:
        print("confirmation (fresh seeds; mean ± sd of validation over each candidate's seeds):")
        for label, st in conf["stats"].items():
            mark = "  <- chosen" if label == conf["choice"]["label"] else ""
            print(f"  {label:22s} auc {st['auc']:.4f} ± {st['auc_std']:.4f}  "
                  f"es_auc {st['es_auc']:.4f} ± {st['es_auc_std']:.4f}  ({st['n_seeds']} seeds){mark}")
        looks = conf.get("looks") or []
        for h in looks if len(looks) > 1 else []:   # intensification (--confirm-budget): one line per look
            print(f"  look {h['look']}: seeds {h['seeds'][0]}-{h['seeds'][-1]} for {', '.join(h['candidates'])} "
                  f"at alpha {h['alpha']:.3g}; undecided after it: {', '.join(h['undecided']) or 'none'}")
        if conf["choice"].get("rule"):
            print(f"  rule: {conf['choice']['rule']}")
        print_evidence(conf["choice"])
    test, ref = d.get("test"), saved_reference(d).name
    if test:
        deployed = test.get("deployed", "") != "baseline"
        name = "chosen" if deployed else "best candidate"
        print(f"test split, once: {name}{'' if deployed else ' (not deployed)'} - {ref}, "
              f"paired bootstrap over {test['n_test']} samples ({test['n_resamples']} resamples, "
              "95% interval):")
        for k in ("auc", "es_auc", "worst_group_auc"):
            print(f"  {k:16s} {name} {test[k]['chosen']:.4f}  {ref} "
                  f"{test[k]['baseline']:.4f}  difference {_ci(test[k], 'diff')}")
    for k, v in (d.get("thresholded") or {}).items():
        print(f"  deployed run's {k} {v:.4f} (threshold chosen on validation)")
    rob = d.get("robustness")
    if rob:
        same = rob.get("same_site") or {}
        print_robustness((same.get("auc"), same.get("es_auc")), robustness_metrics(rob), rob.get("shift_root", ""))
    if d.get("registered"):
        print(f"registered {d['registered']['uri']} (version {d['registered']['version']})")
    if d.get("report"):
        print(f"report: {d['report']}")


def print_robustness(same: tuple, flat: dict[str, float], shift_root: str = "") -> None:
    """The deployed model's test figures: complete on the same site (`same`: auc, es_auc), with
    each modality removed, on the samples lacking one, on the other site (`flat`:
    robustness_metrics keys). Nothing when none was measured."""
    mods = sorted({k.split("/")[2] for k in flat if k.startswith(("test/missing/", "test/absent/"))})
    if not mods and "test/shift/auc" not in flat:
        return
    print("deployed model on the test split, complete / a modality missing / another site (point figures):")

    def row(label: str, auc, es_auc) -> None:
        print(f"  {label:34s} auc {_f4(auc)}  es_auc {_f4(es_auc)}")

    row("complete, same site", *same)
    for m in mods:
        row(f"without {m} (removed from all)", flat.get(f"test/missing/{m}/auc"), flat.get(f"test/missing/{m}/es_auc"))
        if flat.get(f"test/absent/{m}/n", 0) > 0:   # samples that really lack m
            row(f"samples lacking {m} (n {flat[f'test/absent/{m}/n']:.0f})", flat.get(f"test/absent/{m}/auc"),
                flat.get(f"test/absent/{m}/es_auc"))
    if "test/shift/auc" in flat or "test/shift/es_auc" in flat:
        n = f", n {flat['test/shift/n']:.0f}" if "test/shift/n" in flat else ""
        row(f"other site{n}", flat.get("test/shift/auc"), flat.get("test/shift/es_auc"))
        for m in mods:
            if f"test/shift/missing/{m}/es_auc" in flat or f"test/shift/missing/{m}/auc" in flat:
                row(f"other site, without {m}", flat.get(f"test/shift/missing/{m}/auc"),
                    flat.get(f"test/shift/missing/{m}/es_auc"))
    if shift_root:
        print(f"  (other site: --shift-root {shift_root})")


def _f4(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def print_evidence(choice: dict, indent: str = "  ") -> None:
    """The rule's evidence per candidate and its one-line reason (search.decide.rule). A gain
    detectable only above 1 - the reference's ES-AUC (impossible) is never printed as a figure."""
    ev = choice.get("evidence") or {}
    rows = ev.get("candidates") or {}
    if rows:
        print(f"{indent}candidate - {_reference_name(ev)}, validation ES-AUC paired by seed (95% t interval), "
              f"one-sided p, Holm p, gain detectable at 80% power:")
        for label, r in rows.items():
            flag = "" if r["eligible"] else "  (below the AUC floor)"
            gain = r["min_detectable_gain"]
            detects = (f"detects >= {gain:+.3f}" if gain <= ev.get("headroom", math.inf)
                       else "detects no achievable gain")
            print(f"{indent}  {label:22s} {r['diff']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}]  "
                  f"p {r['p']:.3g}  Holm p {r['p_holm']:.3g}  {detects}{flag}")
        if ev.get("detection"):
            print(f"{indent}{ev['detection']}; familywise error {ev['alpha']}")
        print(f"{indent}{within_seed_line(ev)}")
    if choice.get("reason"):
        print(f"{indent}decision: {choice['reason']}")


def within_seed_line(ev: dict) -> str:
    """This study's within-seed correlation of validation ES-AUC, the reference vs each candidate,
    the figure the power table (benchmarks/results/decision-error.md) is read at."""
    rhos = [r.get("rho_within", math.nan) for r in (ev.get("candidates") or {}).values()]
    rhos = [v for v in rhos if isinstance(v, float) and math.isfinite(v)]
    ref = _reference_name(ev)
    if not rhos:
        return (f"within-seed correlation {ref} - candidates: needs 3+ repeats with spread "
                f"(have {ev.get('n_repeats')})")
    return (f"within-seed correlation {ref} - candidates, val ES-AUC over {ev['n_repeats']} repeats: "
            f"median {statistics.median(rhos):+.2f} (range {min(rhos):+.2f} to {max(rhos):+.2f}); the power at a "
            "correlation: benchmarks/results/decision-error.md")


def _reference_name(evidence: dict) -> str:
    """The rule's name for its baseline (search.decide.rule); evidence saved before it was
    recorded compared with plain fusion."""
    return evidence.get("baseline_name") or FUSION.name


def print_summary(scfg, o: SearchOutcome) -> None:
    if o.stopped_stage:
        print(f"\n=== MultiFair study STOPPED in the {o.stopped_stage} stage: no decision, nothing "
              f"registered ===\n{o.stop_message}\n(continue with the same command plus --resume; "
              f"study {scfg.study_dir})")
    elif o.interrupted:
        print(f"\n=== MultiFair search INTERRUPTED: continue it with the same command plus --resume "
              f"(study {scfg.study_dir}) ===")
    elif o.failed and o.failed == len(o.results):
        print(f"\n=== MultiFair search finished, but ALL {o.failed} trials FAILED: see the error "
              f"files listed above (Tune's trial table) ===")
    else:
        print("\n=== MultiFair search finished ===")
    print(f"study: {scfg.study_dir}   wall time {o.wall_s:.0f} s")
    print(f"trials: {len(o.results)}  stopped early by ASHA: {o.stopped_early}  failed: {o.failed}")
    if o.best is None:
        print("no trial produced a validation metric")
    else:
        scope = "among trials that trained all epochs" if o.best["full"] else "(no trial trained all epochs)"
        one_seed = " (one seed; the confirmation below decides)" if o.decision and o.decision.get("confirmation") else ""
        print(f"best configuration {scope}: trial {o.best['trial_id']}, epoch {o.best['epoch']}{one_seed}")
        for k, v in o.best["config"].items():
            print(f"  {k:10s} {v:.6g}")
        print("validation metrics:")
        for k, v in sorted(o.best["val"].items()):
            print(f"  {k:30s} {v:.4f}{AT_HALF if k in ('val/dpd', 'val/deodds') else ''}")
        if o.best.get("test"):
            t = o.best["test"]
            print("test split (scored once, bootstrap mean ± std): " + ", ".join(
                f"{k} {t[f'test/{k}']:.4f} ± {t.get(f'test/{k}_std', float('nan')):.4f}"
                for k in ("auc", "es_auc", "dpd", "deodds") if f"test/{k}" in t))
            print_robustness((t.get("test/auc"), t.get("test/es_auc")), t, scfg.shift_root)
    if o.decision:
        print_decision(o.decision)
    if o.tracking_uri:
        command, url = ui_hint(o.tracking_uri, o.experiment_id)
        deployed = ((o.decision or {}).get("deployed_run") or {}).get("run_id") or o.best_run_id
        print(f"MLflow: experiment id {o.experiment_id}, parent run id {o.parent_run_id}, "
              f"chosen run id {deployed}")
        print(f"open the UI:  {command}\n  runs table: {url}")
    else:
        print(f"MLflow was skipped: python -m search.record.relog --results {scfg.study_dir} --tracking-uri URI")
