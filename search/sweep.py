"""The paper's one-at-a-time sensitivity sweeps (MultiFair, Figs. 4-5): each searched
hyperparameter of the study's method (`--mode`: MultiFair's five, or a comparison method's own,
search/record/space.py) is moved across its range while the others stay at the chosen point, each
value trained with several seeds, as one Tune run (it spreads over a cluster); validation AUC and
ES-AUC are plotted against the value with mean ± sd error bars.

    python -m search.sweep --results multifair-results/fairvision-race-full [--points 4] [--seeds 3]

Centre: the study's deployed configuration (decision.json), else the paper's point. Values:
`--points` evenly spaced on the range's scale (log for log ranges), plus the centre itself.
Written to <study>/figures/sweep.{png,html} and `sweep.json`, logged to the study's MLflow run.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.record import study as S
from search.record.space import HYPERPARAMETERS, RANGES, hyperparameters
from search.record.tracking import StudyTracker, default_tracking_uri


def sweep_values(centre: dict[str, float], points: int,
                 names: tuple[str, ...] = HYPERPARAMETERS) -> dict[str, list[float]]:
    out = {}
    for k in names:
        r = RANGES[k]
        grid = np.geomspace(r.low, r.high, points) if r.log else np.linspace(r.low, r.high, points)
        out[k] = sorted({round(float(v), 6) for v in grid} | {round(centre[k], 6)})
    return out


def sweep_candidates(centre: dict, mode: str, values: dict[str, list[float]]) -> dict[str, dict]:
    """label -> configuration; the centre is trained once and shared by every sweep."""
    cands = {"centre": {**centre, "mode": mode, "swept": None}}
    for k, vs in values.items():
        for v in vs:
            if not math.isclose(v, round(centre[k], 6)):
                cands[f"{k}={v:.4g}"] = {**centre, k: v, "mode": mode, "swept": k}
    return cands


def summarise(runs: list[dict], cands: dict,
              names: tuple[str, ...] = HYPERPARAMETERS) -> dict[str, list[dict]]:
    """Per hyperparameter: [{value, auc, auc_sd, es_auc, es_auc_sd, n}] ordered by value."""
    out = {k: [] for k in names}
    for label, c in cands.items():
        mine = [r["val"] for r in runs if r["candidate"] == label and r["val"]]
        if not mine:
            continue
        row = {"n": len(mine)}
        for key in ("auc", "es_auc"):
            v = np.array([m[key] for m in mine])
            row[key], row[f"{key}_sd"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        for k in ([c["swept"]] if c["swept"] else names):   # the centre is on every sweep
            out[k].append({**row, "value": c[k]})
    return {k: sorted(v, key=lambda r: r["value"]) for k, v in out.items()}


def plot(summary: dict, centre: dict, out_dir) -> list:
    # matplotlib's backend is chosen when drawing, not on import (a caller's own backend stays)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * max(len(names), 2), 3), sharey=True,
                             squeeze=False)
    axes = axes[0]
    pfig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True)
    for i, (k, ax) in enumerate(zip(names, axes)):
        rows = summary[k]
        x = [r["value"] for r in rows]
        for key, color in (("auc", "tab:blue"), ("es_auc", "tab:orange")):
            y, e = [r[key] for r in rows], [r[f"{key}_sd"] for r in rows]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=color, label=key.upper().replace("_", "-"))
            pfig.add_trace(go.Scatter(x=x, y=y, error_y=dict(array=e), name=key, legendgroup=key,
                                      showlegend=i == 0, line=dict(color=color.removeprefix("tab:"))),
                           row=1, col=i + 1)
        ax.axvline(centre[k], color="grey", ls=":")
        ax.set_xscale("log" if RANGES[k].log else "linear")
        ax.set_xlabel(k)
        if RANGES[k].log:
            pfig.update_xaxes(type="log", row=1, col=i + 1)
    axes[0].set_ylabel("validation (mean ± sd over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    png, html = out_dir / "sweep.png", out_dir / "sweep.html"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    pfig.update_layout(title="One-at-a-time sweeps around the chosen point (dotted: centre)")
    pfig.write_html(html, include_plotlyjs="directory")
    return [png, html]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one-at-a-time sensitivity sweeps around the chosen point")
    ap.add_argument("--results", required=True, help="the study folder (<storage-path>/<name>)")
    ap.add_argument("--points", type=int, default=4, help="values per hyperparameter (plus the centre)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--num-cpus", type=int, default=0, help="embedded Ray (0: this machine's)")
    a = ap.parse_args(argv)
    # the search's runner and the confirmation's grid bring Ray, Optuna and torch (seconds): after
    # the flags are read, so `python -m search sweep --help` and a bad flag answer at once
    from search.decide.confirm import StageStopped, grid_run
    from search.runner import SearchConfig, init_ray

    if a.points < 2 or a.seeds < 1:
        print(f"error: --points {a.points} / --seeds {a.seeds}: give at least 2 points and 1 seed", file=sys.stderr)
        return 2
    st = S.read_study(a.results)
    search = st["search"]
    scfg = SearchConfig(**{k: v for k, v in search.items() if k in SearchConfig.__dataclass_fields__
                           and k not in ("synthetic_sizes", "local", "num_cpus", "resume")},
                       local=True, num_cpus=a.num_cpus)
    names = hyperparameters(scfg.mode)   # the study's method: what its search tuned
    try:
        decision = S.read_json(a.results, S.DECISION_FILE)
        label = decision["confirmation"]["choice"]["label"]
        centre = {k: float(decision["confirmation"]["candidates"][label][k]) for k in names}
    except (OSError, KeyError):
        centre = {k: float(scfg.baseline[k]) for k in names}
    cands = sweep_candidates(centre, scfg.mode, sweep_values(centre, a.points, names))
    tracker = None
    if not scfg.no_tracking:
        uri = scfg.tracking_uri or default_tracking_uri(scfg.results_dir)
        tracker = StudyTracker(uri, scfg.experiment, scfg.study_dir)
        tracker.start_study(tags={}, params={})
    init_ray(scfg)
    try:
        runs = grid_run(scfg, st["setup"], cands, [scfg.seed + 100 + i for i in range(a.seeds)], "sweep", tracker)
    except StageStopped as exc:   # Ctrl-C: no figures from part of the sweep; rerun to continue
        print(f"error: {exc}", file=sys.stderr)
        if tracker is not None:
            tracker.end_study("KILLED")
        return 130
    summary = summarise(runs, cands, names)
    files = plot(summary, centre, S.local_dir(search) / "figures")
    S.write_json(a.results, "sweep.json", {"centre": centre, "summary": summary})
    if tracker is not None:
        for f in files:
            tracker.log_artifact(tracker.parent_run_id, str(f), "figures")
        tracker.end_study("FINISHED")
    for k, rows in summary.items():
        print(f"{k:10s} " + "  ".join(f"{r['value']:.3g}: {r['es_auc']:.3f}±{r['es_auc_sd']:.3f}" for r in rows))
    print(f"figures: {files[0]} and {files[1]}")
    return 0 if all(math.isfinite(r["es_auc"]) for rows in summary.values() for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
