"""How often the deployment decision deploys a candidate that is not better (A/A), and how often
it deploys one that is (power), by simulation with this project's own run-to-run noise.

Noise: the seed-to-seed sd of ES-AUC per method and the correlation between methods within a
seed, measured on the committed comparisons (benchmarks/results/compare-*.json: 5 seeds each,
test ES-AUC; the confirmation reads validation ES-AUC, whose seed noise on a split of the same
size is of the same kind). Each simulated decision draws `repeats` seeds of plain fusion and K
MultiFair candidates from a multivariate normal (or a t with 4 df, same sds) with those sds and
correlation, applies the rule (search.decide.rule.core, the code the search runs) and the old
rule (best candidate mean above plain fusion's mean: search.decide.rule.old_rule).

The within-seed correlation decides the power (the sd of a paired difference is
sqrt(sd_b^2 + sd_c^2 - 2 rho sd_b sd_c)), and the committed comparisons' per-file values run from
0.30 to 0.99 around their median: the power table is also given over rho = 0.3 .. 0.95 (plain
fusion-MultiFair and MultiFair-MultiFair both rho, the sds measured). A study prints its own
within-seed correlation (search/record/summary.py) to read this table at. A detectable gain above
1 - plain fusion's ES-AUC (median over the comparisons) cannot happen and is written as such.

    python benchmarks/decision_error.py [--draws 20000] [--seed 0] [--json benchmarks/results/decision-error.json]

Not a timed test: it prints figures (tests/search/decide/test_decision_error.py runs `simulate` with
few draws and checks the A/A rates can be told apart).
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.decide.rule import core, holm, min_detectable, old_rule, one_sided_p  # noqa: E402

MULTIFAIR = ("full", "modality", "fairness", "full_reference")
BASELINE = "baseline"


def measured_noise(files: list[str]) -> dict:
    """Per comparison file: sd over seeds of ES-AUC for plain fusion and each MultiFair mode,
    and the within-seed correlation between methods (plain fusion - MultiFair and MultiFair -
    MultiFair pairs); medians over files are the simulation's inputs."""
    per_file, sd_base, sd_cand, rho_bc, rho_cc, level = {}, [], [], [], [], []
    for f in files:
        rows = json.loads(Path(f).read_text())["rows"]
        series = {}
        for r in rows:
            if r["method"] in (BASELINE, *MULTIFAIR) and isinstance(r.get("es_auc"), (int, float)):
                series.setdefault(r["method"], {})[r["seed"]] = r["es_auc"]
        seeds = sorted(set.intersection(*(set(v) for v in series.values())))
        x = {m: np.array([series[m][s] for s in seeds]) for m in series}
        sds = {m: float(v.std(ddof=1)) for m, v in x.items()}
        corr = lambda a, b: float(np.corrcoef(x[a], x[b])[0, 1])   # noqa: E731
        bc = [corr(BASELINE, m) for m in MULTIFAIR if m in x]
        cc = [corr(a, b) for i, a in enumerate(MULTIFAIR) for b in MULTIFAIR[i + 1:] if a in x and b in x]
        per_file[Path(f).name] = {"seeds": len(seeds), "sd": sds, "rho_baseline_multifair": bc,
                                  "rho_multifair_multifair": cc}
        sd_base.append(sds[BASELINE])
        level.append(float(x[BASELINE].mean()))
        sd_cand += [sds[m] for m in MULTIFAIR if m in sds]
        rho_bc += bc
        rho_cc += cc
    return {"files": per_file, "sd_baseline": float(np.median(sd_base)),
            "sd_candidate": float(np.median(sd_cand)), "rho_baseline_candidate": float(np.median(rho_bc)),
            "rho_candidate_candidate": float(np.median(rho_cc)),
            "sd_baseline_range": [float(min(sd_base)), float(max(sd_base))],
            "rho_baseline_candidate_range": [float(min(rho_bc)), float(max(rho_bc))],
            "baseline_es_auc": float(np.median(level)),
            "sd_candidate_range": [float(min(sd_cand)), float(max(sd_cand))]}


def draw(rng, draws: int, k: int, repeats: int, sd_base: float, sd_cand: float, rho_bc: float,
         rho_cc: float, gains=None, tails: str = "normal"):
    """(base (draws, repeats), cands (draws, k, repeats)) of simulated ES-AUC (mean 0 + gains)."""
    sd = np.array([sd_base] + [sd_cand] * k)
    corr = np.full((k + 1, k + 1), rho_cc)
    corr[0, :] = corr[:, 0] = rho_bc
    np.fill_diagonal(corr, 1.0)
    cov = corr * np.outer(sd, sd)
    z = rng.multivariate_normal(np.zeros(k + 1), cov, size=(draws, repeats))   # (draws, repeats, k+1)
    if tails == "t4":   # heavier tails with the same sd: a multivariate t with 4 df
        w = rng.chisquare(4, size=(draws, repeats, 1)) / 4
        z = z / np.sqrt(w) * math.sqrt(2 / 4)
    z = np.moveaxis(z, -1, -2)
    if gains is not None:
        z[:, 1:, :] += np.asarray(gains, float)[:, None]
    return z[:, 0, :], z[:, 1:, :]


