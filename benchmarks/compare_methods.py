"""Method comparison with seed-paired verdicts and the known answer (docs/science.md).

For every seed a FairVision-layout dataset is generated with that seed (its own data AND its own
initialisation), and every method is fitted on it (tiny preset unless --preset paper); the epoch is
chosen on validation ES-AUC and the test split is scored once. Per method and attribute it reports
test AUC, ES-AUC, per-group and worst-group AUC, modality reliance, DPD/DEOdds at the validation
threshold, and the ideal-reader ceiling of the same test split (trainer/data/ideal.py). Differences
to `baseline` are paired by seed: mean and 95% interval of scipy.stats.ttest_rel; the verdict is
"better"/"worse" when the ES-AUC interval excludes 0, else "no detectable difference".

Methods are --mode names, optionally with modalities after '@' ('baseline@slo', 'full@slo+oct').
Beside them: per-modality logistic regression on the downsampled raw pixels the tiny models see
(C chosen on validation AUC) and their late fusion (a logistic fit on the two validation logits).
--tune N first runs, per method, an N-trial search (search service, Ray, local, no MLflow) on a
separate tuning dataset (seed 1000) and then fits every seed at that method's best setting.

--robustness adds, for every fit, the deployment conditions (issue 22, docs/results.md section 5):
each modality removed from every test sample (the fit JSON's test.missing.<m>.removed), and the
test split of a SHIFTED SITE generated for the same seed (`synthesize(..., site="shifted")`:
scanner contrast, noise, resolution and group mix changed; test.shift). --missing SPEC
(e.g. oct=0.3) generates the TRAINING data with that share of samples lacking the modality.
The ceilings are the ideal readers of the same test splits (SLO alone = the no-OCT ceiling);
the logistic baselines are scored on the shifted site's pixels without refitting.

    python benchmarks/compare_methods.py --methods baseline,modality,fairness,full \\
        --seeds 0 1 2 3 4 --epochs 6 --out results/compare
    python benchmarks/compare_methods.py --render results/compare/compare.json [--brief]

--dataset fairvlmed (issue 28) runs the same comparison on generated FairVLMed (SLO + note; the
vision-language modes clip, fairclip, fairclip_aligned, fairclip_dbpm, dualfairvl beside the
fusion modes; fairclip_dbpm_fp1 is DBPM at beta_fp 1, see VARIANTS), `--note-diagnosis` and `--bad-pairs SHARE` passed to the generator, and
`--reference clip` pairing every method with clip instead of baseline. The VL modes' zero-shot
score never reads the note, so their "note missing" figures are their complete-test figures
(trainer/models/clip.py); their "SLO removed" block is left out (an image-free CLIP has no score).

    python benchmarks/compare_methods.py --dataset fairvlmed --note-diagnosis --reference clip \\
        --methods clip,fairclip,fairclip_aligned,fairclip_dbpm,fairclip_dbpm_fp1,dualfairvl,baseline,full \\
        --robustness --no-logreg --seeds 0 1 2 3 4 --attributes gender race --epochs 6 \\
        --n-train 320 --n-val 120 --n-test 240 [--bad-pairs 0.1] --out results/compare-vl
(docs/results.md section 7: 80 fits, about 6 minutes on 2 free cores)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import stats

from trainer.config import ATTRIBUTES, make_config
from trainer.data.ideal import ceiling
from trainer.data.synthetic import synthesize
from trainer.jsonout import dumps
from trainer.metrics import worst_group_auc

TUNING_SEED = 1000
# method names that are a mode with settings of its own: name -> (mode, --set overrides)
VARIANTS = {"fairclip_aligned": ("fairclip", ["fairclip_variant=aligned"]),
            # DBPM at the faulty-pair threshold its recovery was measured at (docs/methods.md)
            "fairclip_dbpm_fp1": ("fairclip_dbpm", ["dbpm_beta_fp=1"])}
SHIFT_SEED = 5000   # the shifted site's patients: seed + SHIFT_SEED


# -- one fit -------------------------------------------------------------------------------
def _shift_root(args, root) -> str:
    return str(Path(str(root) + "-shifted")) if getattr(args, "robustness", False) else ""


def _config(args, root, attribute, method, seed, sets=()):
    mode, _, mods = method.partition("@")
    mode, own = VARIANTS.get(mode, (mode, []))
    shift = [f"shift_root={_shift_root(args, root)}"] if _shift_root(args, root) else []
    sets = own + list(sets) + shift
    return make_config(_dataset(args), attribute, preset=args.preset, data_root=str(root),
                       mode=mode, seed=seed, epochs=args.epochs, bootstrap=0,
                       modalities=mods.replace("+", ",") or None,
                       cache_dir=str(Path(args.out) / "cache"), sets=list(args.set) + list(sets))


def _dataset(args) -> str:
    return getattr(args, "dataset", "fairvision")


def _is_vl(method: str) -> bool:
    """A vision-language mode (its model is not the fusion model)."""
    from trainer.methods import method_class

    mode = VARIANTS.get(method.partition("@")[0], (method.partition("@")[0],))[0]
    return method_class(mode).family != "fusion"


def _fit_job(job: dict) -> dict:
    """Runs in a worker process: one fit, its test metrics flattened into a row."""
    import torch

    from trainer.loop import fit

    torch.set_num_threads(job["threads"])
    row = {k: job[k] for k in ("seed", "attribute", "method")}
    t0 = time.perf_counter()
    try:
        res = fit(_config(job["args"], job["root"], job["attribute"], job["method"], job["seed"],
                          job["sets"]), progress=False)
    except (ValueError, FloatingPointError) as exc:   # e.g. a mode this build does not have
        return {**row, "error": str(exc).splitlines()[0]}
    test = res["test"]["point"]
    row.update(seconds=time.perf_counter() - t0, epochs=job["args"].epochs,
               best_epoch=res["best_epoch"], **_metrics_row(test))
    row.update({f"reliance/{m}": d["auc"] for m, d in test["reliance"].items()})
    row.update(_robust_row(_vl_missing(res["test"]) if _is_vl(job["method"]) else res["test"]))
    row.update(_vl_extras(res["test"]))
    return row


def _vl_missing(test: dict) -> dict:
    """A VL fit's robustness blocks with "note missing" = its complete-test metrics (the zero-shot
    score reads the image only; clip's fit JSON says so itself, dualfairvl trains without notes)
    and no "SLO removed" (an image-free CLIP has no score: the trainer reports it null)."""
    note = (test.get("missing") or {}).get("note") or {"removed": test["point"]}
    return {**test, "missing": {"note": note}}


def _vl_extras(test: dict) -> dict:
    """The linear probe's test AUC / ES-AUC and DBPM's recovery of the planted pairs, if any."""
    row = {}
    probe = (test.get("linear_probe") or {}).get("test")
    if probe:
        row.update({"probe/auc": probe["auc"], "probe/es_auc": probe["es_auc"]})
    bad = test.get("bad_pairs") or {}
    row.update({f"bad_pairs/{k}": bad[k] for k in ("precision", "recall", "n_flagged")
                if bad.get(k) is not None})
    return row


def _robust_row(test: dict) -> dict:
    """Each deployment condition's test figures, suffixed: `es_auc@no_oct`, `auc@shift`, ..."""
    row = {}
    for m, d in (test.get("missing") or {}).items():
        row.update({f"{k}@no_{m}": v for k, v in _metrics_row(d["removed"]).items()})
    if test.get("shift"):
        row.update({f"{k}@shift": v for k, v in _metrics_row(test["shift"]).items()})
    return row


