"""Confirmation stage: re-train the finalists with fresh seeds, as one more Tune run, and choose.

Candidates: the top `--finalists` K configurations of the search (search.decide.select.finalists),
the paper's point (same mode) and the study's reference (search.record.reference: plain fusion,
`--mode baseline`, for the fusion methods; CLIP, `--mode clip`, for the vision-language family;
labelled "baseline"), each with `--confirm-seeds` S seeds (seed+1 ... seed+S: none of them the seed the search picked on). With `--confirm-folds F`
repeat r (the r-th seed) also trains and validates on its own cut of train+val: fold r mod F of
a group-stratified partition (trainer/data/resplit.py), the same cut for every candidate (paired);
the test split is never part of it. Every run trains all
epochs (no early stopping); its value is its best-epoch validation score, as in the search.

The rule is search.decide.rule (docs/search.md, "How the pick is made"): the confirmation's
runs become its results table (repeat = seed, paired across candidates) and a MultiFair candidate
is deployed only if a paired one-sided t test, Holm-adjusted over all candidates, shows it better
than the reference at familywise error `--alpha` (and it clears the `--min-auc-drop` floor);
otherwise the reference: a tool that searched MultiFair must still be able to answer "plain fusion
is better here" (a FairCLIP search: "CLIP is better here"). An interrupted or incomplete confirmation raises StageStopped: no decision is
made from part of the table.
"""
from __future__ import annotations

import math
import os

import numpy as np

from search.run.cluster_size import reserved, trial_concurrency
from search.record import study as S
from search.record.reference import FUSION, Reference, reference_of
from search.record.study import CONFIRM, full_length, trial_record   # CONFIRM: the stage's name

BASELINE = "baseline"
PAPER = "paper"
CANDIDATES_FILE = "confirm-candidates.json"   # the plan a --resume keeps (study_candidates)


def candidates(scfg, finals: list[dict], ref: Reference | None = None) -> dict[str, dict]:
    """label -> hyperparameters + mode (+ the search trial it came from); BASELINE is the study's
    reference (search.record.reference), trained at the paper's point's values (those its mode
    does not use are unused there). When the searched mode is the reference's own, the reference
    is that mode at the paper's point: a candidate at that point is the reference itself, so
    neither the paper's point nor a finalist on it is a second candidate. `ref`: the reference
    (default: the mode's, search.record.reference.reference_of)."""
    ref = ref or reference_of(scfg.mode)

    def at_paper_point(c: dict) -> bool:
        return all(math.isclose(c[k], v) for k, v in scfg.baseline.items())

    out = {}
    for t in finals:
        if not (ref.default_point and at_paper_point(t["params"])):
            out[f"{scfg.mode}-{t['trial_id']}"] = {**t["params"], "mode": scfg.mode, "trial_id": t["trial_id"]}
    if not ref.default_point and not any(at_paper_point(c) for c in out.values()):
        out[PAPER] = {**scfg.baseline, "mode": scfg.mode}
    out[BASELINE] = {**scfg.baseline, "mode": ref.mode}
    return out


def study_candidates(scfg, finals: list[dict]) -> tuple[dict[str, dict], Reference]:
    """The confirmation's candidates and reference, fixed when the stage first starts and saved in
    the study folder (CANDIDATES_FILE): a --resume trains what the interrupted stage planned, even
    under a newer rule. A confirmation started before the file existed (before the reference
    followed the model family, issue 28) was planned against plain fusion, the paper's point
    included: it resumes so."""
    import pyarrow.fs
    from ray import tune

    fs, path = S.study_fs(scfg.study_dir)
    if fs.get_file_info(f"{path}/{CANDIDATES_FILE}").type != pyarrow.fs.FileType.NotFound:
        saved = S.read_json(scfg.study_dir, CANDIDATES_FILE)
        return saved["candidates"], Reference(**saved["reference"])
    started = tune.Tuner.can_restore(S.stage_path(scfg.storage_path, f"{scfg.name}-{CONFIRM}"))
    ref = FUSION if started else reference_of(scfg.mode)
    cands = candidates(scfg, finals, ref)
    S.write_json(scfg.study_dir, CANDIDATES_FILE, {"reference": ref.to_dict(), "candidates": cands})
    return cands, ref