def simulate(draws: int, k: int, repeats: int, sd_base: float, sd_cand: float, rho_bc: float,
             rho_cc: float, gains=None, alpha: float = 0.05, seed: int = 0, tails: str = "normal") -> dict:
    """Deployment rates of the new and the old rule over `draws` simulated decisions. With
    gains None (A/A) `*_false` is the rate of deploying any candidate; with gains, `*_power` is
    the rate of deploying candidate 0 (the one truly better by gains[0])."""
    rng = np.random.default_rng(seed)
    base, cands = draw(rng, draws, k, repeats, sd_base, sd_cand, rho_bc, rho_cc, gains, tails)
    _, new = core(base, cands, alpha)
    old = old_rule(base, cands)
    if gains is None:
        return {"new_false": float((new >= 0).mean()), "old_false": float((old >= 0).mean()), "draws": draws}
    return {"new_power": float((new == 0).mean()), "old_power": float((old == 0).mean()), "draws": draws}


def simulate_sequential(draws: int, k: int, first: int, budget: int, sd_base: float, sd_cand: float,
                        rho_bc: float, rho_cc: float, gains=None, alpha: float = 0.05, seed: int = 0) -> dict:
    """search.decide.confirm.run_confirmation's intensification (--confirm-seeds first --confirm-budget
    budget), vectorised: looks of `first` seeds, each at alpha / looks, Holm over all k with the
    dropped at p = 1; undecided = 95% interval above 0; stops when one is deployed or none is
    undecided. Returns the deployment rate (A/A: any; else candidate 0) and the mean number of
    trainings against the fixed design's k+1 x (first+budget)."""
    from scipy.stats import t as student

    rng = np.random.default_rng(seed)
    base, cands = draw(rng, draws, k, first + budget, sd_base, sd_cand, rho_bc, rho_cc, gains)
    steps = [first] + [min(first, budget - i) for i in range(0, budget, first)]
    level = alpha / len(steps)
    active = np.ones((draws, k), bool)
    running = np.ones(draws, bool)
    deployed = np.full(draws, -1)
    trainings = np.zeros(draws)
    n = 0
    for step in steps:
        trainings += np.where(running, (active.sum(-1) + 1) * step, 0)
        n += step
        diffs = cands[..., :n] - base[:, None, :n]
        p = np.where(active, one_sided_p(diffs), 1.0)
        mean = diffs.mean(-1)
        ok = active & (holm(p) <= level) & (mean > 0)
        pick = np.where(ok, mean, -np.inf).argmax(-1)
        now = running & ok.any(-1)
        deployed = np.where(now, pick, deployed)
        hi = mean + student.ppf(0.975, n - 1) * diffs.std(-1, ddof=1) / math.sqrt(n)
        active &= hi > 0
        running &= ~now & active.any(-1)
    rate = float((deployed >= 0).mean()) if gains is None else float((deployed == 0).mean())
    return {"rate": rate, "mean_trainings": float(trainings.mean()),
            "fixed_trainings": (k + 1) * (first + budget), "looks": len(steps), "draws": draws}