def _metrics_row(m: dict) -> dict:
    gauc = {g: a for g, a in m["group_auc"].items()}
    row = {"auc": m["auc"], "es_auc": m["es_auc"], "worst_auc": worst_group_auc(gauc)}
    row.update({f"auc/{g}": a for g, a in gauc.items()})
    for k in ("dpd_at_val_threshold", "deodds_at_val_threshold"):
        if k in m:
            row[k] = m[k]
    return row


# -- the statistician's first models ------------------------------------------------------
def _pixels(cfg) -> dict:
    """{split: (features {slo, oct}, y, g)}: the tiny preset's 32 px inputs, OCT slice-averaged;
    with cfg.shift_root also "shift": the shifted site's test split."""
    from trainer.data import build_datasets

    out = {}
    splits = build_datasets(cfg.replace(shift_root=""))
    if getattr(cfg, "shift_root", ""):
        splits["shift"] = build_datasets(cfg.replace(data_root=cfg.shift_root,
                                                     shift_root=""))["test"]
    for split, ds in splits.items():
        b = ds.get_batch(np.arange(len(ds)))
        feats = {"slo": b["slo"].float().flatten(1).numpy(),
                 "oct": b["oct"].float().mean(1).flatten(1).numpy()}
        out[split] = (feats, b["label"].numpy(), b["group"].numpy())
    return out