def seeds(scfg) -> list[int]:
    return [scfg.seed + 1 + i for i in range(scfg.confirm_seeds)]


def looks(scfg) -> list[list[int]]:
    """The seeds of each look: `--confirm-seeds` S first, then (with `--confirm-budget` B) up to
    B more per still-undecided candidate, S at a time (the last look takes the remainder)."""
    out, nxt = [seeds(scfg)], scfg.seed + 1 + scfg.confirm_seeds
    left = getattr(scfg, "confirm_budget", 0)
    while left > 0:
        step = min(scfg.confirm_seeds, left)
        out.append(list(range(nxt, nxt + step)))
        nxt, left = nxt + step, left - step
    return out


class StageStopped(RuntimeError):
    """A stage that must not go on to a decision: interrupted (Ctrl-C) or incomplete."""

    def __init__(self, stage: str, message: str, interrupted: bool):
        super().__init__(f"{stage} stage {'interrupted' if interrupted else 'failed'}: {message}")
        self.stage, self.interrupted = stage, interrupted


def run_confirmation(scfg, setup: dict, finals: list[dict], tracker) -> dict:
    """The Tune run(s) over candidates x seeds; returns {"candidates", "reference", "runs", "stats",
    "seeds", "looks", "choice"}. Raises StageStopped unless every candidate of every look trained every
    seed to the last epoch.

    Intensification (`--confirm-budget`, as SMAC intensifies): when the first look shows no
    candidate better, the candidates still undecided (eligible, 95% interval reaching above
    --min-gain) and the reference get more seeds, look after look, until one is shown better,
    none is undecided, or the budget is spent. Error control over the looks: each look tests at
    alpha / (number of looks planned) (Bonferroni over looks: valid whatever the stopping), and
    Holm counts every candidate of the first look (one dropped counts with p = 1)."""
    cands, ref = study_candidates(scfg, finals)
    print(f"[{CONFIRM}] reference (candidate {BASELINE!r}): {ref.name}, --mode {ref.mode}", flush=True)
    plan = looks(scfg)
    alpha, family = scfg.alpha / len(plan), len(cands) - 1
    active, runs, done, history, dropped = list(cands), [], [], [], {}
    for j, seed_list in enumerate(plan, start=1):
        look = {c: cands[c] for c in active}
        new = grid_run(scfg, setup, look, seed_list, CONFIRM, tracker, look=j)
        runs += new
        done += complete(new, look, seed_list, scfg.max_epochs, CONFIRM)
        choice = choose([r for r in done if r["candidate"] in look], scfg.min_auc_drop, alpha,
                        scfg.min_gain, family, ref.name)
        if choice.get("error"):   # a table the rule cannot read (a NaN score): no more looks
            history.append({"look": j, "seeds": seed_list, "candidates": list(look), "alpha": alpha,
                            "deployed": None, "undecided": []})
            break
        rows = choice["evidence"]["candidates"]
        undecided = [c for c, r in rows.items() if r["eligible"] and r["diff_hi"] > scfg.min_gain]
        history.append({"look": j, "seeds": seed_list, "candidates": list(look), "alpha": alpha,
                        "deployed": choice["label"], "undecided": undecided})
        if not choice["fell_back_to_baseline"] or not undecided or j == len(plan):
            break
        for c in rows:
            if c not in undecided:
                dropped[c] = {**rows[c], "dropped_after_look": j}
        active = undecided + [BASELINE]
    if not choice.get("error"):
        choice["evidence"]["candidates"].update(dropped)
    all_seeds = [s for h in history for s in h["seeds"]]
    return {"candidates": cands, "reference": ref.to_dict(), "runs": runs, "stats": candidate_stats(done),
            "seeds": all_seeds, "looks": history, "choice": choice}