def ci(rate: float, n: int) -> list[float]:
    """95% Wilson interval of a rate over n draws."""
    z = 1.959963984540054
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def markdown(out: dict) -> str:
    """The short tables of the result (A/A with K=4 and the measured noise first)."""
    n = out["noise"]
    lines = [f"# Decision error ({out['command']}; {out['draws']} decisions per cell, seed {out['seed']})", "",
             f"Noise measured on the committed comparisons: seed sd of ES-AUC plain fusion "
             f"{n['sd_baseline']:.4f}, MultiFair {n['sd_candidate']:.4f}; within-seed correlation "
             f"{n['rho_baseline_candidate']:+.2f} (plain fusion-MultiFair), {n['rho_candidate_candidate']:+.2f} "
             "(MultiFair-MultiFair).", "",
             "A/A (every candidate truly equal to plain fusion): false-deployment rate, 95% Wilson interval", "",
             "| scenario | K | repeats | old rule (mean above) | new rule (paired t + Holm) |", "|---|---|---|---|---|"]
    for r in out["aa"]:
        lines.append(f"| {r['scenario']} | {r['k']} | {r['repeats']} | {r['old_false']:.3f} "
                     f"[{r['old_ci'][0]:.3f}, {r['old_ci'][1]:.3f}] | {r['new_false']:.3f} "
                     f"[{r['new_ci'][0]:.3f}, {r['new_ci'][1]:.3f}] |")
    lines += ["", "Power (K=4, one candidate truly better by the gain, measured noise): rate of deploying it", "",
              "| gain | repeats | new rule | old rule |", "|---|---|---|---|"]
    lines += [f"| {r['gain']:.2f} | {r['repeats']} | {r['new_power']:.3f} | {r['old_power']:.3f} |"
              for r in out["power"]]
    lines += ["", "Intensification (--confirm-seeds S --confirm-budget B, K=4, measured noise; fixed design = "
              "5 x (S+B) trainings)", "",
              "| S | B | looks | A/A false deployments | power at +0.05 | fixed S+B seeds power | "
              "mean trainings A/A | mean trainings +0.05 | fixed trainings |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['first']} | {r['budget']} | {r['looks']} | {r['aa_false']:.3f} [{r['aa_ci'][0]:.3f}, "
              f"{r['aa_ci'][1]:.3f}] | {r['power_005']:.3f} | {r['fixed_power_005']:.3f} | "
              f"{r['mean_trainings_aa']:.1f} | {r['mean_trainings_005']:.1f} | {r['fixed_trainings']} |"
              for r in out.get("sequential", [])]
    head = 1 - n["baseline_es_auc"]
    lines += ["", f"Power over the within-seed correlation rho (K=4, one candidate truly better by the gain, "
              f"seed sds as measured; rho for plain fusion-MultiFair and MultiFair-MultiFair). The measured "
              f"median is {n['rho_baseline_candidate']:+.2f}, per file {n['rho_baseline_candidate_range'][0]:+.2f} "
              f"to {n['rho_baseline_candidate_range'][1]:+.2f}.", "",
              "| rho | sd of a paired difference | repeats | power +0.03 | power +0.05 | gain detectable (80%) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['rho']:.2f} | {r['sd_diff']:.4f} | {r['repeats']} | {r['power_003']:.3f} | {r['power_005']:.3f} | "
              f"{_gain(r['min_detectable_gain'], head)} |" for r in out.get("by_rho", [])]
    lines += ["", f"Gain detectable at 80% power (one-sided paired t at alpha/4), at the measured noise; "
              f"plain fusion's median ES-AUC {n['baseline_es_auc']:.3f} leaves at most {head:+.3f} to gain:", "",
              "| repeats | gain |", "|---|---|"]
    lines += [f"| {r['repeats']} | {_gain(r['min_detectable_gain'], head)} |" for r in out["detectable"]]
    return "\n".join(lines) + "\n"