def _logreg(train, val, test, shift=None):
    """Logistic regression, C chosen on validation AUC; returns (val logits, test logits[,
    shifted-site test logits: the same model, not refitted]).

    Pixels are divided by ONE scalar (the training pixels' std), not standardised per pixel:
    per-pixel scaling blows the background noise up to the weight of the small optic cup
    (seed 0: SLO test AUC 0.62 standardised, 0.81 scaled globally; the ideal is 0.83)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    scale = float(train[0].std()) or 1.0
    (xtr, ytr), (xv, yv), (xt, _) = ((x / scale, y) for x, y in (train, val, test))
    best = None
    for c in np.logspace(-3, 2, 6):
        model = LogisticRegression(C=c, max_iter=1000).fit(xtr, ytr)
        auc = roc_auc_score(yv, model.decision_function(xv))
        if best is None or auc > best[0]:
            best = (auc, model)
    out = (best[1].decision_function(xv), best[1].decision_function(xt))
    return out if shift is None else out + (best[1].decision_function(shift[0] / scale),)


_LOGITS: dict = {}


def logreg_rows(args, root, attribute, seed) -> list[dict]:
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression

    from trainer.metrics import at_val_threshold, evaluate_fairness

    data = _pixels(_config(args, root, attribute, "baseline", seed))
    (_, yv, gv), (_, yt, gt) = data["val"], data["test"]
    shift = data.get("shift")
    key = (str(root), len(yv), len(yt))     # same rows for another attribute: reuse the fits
    if key not in _LOGITS:
        _LOGITS[key] = {m: _logreg(*[(data[s][0][m], data[s][1]) for s in ("train", "val", "test")],
                                   shift=None if shift is None else (shift[0][m], shift[1]))
                        for m in ("slo", "oct")}
    logits = dict(_LOGITS[key])
    stack = LogisticRegression().fit(np.column_stack([logits[m][0] for m in logits]), yv)
    logits["late fusion"] = tuple(
        stack.decision_function(np.column_stack([v[i] for v in logits.values()]))
        for i in range(len(logits["slo"])))
    rows, names = [], ATTRIBUTES[attribute]
    for name, (zv, zt, *zs) in logits.items():
        pv, pt = expit(zv), expit(zt)
        thr = at_val_threshold(yv, pv, gv, None, names)["threshold_val"]
        m = {**evaluate_fairness(yt, pt, gt, group_names=names),
             **at_val_threshold(yt, pt, gt, thr, names)}
        row = {"seed": seed, "attribute": attribute, "method": f"logreg {name}", **_metrics_row(m)}
        if zs and name in ("slo", "oct"):   # a one-modality model loses nothing without the other
            row.update({f"{k}@no_{'oct' if name == 'slo' else 'slo'}": v
                        for k, v in _metrics_row(m).items()})
        if zs:
            ps = expit(zs[0])
            row.update({f"{k}@shift": v for k, v in _metrics_row(
                {**evaluate_fairness(shift[1], ps, shift[2], group_names=names),
                 **at_val_threshold(shift[1], ps, shift[2], thr, names)}).items()})
        rows.append(row)
    return rows


def ceiling_rows(root, attribute, seed, shift_root: str = "") -> list[dict]:
    """The ideal readers of the test split (and of the shifted site's, as `<metric>@shift`)."""
    result = ceiling(root, attribute, "test")
    shifted = ceiling(shift_root, attribute, "test")["readers"] if shift_root else {}
    rows = []
    for name, m in result["readers"].items():
        row = {"seed": seed, "attribute": attribute, "method": f"ideal {name}", **_metrics_row(m)}
        if name in shifted:
            row.update({f"{k}@shift": v for k, v in _metrics_row(shifted[name]).items()})
        rows.append(row)
    if shift_root:      # a reader of the modalities left is the ceiling with one removed
        by = {r["method"]: r for r in rows}
        mods = [m for m in result["readers"] if m != "all"]
        for left, gone in ((a, b) for a in mods for b in mods if a != b):
            if f"ideal {left}" in by:
                for name in (f"ideal {left}", "ideal all"):
                    by[name].update({f"{k}@no_{gone}": by[f"ideal {left}"][k]
                                     for k in _metrics_row(result["readers"][left])})
    return rows


# -- tuning --------------------------------------------------------------------------------
def tuned_sets(args, method: str, attribute: str) -> list[str]:
    """Best setting of an args.tune-trial search on the tuning dataset, as --set overrides."""
    from search.runner import SearchConfig, run_search

    mode, _, mods = method.partition("@")
    root = Path(args.out) / f"data-seed{TUNING_SEED}"
    sets = list(args.set) + ([f"modalities={mods.replace('+', ',')}"] if mods else [])
    name = f"{method.replace('@', '_').replace('+', '_')}-{attribute}"
    storage = Path(args.out) / "search"
    # a search this output folder already holds (an earlier, interrupted run of this command)
    # is resumed: finished, it returns its trials at once; cut off, it runs the rest
    scfg = SearchConfig(_dataset(args), attribute, mode=mode, preset=args.preset,
                        data_root=str(root), sets=sets, num_samples=args.tune,
                        max_epochs=args.epochs, grace_period=1, local=True,
                        num_cpus=args.workers, no_tracking=True, verbose=0,
                        storage_path=str(storage), seed=TUNING_SEED, name=name,
                        final_test=False, log_best_model=False,
                        resume=(storage / name / "study.json").is_file(),
                        finalists=0, figures=False)
    outcome = run_search(scfg)
    best = (outcome.best or {}).get("config", {})
    return [f"{k}={v}" for k, v in best.items()]


# -- statistics and the table ----------------------------------------------------------------
def paired(rows, attribute, method, key, ref="baseline"):
    """(mean difference, 95% low, high, n) of method - ref over the seeds both have."""
    a = {r["seed"]: r[key] for r in rows if r["attribute"] == attribute and r["method"] == method
         and key in r}
    b = {r["seed"]: r[key] for r in rows if r["attribute"] == attribute and r["method"] == ref
         and key in r}
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return (np.nan, np.nan, np.nan, len(seeds))
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    if np.allclose(x, y):
        return (0.0, 0.0, 0.0, len(seeds))
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    return (float(np.mean(x - y)), float(ci.low), float(ci.high), len(seeds))


def gap_closed(rows, attribute, method):
    """(method's worst-group AUC - OCT-ideal's) / (joint-ideal's - OCT-ideal's), each a mean
    over the seeds that have all three (a ratio of means: per-seed denominators of 2-6 points
    make per-seed ratios explode)."""
    def by(m):
        return {r["seed"]: r["worst_auc"] for r in rows
                if r["attribute"] == attribute and r["method"] == m and "worst_auc" in r}
    got, oct_, all_ = by(method), by("ideal oct"), by("ideal all")
    seeds = [s for s in got if s in oct_ and s in all_]
    if not seeds:
        return np.nan
    mean = lambda d: float(np.mean([d[s] for s in seeds]))  # noqa: E731
    gap = mean(all_) - mean(oct_)
    return (mean(got) - mean(oct_)) / gap if gap > 0 else np.nan


def verdict(d) -> str:
    mean, low, high, n = d
    if n < 2 or np.isnan(low):
        return "too few seeds"
    return "better" if low > 0 else "worse" if high < 0 else "no detectable difference"


def verdict_lines(rows, attribute, methods, ref="baseline", auc=False) -> list[str]:
    """One line per method: its paired ES-AUC verdict against `ref`, worst-group AUC, (with `auc`)
    the AUC difference and its verdict, and the share of the ideal gap it closes."""
    out = []
    for method in methods:
        if method == ref or method.startswith("ideal") or not any(
                r["method"] == method and r["attribute"] == attribute for r in rows):
            continue
        d_es, d_w, d_a = (paired(rows, attribute, method, k, ref)
                          for k in ("es_auc", "worst_auc", "auc"))
        if np.isnan(d_es[0]):
            continue
        out.append(f"- {method} ({attribute}): {verdict(d_es)} than {ref} in ES-AUC "
                   f"({100 * d_es[0]:+.1f} [{100 * d_es[1]:+.1f}, {100 * d_es[2]:+.1f}], n={d_es[3]}); "
                   f"worst-group AUC {100 * d_w[0]:+.1f} [{100 * d_w[1]:+.1f}, {100 * d_w[2]:+.1f}]; "
                   + (f"AUC {100 * d_a[0]:+.1f} [{100 * d_a[1]:+.1f}, {100 * d_a[2]:+.1f}] "
                      f"({verdict(d_a)}); " if auc else "")
                   + ("" if np.isnan(gap_closed(rows, attribute, method)) else
                      f"closes {gap_closed(rows, attribute, method):.2f} of the OCT-to-fused "
                      f"ideal gap on the worst group"))
    return [line.rstrip("; ").replace("no detectable difference than",
                                      "no detectable difference from") for line in out]


def mean_std(values, scale=100) -> str:
    """Mean ± std over seeds, std with ddof=1 (the sample std: ddof=0 reads about 11% small at
    n = 5); one seed: the mean alone; NaN entries (an undefined figure) left out."""
    v = np.array(values, dtype=float) * scale
    v = v[~np.isnan(v)]
    if not len(v):
        return ""
    return f"{v.mean():.1f}" if len(v) < 2 else f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


BRIEF = ("method", "AUC", "ES-AUC", "worst AUC", "reliance oct", "reliance slo",
         "Δ ES-AUC [95% CI]", "Δ worst AUC [95% CI]", "gap closed", "verdict", "chosen setting")


def table(rows, attribute, methods, columns=None, settings=None, ref="baseline") -> str:
    """Markdown table, one row per method; `columns` keeps those headers only (in table order);
    `settings` ({method: ["key=value", ...]}, a tuned run's choices) adds "chosen setting"."""
    groups = list(ATTRIBUTES[attribute].values())
    mods = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("reliance/")})
    head = (["method", "AUC", "ES-AUC"] + [f"AUC {g}" for g in groups] + ["worst AUC"]
            + [f"reliance {m}" for m in mods] + ["DPD@thr", "DEOdds@thr", "Δ ES-AUC [95% CI]",
                                                 "Δ worst AUC [95% CI]", "gap closed", "verdict", "s/fit"]
            + (["chosen setting"] if settings else []))
    keep = [i for i, h in enumerate(head) if columns is None or h in columns]
    lines = ["| " + " | ".join(head[i] for i in keep) + " |", "|---" * len(keep) + "|"]
    for method in methods:
        sel = [r for r in rows if r["attribute"] == attribute and r["method"] == method
               and "auc" in r]
        if not sel:
            continue
        def cell(k, scale=100):
            return mean_std([r.get(k, np.nan) for r in sel], scale)
        d_es, d_w = (paired(rows, attribute, method, k, ref) for k in ("es_auc", "worst_auc"))
        is_ref = method == ref or method.startswith("ideal")
        fmt = lambda d: ("" if is_ref or np.isnan(d[0])  # noqa: E731
                         else f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]")
        gap = gap_closed(rows, attribute, method)
        cells = ([method, cell("auc"), cell("es_auc")] + [cell(f"auc/{g}") for g in groups]
                 + [cell("worst_auc")] + [cell(f"reliance/{m}") for m in mods]
                 + [cell("dpd_at_val_threshold"), cell("deodds_at_val_threshold"), fmt(d_es),
                    fmt(d_w), "" if method.startswith("ideal") or np.isnan(gap) else f"{gap:.2f}",
                    "" if is_ref else verdict(d_es), cell("seconds", 1)]
                 + ([_setting(settings.get(method, []))] if settings else []))
        lines.append("| " + " | ".join(cells[i] for i in keep) + " |")
    return "\n".join(lines)