def complete(runs: list[dict], cands: dict, seed_list: list[int], max_epochs: int, stage: str) -> list[dict]:
    """The full-length runs, if there is one for every candidate x seed; else StageStopped naming
    what is missing (a failed run, or one that never trained every epoch)."""
    done = full_length(runs, max_epochs)
    have = {(r["candidate"], r["seed"]) for r in done}
    missing = [f"{c} seed {s}" for c in cands for s in seed_list if (c, s) not in have]
    if missing:
        raise StageStopped(stage, f"{len(missing)} of {len(cands) * len(seed_list)} runs did not "
                                  f"train every epoch ({', '.join(missing[:4])}"
                                  f"{', ...' if len(missing) > 4 else ''}); fix the cause and rerun "
                                  "with --resume", interrupted=False)
    return done


def grid_run(scfg, setup: dict, cands: dict, seed_list: list[int], stage: str, tracker,
             look: int = 1) -> list[dict]:
    """One Tune run `<name>-<stage>` over candidates x seeds, every run all epochs, resumable;
    returns search.record.study.trial_record dicts with candidate, seed, checkpoint and run id."""
    from ray import tune

    from search.run.progress import ProgressCallback
    from search.run.storage import ResumeStatePruner
    from search.record.study import METRIC, stage_path, trial_id_of
    from search.record.trial_callback import MLflowTrialCallback
    from search.run.trainable import checkpoint_policy, model_checkpoint
    from search.run.tuning import make_tuner, tracking_callback

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")   # runner.py
    every = (setup.get("checkpoints") or {}).get("every", scfg.checkpoint_every)
    setup = {**setup, "candidates": cands, "checkpoints": checkpoint_policy(every)}   # no rungs here
    if stage == CONFIRM and getattr(scfg, "confirm_folds", 0):   # repeats resample train/val too
        setup["resplit"] = {"folds": scfg.confirm_folds, "first_seed": seeds(scfg)[0]}
    name = f"{scfg.name}-{stage}" + (f"-{look}" if look > 1 else "")   # one Tune run per look
    callbacks = [ProgressCallback(scfg.max_epochs, label=stage), ResumeStatePruner()]
    if tracker is not None:
        tags = {"run_kind": stage, "stage": stage, "dataset": scfg.dataset, "attribute": scfg.attribute}
        callbacks.append(MLflowTrialCallback(tracker, scfg.max_epochs, tags, setup["base"], cands, stage,
                                             unlogged_dir=str(scfg.results_dir)))
    n = len(cands) * len(seed_list)
    print(f"[{stage}] {len(cands)} candidates x {len(seed_list)} seeds = {n} runs of "
          f"{scfg.max_epochs} epochs: {', '.join(cands)}", flush=True)
    slots = _concurrency(scfg, n)
    if (setup.get("test_hooks") or {}).get("interrupt_stage") == stage:
        hooks = setup["test_hooks"]
        callbacks.append(_interrupt_hook(hooks.get("interrupt_after_results", 1), hooks.get("interrupt_marker")))
    if tune.Tuner.can_restore(stage_path(scfg.storage_path, name)):   # s3://b/p/<name>?endpoint_override=...
        tuner = make_tuner(scfg, setup, name, restore=True)
        restored = tracking_callback(tuner)
        # the restored callback logs the resumed runs: its tracker holds their run ids
        tracker = restored.tracker if restored else tracker
    else:   # no searcher: a plain grid, every run all epochs
        tuner = make_tuner(scfg, setup, name, restore=False, slots=slots, callbacks=callbacks,
                           param_space={"candidate": tune.grid_search(list(cands)),
                                        "seed": tune.grid_search(seed_list)},
                           verbose=min(scfg.verbose, 1), metric=METRIC, mode="max")
    with reserved(scfg, slots):   # the autoscaler starts every slot's node now
        results = tuner.fit()
    stopped = _unfinished(results, n, scfg.max_epochs)
    if stopped:
        if tracker is not None:
            for trial_id in stopped:
                _end_run(tracker, trial_id)
            _close_finished(tracker, results, stopped, scfg.max_epochs)
        raise StageStopped(stage, f"{len(stopped)} of {n} runs unfinished; the same command "
                                  f"{'plus --resume ' if stage == CONFIRM else ''}continues them",
                           interrupted=True)
    runs = []
    for r in results:
        df = r.metrics_dataframe
        rows = df.to_dict("records") if df is not None and len(df) else []
        trial_id = trial_id_of(r.path)
        runs.append(trial_record(trial_id, r.config, rows, "FAILED" if r.error else "FINISHED",
                                 candidate=r.config["candidate"], seed=int(r.config["seed"]),
                                 checkpoint=model_checkpoint(r.checkpoint),   # holds the best weights
                                 run_id=_run_id(tracker, trial_id)))
    return runs