def _gain(gain: float, headroom: float) -> str:
    """A detectable gain, or the statement that none is achievable (above 1 - plain fusion)."""
    return f"{gain:+.3f}" if gain <= headroom else f"none achievable (needs {gain:+.3f} > {headroom:+.3f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--draws", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "decision-error.json"))
    a = p.parse_args(argv)
    files = sorted(glob.glob(str(ROOT / "benchmarks" / "results" / "compare-*.json")))
    noise = measured_noise(files)
    sb, sc, rbc, rcc = (noise[k] for k in ("sd_baseline", "sd_candidate", "rho_baseline_candidate",
                                           "rho_candidate_candidate"))
    print(f"measured on {len(files)} comparisons: seed sd of ES-AUC plain fusion {sb:.4f}, MultiFair "
          f"{sc:.4f}; within-seed correlation plain fusion-MultiFair {rbc:+.2f}, MultiFair-MultiFair {rcc:+.2f}")
    scenarios = {   # name -> (sd_base, sd_cand, rho_bc, rho_cc, tails)
        "measured": (sb, sc, rbc, rcc, "normal"),
        "baseline sd / 3": (sc / 3, sc, rbc, rcc, "normal"),
        "independent seeds": (sb, sc, 0.0, 0.0, "normal"),
        "measured, t4 tails": (sb, sc, rbc, rcc, "t4"),
    }
    out = {"command": " ".join(["python benchmarks/decision_error.py"] + (argv if argv is not None else sys.argv[1:])),
           "seed": a.seed, "draws": a.draws, "alpha": a.alpha, "noise": noise,
           "versions": {"python": platform.python_version(),
                        **{m: importlib.metadata.version(m) for m in ("numpy", "scipy", "pandas")}},
           "aa": [], "power": [], "detectable": []}
    print(f"\nA/A: every candidate truly equal to plain fusion; false deployments over {a.draws} decisions "
          f"(95% interval)\n{'scenario':22s} {'K':>2s} {'rep':>3s}  {'old rule':>20s}  {'new rule':>20s}")
    for name, (b, c, r1, r2, tails) in scenarios.items():
        for k in (3, 4):
            for rep in (2, 3, 5, 8):
                r = simulate(a.draws, k, rep, b, c, r1, r2, None, a.alpha, a.seed, tails)
                row = {"scenario": name, "k": k, "repeats": rep, **r,
                       "old_ci": ci(r["old_false"], a.draws), "new_ci": ci(r["new_false"], a.draws)}
                out["aa"].append(row)
                print(f"{name:22s} {k:2d} {rep:3d}  {r['old_false']:.3f} [{row['old_ci'][0]:.3f}, "
                      f"{row['old_ci'][1]:.3f}]  {r['new_false']:.3f} [{row['new_ci'][0]:.3f}, {row['new_ci'][1]:.3f}]")
    print(f"\npower: one of K=4 candidates truly better by the gain, the others equal to plain fusion "
          f"(measured noise); rate of deploying that candidate")
    print(f"{'gain':>5s} {'rep':>3s}  {'new rule':>8s}  {'old rule':>8s}")
    for gain in (0.03, 0.05):
        for rep in (3, 5, 8, 12, 16):
            r = simulate(a.draws, 4, rep, sb, sc, rbc, rcc, [gain, 0, 0, 0], a.alpha, a.seed)
            out["power"].append({"gain": gain, "k": 4, "repeats": rep, **r})
            print(f"{gain:5.2f} {rep:3d}  {r['new_power']:8.3f}  {r['old_power']:8.3f}")
    print(f"\nintensification (--confirm-seeds S --confirm-budget B, K=4, measured noise): A/A rate, "
          f"power at +0.05, mean trainings (fixed design: 5 x (S+B))")
    out["sequential"] = []
    for first, budget in ((3, 9), (4, 8), (4, 12), (5, 10)):
        aa = simulate_sequential(a.draws, 4, first, budget, sb, sc, rbc, rcc, None, a.alpha, a.seed)
        pw = simulate_sequential(a.draws, 4, first, budget, sb, sc, rbc, rcc, [0.05, 0, 0, 0], a.alpha, a.seed)
        fixed = simulate(a.draws, 4, first + budget, sb, sc, rbc, rcc, [0.05, 0, 0, 0], a.alpha, a.seed)
        row = {"first": first, "budget": budget, "aa_false": aa["rate"], "aa_ci": ci(aa["rate"], a.draws),
               "power_005": pw["rate"], "fixed_power_005": fixed["new_power"],
               "mean_trainings_aa": aa["mean_trainings"], "mean_trainings_005": pw["mean_trainings"],
               "fixed_trainings": aa["fixed_trainings"], "looks": aa["looks"]}
        out["sequential"].append(row)
        print(f"  S={first} B={budget} ({row['looks']} looks): A/A {aa['rate']:.3f} [{row['aa_ci'][0]:.3f}, "
              f"{row['aa_ci'][1]:.3f}]  power +0.05 {pw['rate']:.3f} (fixed {first + budget} seeds: "
              f"{fixed['new_power']:.3f})  trainings A/A {aa['mean_trainings']:.1f}, +0.05 "
              f"{pw['mean_trainings']:.1f} of {aa['fixed_trainings']}")
    print(f"\npower over the within-seed correlation (K=4, sds as measured, both correlations rho): "
          f"rate of deploying the candidate better by +0.03 / +0.05")
    out["by_rho"] = []
    for rho in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        sdd = math.sqrt(sb * sb + sc * sc - 2 * rho * sb * sc)
        for rep in (3, 5, 8, 12, 16):
            p3, p5 = (simulate(a.draws, 4, rep, sb, sc, rho, rho, [g, 0, 0, 0], a.alpha, a.seed)["new_power"]
                      for g in (0.03, 0.05))
            mdd = min_detectable(sdd, rep, a.alpha / 4)
            out["by_rho"].append({"rho": rho, "repeats": rep, "sd_diff": sdd, "power_003": p3, "power_005": p5,
                                  "min_detectable_gain": mdd})
            print(f"  rho {rho:.2f} (sd diff {sdd:.4f}) {rep:2d} repeats: power +0.03 {p3:.3f}, +0.05 {p5:.3f}, "
                  f"detects {mdd:+.3f}")
    sd_diff = math.sqrt(sb * sb + sc * sc - 2 * rbc * sb * sc)
    print(f"\nsd of a paired difference at the measured noise {sd_diff:.4f}; gain detectable at 80% power "
          f"(one-sided t at alpha/4, Holm's first step):")
    for rep in (2, 3, 5, 8, 12, 16):
        mdd = min_detectable(sd_diff, rep, a.alpha / 4)
        out["detectable"].append({"repeats": rep, "min_detectable_gain": mdd, "sd_diff": sd_diff})
        print(f"  {rep:2d} repeats: {mdd:+.3f}")
    Path(a.json).write_text(json.dumps(out, indent=1))
    md = Path(a.json).with_suffix(".md")
    md.write_text(markdown(out))
    print(f"\nwritten {a.json} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