def conditions(rows) -> list[str]:
    """The deployment conditions the rows hold: "no_<m>" per modality, then "shift"."""
    found = {k.split("@", 1)[1] for r in rows for k in r if k.startswith("es_auc@")}
    return sorted(c for c in found if c.startswith("no_")) + (["shift"] if "shift" in found else [])


def degrade(rows, attribute, method, condition, key="es_auc"):
    """(mean, low, high, n) of the method's own change from the complete same-site test to the
    condition, paired by seed (negative = it degrades)."""
    pairs = [(r[f"{key}@{condition}"], r[key]) for r in rows
             if r["attribute"] == attribute and r["method"] == method
             and f"{key}@{condition}" in r and key in r]
    if len(pairs) < 2:
        return (np.nan, np.nan, np.nan, len(pairs))
    x, y = np.array(pairs, dtype=float).T
    if np.allclose(x, y):
        return (0.0, 0.0, 0.0, len(pairs))
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    return (float(np.mean(x - y)), float(ci.low), float(ci.high), len(pairs))


def robustness(rows, attribute, methods, ref="baseline") -> list[str]:
    """The robustness table: ES-AUC per condition (mean ± std), each method's paired change from
    its complete-data ES-AUC, and the paired difference to `ref` in the same condition."""
    conds = conditions(rows)
    label = {c: "shifted site" if c == "shift" else f"{c[3:].upper()} missing" for c in conds}
    head = (["method", "ES-AUC complete"] + [f"ES-AUC {label[c]}" for c in conds]
            + [f"change {label[c]} [95% CI]" for c in conds]
            + [f"Δ vs {ref} {label[c]} [95% CI]" for c in conds])
    lines = [f"### {attribute}: deployment conditions (robustness)", "",
             "ES-AUC in percent, mean ± std over seeds; change = paired (same seed) ES-AUC in the "
             f"condition minus on the complete same-site test; Δ = paired difference to {ref} "
             "in the same condition; ideal readers: the Bayes ceiling of each test split (no SLO "
             "or no OCT: the other modality's reader).", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    fmt = lambda d: "" if np.isnan(d[0]) else f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"  # noqa: E731
    for method in methods:
        sel = [r for r in rows if r["attribute"] == attribute and r["method"] == method and "auc" in r]
        if not sel:
            continue
        is_ref = method == ref or method.startswith("ideal")
        cells = [method, mean_std([r.get("es_auc", np.nan) for r in sel])]
        cells += [mean_std([r.get(f"es_auc@{c}", np.nan) for r in sel]) for c in conds]
        cells += [fmt(degrade(rows, attribute, method, c)) for c in conds]
        cells += ["" if is_ref else fmt(paired(rows, attribute, method, f"es_auc@{c}", ref))
                  for c in conds]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for method in methods:
        if method == ref or method.startswith(("ideal", "logreg")):
            continue
        for c in conds:
            d = paired(rows, attribute, method, f"es_auc@{c}", ref)
            if not np.isnan(d[0]):
                lines.append(f"- {method} ({attribute}, {label[c]}): {verdict(d)} than {ref} "
                             f"({fmt(d)}, n={d[3]})".replace("no detectable difference than",
                                                             "no detectable difference from"))
    return lines + [""]


def extra_lines(rows, attribute, methods) -> list[str]:
    """The VL modes' linear probe (test AUC, ES-AUC) and DBPM's recovery of planted pairs."""
    out = []
    for method in methods:
        sel = [r for r in rows if r["attribute"] == attribute and r["method"] == method]
        if any("probe/auc" in r for r in sel):
            out.append(f"- {method} ({attribute}) linear probe on frozen image features: AUC "
                       f"{mean_std([r.get('probe/auc', np.nan) for r in sel])}, ES-AUC "
                       f"{mean_std([r.get('probe/es_auc', np.nan) for r in sel])}")
        if any("bad_pairs/recall" in r for r in sel):
            out.append(f"- {method} ({attribute}) planted bad pairs found: precision "
                       f"{mean_std([r.get('bad_pairs/precision', np.nan) for r in sel])}, recall "
                       f"{mean_std([r.get('bad_pairs/recall', np.nan) for r in sel])}")
    return out


def _setting(sets: list[str]) -> str:
    """"key=value, ..." with 3 significant digits, as the docs print a tuned method's choice."""
    out = []
    for s in sets:
        key, _, value = s.partition("=")
        try:
            value = f"{float(value):.3g}"
        except ValueError:
            pass
        out.append(f"{key}={value}")
    return ", ".join(out)


# -- main -----------------------------------------------------------------------------------
def run(args) -> list[dict]:
    seeds = list(args.seeds) + ([TUNING_SEED] if args.tune else [])
    for seed in seeds:
        root = Path(args.out) / f"data-seed{seed}"
        extra = _generator_options(args)
        if not (root / "ideal_reader.csv").is_file():
            synthesize(_dataset(args), root, n_train=args.n_train, n_val=args.n_val,
                       n_test=args.n_test, seed=seed, **extra)
        shifted = _shift_root(args, root)
        if shifted and not (Path(shifted) / "ideal_reader.csv").is_file():
            # the other site: its own patients (another seed), same sizes, shifted acquisition
            synthesize(_dataset(args), shifted, n_train=args.n_train, n_val=args.n_val,
                       n_test=args.n_test, seed=seed + SHIFT_SEED, site="shifted",
                       **{k: v for k, v in extra.items() if k == "note_diagnosis"})
    rows = []
    for seed in args.seeds:
        root = Path(args.out) / f"data-seed{seed}"
        for attribute in args.attributes:
            rows += ceiling_rows(root, attribute, seed, _shift_root(args, root))
            if not args.no_logreg:
                rows += logreg_rows(args, root, attribute, seed)
    sets, tune_s = {}, {}
    for m in args.methods:
        for a in args.attributes:
            t0 = time.perf_counter()
            sets[(m, a)] = tuned_sets(args, m, a) if args.tune else []
            tune_s[f"{m}|{a}"] = time.perf_counter() - t0
    args.tune_seconds = tune_s if args.tune else {}
    jobs = [dict(args=args, root=str(Path(args.out) / f"data-seed{s}"), seed=s, attribute=a,
                 method=m, sets=sets[(m, a)], threads=1 if args.workers > 1 else os.cpu_count())
            for s in args.seeds for a in args.attributes for m in args.methods]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for row in pool.map(_fit_job, jobs):
            print(dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows, sets


def _generator_options(args) -> dict:
    """synthesize()'s options from the arguments, only those set (the default data unchanged)."""
    out = {"missing": getattr(args, "missing", None),
           "note_diagnosis": getattr(args, "note_diagnosis", False),
           "bad_pairs": getattr(args, "bad_pairs", 0.0)}
    return {k: v for k, v in out.items() if v}


def _missing_spec(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(",")):
        m, _, rate = part.partition("=")
        try:
            out[m.strip()] = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--missing {text!r}: expected M=RATE, e.g. oct=0.3")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", default="baseline,modality,fairness,full",
                   help="comma list of --mode names, optionally NAME@slo+oct (modalities)")
    p.add_argument("--modalities", default="",
                   help="comma list: also run baseline on each single modality (baseline@slo ...)")
    p.add_argument("--dataset", default="fairvision", choices=("fairvision", "fairvlmed"),
                   help="the generated layout (fairvlmed: SLO + note, the VL modes)")
    p.add_argument("--reference", default="baseline",
                   help="the method every other is paired with (must be in --methods)")
    p.add_argument("--note-diagnosis", action="store_true",
                   help="generator: texts name the diagnosis, group-linked (fairvlmed)")
    p.add_argument("--bad-pairs", type=float, default=0.0,
                   help="generator: share of training notes replaced by another patient's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--attributes", nargs="+", default=["race", "gender"])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--n-train", type=int, default=480)
    p.add_argument("--n-val", type=int, default=160)
    p.add_argument("--n-test", type=int, default=320)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", action="append", default=[], help="trainer KEY=VALUE for every fit")
    p.add_argument("--tune", type=int, default=0,
                   help="trials of a per-method search on the tuning dataset (0: fixed settings)")
    p.add_argument("--workers", type=int, default=2, help="fits in parallel (processes)")
    p.add_argument("--no-logreg", action="store_true")
    p.add_argument("--robustness", action="store_true",
                   help="also score each fit with every modality removed and on a shifted site")
    p.add_argument("--missing", type=_missing_spec, default=None, metavar="M=RATE[,M=RATE]",
                   help="training data with that share of samples lacking the modality")
    p.add_argument("--out", default="results/compare")
    p.add_argument("--render", metavar="JSON",
                   help="only print the report of an earlier run's compare.json (no training)")
    p.add_argument("--brief", action="store_true",
                   help="with --render: the docs' columns and each tuned method's setting")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.methods += [f"baseline@{m}" for m in args.modalities.split(",") if m]
    if args.reference not in args.methods:
        p.error(f"--methods must include {args.reference} (the paired reference, --reference)")
    if args.render:
        print(report(json.loads(Path(args.render).read_text()), brief=args.brief))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, sets = run(args)
    data = {"args": {k: v for k, v in vars(args).items()},
            "tuned_sets": {f"{m}|{a}": s for (m, a), s in sets.items()},
            "rows": rows, "total_seconds": time.perf_counter() - t0}
    text = report(data)
    print(text)
    (Path(args.out) / "compare.md").write_text(text + "\n")
    (Path(args.out) / "compare.json").write_text(dumps(data, indent=1))
    return 0


def report(data: dict, brief: bool = False) -> str:
    """The Markdown report of one run, from what its compare.json holds (so a committed result
    re-renders without training: --render). brief: the columns the docs show, plus each tuned
    method's chosen setting."""
    args, rows = data["args"], data["rows"]
    seeds, tune, ref = args["seeds"], args.get("tune", 0), args.get("reference", "baseline")
    vl = args.get("dataset", "fairvision") != "fairvision"    # a FairVLMed run (issue 28)
    order = (["ideal oct", "ideal slo", "ideal note", "ideal all"] + args["methods"]
             + ["logreg slo", "logreg oct", "logreg late fusion"])
    out = [f"# Method comparison ({len(seeds)} seeds: {seeds}; "
           f"{args['n_train']}/{args['n_val']}/{args['n_test']}; preset {args['preset']}; "
           f"{args['epochs']} epochs{'; tuned: ' + str(tune) + ' trials' if tune else ''}"
           f"{'; ' + args['dataset'] if vl else ''}"
           f"{'; bad pairs ' + str(args['bad_pairs']) if args.get('bad_pairs') else ''})",
           "Percent, mean ± std over seeds (sample std, ddof=1); Δ = paired (same seed) difference "
           f"to {ref} with 95% t interval; reliance = drop in test AUC with that modality "
           "permuted; DPD/DEOdds at the validation-prevalence threshold.", ""]
    for attribute in args["attributes"]:
        settings = ({k.split("|")[0]: v for k, v in data.get("tuned_sets", {}).items()
                     if k.endswith(f"|{attribute}")} if brief and tune else None)
        out += [f"## {attribute}", "", table(rows, attribute, order, BRIEF if brief else None,
                                             settings, ref), ""]
        if not brief:
            out += [*verdict_lines(rows, attribute, order, ref, auc=vl),
                    *extra_lines(rows, attribute, order), ""]
        if any("es_auc@shift" in r or any(k.startswith("es_auc@no_") for k in r) for r in rows):
            out += robustness(rows, attribute, order, ref)
    if brief:
        return "\n".join(out).rstrip()
    errors = sorted({f"{r['method']}: {r['error']}" for r in rows if "error" in r})
    out += [f"- not run: {e}" for e in errors]
    out += [f"- search ({tune} trials) {k}: {v:.0f} s"
            for k, v in (args.get("tune_seconds") or {}).items()]
    if "total_seconds" in data:
        out.append(f"total wall time {data['total_seconds']:.0f} s")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