def _unfinished(results, n: int, max_epochs: int) -> list[str]:
    """Trial ids Tune did not finish, plus placeholders for grid points never started. Ctrl-C
    returns normally from fit, and Tune's cleanup marks the trials it stopped TERMINATED: in a
    grid where every run trains every epoch, TERMINATED before the last epoch means stopped."""
    trials = getattr(results._experiment_analysis, "trials", None) or []

    def finished(t) -> bool:
        last = t.last_result or {}
        return t.status == "ERROR" or (t.status == "TERMINATED"
                                       and int(last.get("epoch", last.get("training_iteration", 0))) >= max_epochs)

    left = [t.trial_id for t in trials if not finished(t)]
    return left + ["(not started)"] * max(0, n - len(trials))


def _run_id(tracker, trial_id: str) -> str | None:
    return tracker.run_id(trial_id) if tracker is not None else None


def _end_run(tracker, trial_id: str) -> None:
    """An interrupted run: KILLED in MLflow (a --resume finds it by tag and finishes it)."""
    run_id = _run_id(tracker, trial_id) if trial_id != "(not started)" else None
    if run_id:
        tracker.client.set_terminated(run_id, status="KILLED")


def _close_finished(tracker, results, stopped: list[str], max_epochs: int) -> None:
    """Runs that trained every epoch but whose end Tune never reported: a Ctrl-C between a
    trial's last result and its on_trial_complete leaves the trial TERMINATED (a --resume does
    not run it again) and its MLflow run RUNNING for ever. They are ended FINISHED here."""
    for t in getattr(results._experiment_analysis, "trials", None) or []:
        if t.trial_id in stopped or t.status != "TERMINATED":
            continue
        run_id = _run_id(tracker, t.trial_id)
        if run_id and tracker.client.get_run(run_id).info.status == "RUNNING":
            last = t.last_result or {}
            tracker.end_trial(run_id, "FINISHED", int(last.get("epoch", max_epochs)), max_epochs)


def _interrupt_hook(after: int, marker: str | None):
    """Test hook (docs/search.md): a real SIGINT to this driver, as Ctrl-C, after `after` results
    of the named stage (Tune's own handler ends the run as it does for Ctrl-C); once only when a
    `marker` file is given (Tune pickles the hook with the run, so a --resume restores it)."""
    import signal

    from ray.tune import Callback

    class InterruptHook(Callback):
        seen = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.seen += 1
            if self.seen == after and not (marker and os.path.exists(marker)):
                if marker:
                    open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGINT)

    return InterruptHook()


def _concurrency(scfg, n: int) -> int:
    return trial_concurrency(scfg, n, CONFIRM)   # GPUs counted, the autoscaler's maximum


