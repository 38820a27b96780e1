"""Sensitivity figures from the search's own trials (optuna.visualization and its matplotlib
variants): PNG for the MLflow UI and the report, interactive HTML for the results folder.

Which values: ASHA stops most trials early and Ray tells Optuna their LAST (early) value, so the
figures rebuild an Optuna study (create_trial) with values that compare:
- sensitivity (slices, importances, parallel coordinates, contour): every trial's validation AUC
  and ES-AUC at ONE common epoch that every non-failed trial reached (the ASHA grace period);
- Pareto front: trials that trained every epoch, at their best validation epoch, over the
  study's own objectives (decision.json's `front_keys`: --objectives for pareto, else AUC and
  ES-AUC), so the figure's front is decision.json's front.
The study rebuild (over the mode's own hyperparameters) and the importances are search.record.analysis's,
the same as `python -m search.record.analysis` prints. The HTML files share one plotly.min.js in the same
folder (include_plotlyjs="directory"): they open offline (a hospital network) without 4.7 MB per
figure.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna

from search.record.analysis import importances, rebuild_study   # the one rebuild and importances

OBJ = ("auc", "es_auc")


def common_epoch_points(trials: list[dict], epoch: int):
    return [(t, t["curve"][epoch]) for t in trials
            if t["status"] != "FAILED" and epoch in t["curve"]
            and all(math.isfinite(v) for v in t["curve"][epoch])]


def axis_name(key: str) -> str:
    """A validation figure's axis name: `auc` -> "val AUC", `val/missing/oct/es_auc` -> "val
    ES-AUC, oct missing"."""
    parts = key.removeprefix("val/").split("/")
    metric = parts[-1].upper().replace("_", "-")
    return f"val {metric}" + (f", {parts[1]} {parts[0]}" if len(parts) == 3 else "")


def front_study(full: list[dict], keys=OBJ, mode: str = "full"):
    """The Optuna study the front figure draws: each full-length trial at its best epoch over
    `keys`. A trial with an undefined value (NaN: a group without both classes) cannot be drawn:
    it is left out, and it dominates nothing in the decision's front either (select.value: -inf),
    so the figure's front is decision.json's front less those trials."""
    points = [(t, tuple(t["val"].get(k) for k in keys)) for t in full]
    points = [(t, v) for t, v in points if all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)]
    return rebuild_study(points, mode)


def _save(name: str, plotly_fig, mpl_axes, out: Path, written: list[Path]) -> None:
    html = out / f"{name}.html"
    plotly_fig.write_html(html, include_plotlyjs="directory")
    ax = mpl_axes.flat[0] if hasattr(mpl_axes, "flat") else mpl_axes
    png = out / f"{name}.png"
    ax.figure.savefig(png, dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt   # late: see search_figures

    plt.close(ax.figure)
    written += [png, html]


def search_figures(trials: list[dict], full: list[dict], epoch: int, out: Path, mode: str = "full",
                   keys=OBJ) -> dict:
    """Write the figures (the front over `keys`: 2 or 3 objectives can be drawn); returns
    {"files": [...], "importance": {...}, "epoch": epoch}."""
    # matplotlib's backend is chosen when drawing, not when this module is imported (a caller's
    # own backend, e.g. a notebook's, stays), and before optuna's figures load pyplot
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization as pv
    import optuna.visualization.matplotlib as pm

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    result = {"epoch": epoch, "files": written, "importance": {}}
    # the matplotlib variants are marked experimental; the warning says nothing about the figure
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # PED-ANOVA warns whenever a target is given; ours is negated on purpose (see importances)
    warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    front = front_study(full, keys, mode)
    if front.trials and 2 <= len(keys) <= 3:
        names = [f"{axis_name(k)} (best epoch)" for k in keys]
        _save("pareto_front", pv.plot_pareto_front(front, target_names=names),
              pm.plot_pareto_front(front, target_names=names), out, written)
    elif len(keys) > 3:
        result["front_note"] = f"{len(keys)} objectives: a front figure draws 2 or 3 (decision.json lists it)"
    points = common_epoch_points(trials, epoch)
    if len(points) < 2:
        return result
    study = rebuild_study(points, mode)
    for i, key in enumerate(OBJ):
        label = f"val {key.upper().replace('_', '-')} at epoch {epoch}"
        target = lambda t, i=i: t.values[i]   # noqa: E731
        _save(f"slice_{key}", pv.plot_slice(study, target=target, target_name=label),
              pm.plot_slice(study, target=target, target_name=label), out, written)
        result["importance"][key] = importances(study, i)
    label = f"val ES-AUC at epoch {epoch}"
    target = lambda t: t.values[1]   # noqa: E731
    _save("parallel_coordinate", pv.plot_parallel_coordinate(study, target=target, target_name=label),
          pm.plot_parallel_coordinate(study, target=target, target_name=label), out, written)
    fanova = result["importance"]["es_auc"]["fanova"]
    if isinstance(fanova, dict) and len(points) >= 3:
        if len(fanova) >= 2:   # a contour needs two hyperparameters (OGM-GE searches one)
            top = sorted(fanova, key=fanova.get, reverse=True)[:2]
            _save("contour_top2", pv.plot_contour(study, params=top, target=target, target_name=label),
                  pm.plot_contour(study, params=top, target=target, target_name=label), out, written)
        ev = optuna.importance.FanovaImportanceEvaluator(seed=0)
        _save("importance_es_auc", pv.plot_param_importances(study, evaluator=ev, target=target, target_name=label),
              pm.plot_param_importances(study, evaluator=ev, target=target, target_name=label), out, written)
    return result