def candidate_stats(runs: list[dict]) -> dict[str, dict]:
    """Per candidate: mean and std (ddof=1) over seeds of validation AUC and ES-AUC."""
    out = {}
    for label in dict.fromkeys(r["candidate"] for r in runs):
        mine = [r for r in runs if r["candidate"] == label]
        row = {"n_seeds": len(mine)}
        for key in ("auc", "es_auc"):
            v = np.array([r["val"][key] for r in mine])
            row[key], row[f"{key}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out[label] = row
    return out


def table(runs: list[dict]):
    """The rule's results table: one row per candidate x seed (repeat = seed: paired)."""
    import pandas as pd

    return pd.DataFrame([{"candidate": r["candidate"], "repeat": r["seed"], "val_auc": r["val"]["auc"],
                          "val_es_auc": r["val"]["es_auc"]} for r in runs],
                        columns=["candidate", "repeat", "val_auc", "val_es_auc"])


def choose(runs: list[dict], min_auc_drop: float | None = None, alpha: float = 0.05,
           min_gain: float = 0.0, family: int | None = None, reference: str = FUSION.name) -> dict:
    """search.decide.rule on the confirmation's table. Returns the label, the rule, the floor,
    the evidence (per candidate: paired difference, interval, Holm p, minimum detectable gain),
    the one-line reason and the best candidate's seed-paired difference to the reference
    (`reference`: its name in the messages, search.record.reference)."""
    from search.decide.rule import BadTable, decide_table

    if not any(r["candidate"] == BASELINE for r in runs):
        raise RuntimeError(f"confirmation: every {reference} (candidate {BASELINE!r}) run failed; "
                           "nothing to compare with")
    try:
        d = decide_table(table(runs), alpha, min_gain, BASELINE, min_auc_drop, name="confirmation",
                         baseline_name=reference, family=family)
    except BadTable as exc:
        return no_decision(str(exc))
    best, label = d["best_candidate"], d["deployed"]
    for w in d["warnings"]:
        print(f"[confirm] warning: {w}", flush=True)
    return {"label": label, "rule": d["rule"], "reason": d["reason"], "auc_floor": d["auc_floor"],
            "fell_back_to_baseline": label == BASELINE, "best_candidate": best, "evidence": d,
            "vs_baseline_val": seed_paired(runs, best) if best is not None else {}}


def no_decision(fault: str) -> dict:
    """The choice when the rule cannot read the confirmation's table (a run whose validation
    ES-AUC or AUC is NaN: a group with one class in its validation split): nothing is shown
    better, so nothing is deployed or registered; the one-line reason names the fault."""
    return {"label": BASELINE, "error": fault, "rule": "", "auc_floor": None, "fell_back_to_baseline": True,
            "best_candidate": None, "evidence": {}, "vs_baseline_val": {},
            "reason": f"no decision: {fault}; nothing is deployed or registered (fix the validation "
                      "split, e.g. more samples per group, and rerun)"}


def seed_paired(runs: list[dict], label: str) -> dict:
    """Validation difference (chosen - the reference) paired by seed, with a 95% t interval."""
    from scipy.stats import ttest_rel

    by_seed = {(r["candidate"], r["seed"]): r["val"] for r in runs}
    common = sorted(s for c, s in by_seed if c == label and (BASELINE, s) in by_seed)
    out = {"n_seeds": len(common)}
    for key in ("auc", "es_auc"):
        a = np.array([by_seed[(BASELINE, s)][key] for s in common])
        b = np.array([by_seed[(label, s)][key] for s in common])
        out[key] = float((b - a).mean()) if len(common) else math.nan
        lo = hi = math.nan
        if len(common) >= 2 and np.ptp(b - a) > 0:
            ci = ttest_rel(b, a).confidence_interval(0.95)
            lo, hi = float(ci.low), float(ci.high)
        out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
    return out


def seed_run(confirmation: dict, label: str) -> dict | None:
    """The run deployed for a candidate: its FIRST seed (fixed before any result is seen, so the
    test is not a second winner's pick among seeds)."""
    first = confirmation["seeds"][0]
    mine = [r for r in confirmation["runs"] if r["candidate"] == label and r["checkpoint"] is not None]
    return next((r for r in mine if r["seed"] == first), mine[0] if mine else None)
