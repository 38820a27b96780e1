"""The search's own value: validation hypervolume of the (AUC, ES-AUC) front against epochs trained,
for random search, TPE + ES-AUC ASHA (the service before MO-ASHA), TPE + MO-ASHA (today's
`--objective pareto`) and full-fidelity TPE (the reference); the share of the reference front
each stopping rule would have stopped (safe pruning); and what `--warm-start` saves.

Two phases, so the expensive part is done once and every search is replayed on it (a tabular
benchmark, as HPOBench / Syne Tune's blackbox repository do):

  table   trains every configuration of a fixed design (a scrambled Sobol sample of MultiFair's
          five hyperparameters, plus the paper's point) for every seed, all epochs, on generated
          data; records each epoch's validation (AUC, ES-AUC) and the test split's figures at the
          epoch the trainer keeps. Trainer only (no Ray), --workers processes.
  replay  runs each search method as the service would, on a simulated cluster of --workers
          slots where one epoch takes one time unit: the REAL samplers (Optuna TPESampler
          multivariate + constant_liar, RandomSampler) ask for a configuration, the nearest design
          point (unit cube, log axes where the range is log) answers with a seed's recorded curve,
          and the REAL schedulers (Ray's ASHAScheduler on ES-AUC, search.run.mo_asha.MOASHAScheduler)
          decide at every epoch; a stopped or finished trial is told to Optuna with its last
          report, as OptunaSearch does. Every method gets the same epoch budget. Each arm's
          sampler is seeded from (run, method), apart from the reference's (TPE's start-up
          trials are RandomSampler draws: a shared seed made the arms replay the reference's
          first trials); each configuration is trained at most once per study (a suggestion
          is answered by the nearest design point not yet tried; a study that has tried them
          all stops); each arm reports the epochs it needs to reach 95% of the whole design's
          validation hypervolume (every configuration trained fully, the run's seed column).
          `--bohb` adds Ray's TuneBOHB + HyperBandForBOHB, run through Ray Tune itself (its
          scheduler pauses and resumes trials through Tune's controller; `simulate_bohb`).
          `--budget-epochs` (e.g. configurations x epochs) gives every arm the same epochs.
  figure  the anytime share of the design's hypervolume per arm with bands across runs.
  confirm the table's best configuration(s), picked on validation, against plain fusion
          (`--mode baseline`; `--unimodal`: also OCT-only and SLO-only) on TEST, trained on
          fresh seeds (--seed-offset) of the same data, paired by seed.

`table --world sensitive` (trainer/data/generative.py WORLDS, docs/data.md) uses the world built
so that MultiFair's terms have something to fix; `--set KEY=VALUE` overrides the MultiFair fits'
trainer config (e.g. modulation_target=update).

    python benchmarks/search_quality.py table --attribute gender --configs 32 --seeds 2 \\
        --epochs 6 --out results/sq-gender.json
    python benchmarks/search_quality.py replay --table results/sq-gender.json \\
        --warm-table results/sq-race.json --runs 10 --out benchmarks/results/search-quality.json

Figures: hypervolume, with a reference point fixed per table (its worst validation AUC and
ES-AUC at any configuration's best epoch; `--ref fixed`: AUC 0.5, ES-AUC 0.25), of the front of the
full-length trials (validation, best epoch, as search.decide.select.front); test hypervolume of the
same trials' test figures; paired over runs (in a run every method reads the same training-seed
column of the table; the samplers' seeds differ).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from trainer.jsonout import dumps

REF = (0.5, 0.25)            # hypervolume reference point: chance AUC, a poor ES-AUC
HP = ("rho", "lambda_gm", "tau", "delta", "lambda_f")


# -- the design and its coordinates ----------------------------------------------------------
def unit(params: dict) -> np.ndarray:
    """A configuration in the unit cube (log axes where the range is log)."""
    from search.record.space import RANGES

    out = []
    for k in HP:
        r, v = RANGES[k], params[k]
        lo, hi, v = (math.log(r.low), math.log(r.high), math.log(v)) if r.log else (r.low, r.high, v)
        out.append((v - lo) / (hi - lo))
    return np.array(out)


def from_unit(u) -> dict:
    from search.record.space import RANGES

    out = {}
    for k, x in zip(HP, u):
        r = RANGES[k]
        out[k] = float(math.exp(math.log(r.low) + x * (math.log(r.high) - math.log(r.low)))
                       if r.log else r.low + x * (r.high - r.low))
    return out


def design(n: int, attribute: str, seed: int = 0) -> list[dict]:
    from scipy.stats import qmc

    from search.record.space import baseline_point

    pts = qmc.Sobol(len(HP), scramble=True, seed=seed).random(n - 1)
    return [baseline_point("fairvision", attribute)] + [from_unit(u) for u in pts]


# -- phase 1: the table ----------------------------------------------------------------------
def _fit(job: dict) -> dict:
    import torch

    from trainer.config import make_config
    from trainer.loop import fit

    torch.set_num_threads(1)
    params = job["params"] if job.get("mode", "full") != "baseline" else {}
    sets = job.get("sets", []) if job.get("mode", "full") != "baseline" else []
    if job.get("modalities"):               # a unimodal arm (confirm --unimodal)
        params = dict(params, modalities=tuple(job["modalities"]))
    cfg = make_config("fairvision", job["attribute"], preset="tiny", data_root=job["root"],
                      mode=job.get("mode", "full"), seed=job["seed"], epochs=job["epochs"],
                      bootstrap=0, cache_dir=job["cache"], sets=sets, **params)
    curve = []
    res = fit(cfg, on_epoch=lambda r: curve.append((float(r.val["auc"]), float(r.val["es_auc"]))),
              progress=False)
    test = res["test"]["point"]
    return {"config": job["config"], "seed": job["seed"], "curve": curve, "best_epoch": res["best_epoch"],
            "test": (float(test["auc"]), float(test["es_auc"])), "mode": cfg.mode,
            "modalities": list(cfg.resolved_modalities()),
            "test_group_auc": {str(k): float(v) for k, v in test["group_auc"].items()}}


def table(a) -> None:
    from concurrent.futures import ProcessPoolExecutor

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_train, n_val, n_test = map(int, a.sizes.split(","))
    root = _data(a.work, a.world, (n_train, n_val, n_test), a.data_seed)
    configs = design(a.configs, a.attribute)
    done = json.loads(out.read_text()) if out.exists() else {"entries": []}
    have = {(e["config"], e["seed"]) for e in done["entries"]}
    jobs = [{"config": i, "params": p, "seed": s, "attribute": a.attribute, "epochs": a.epochs,
             "root": str(root), "cache": str(Path(a.work) / "cache"), "sets": a.set}
            for s in range(a.seeds) for i, p in enumerate(configs) if (i, s) not in have]
    meta = {"command": " ".join(sys.argv), "attribute": a.attribute, "world": a.world,
            "sets": a.set,
            "sizes": [n_train, n_val, n_test],
            "data_seed": a.data_seed, "epochs": a.epochs, "seeds": a.seeds, "preset": "tiny",
            "configs": configs, "versions": _versions()}
    started = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as pool:
        for i, entry in enumerate(pool.map(_fit, jobs), 1):
            done["entries"].append(entry)
            done.update(meta, seconds=done.get("seconds", 0) + time.perf_counter() - started)
            started = time.perf_counter()
            out.write_text(json.dumps(done))          # after every fit: an interrupted table resumes
            print(f"[table] {i}/{len(jobs)} config {entry['config']} seed {entry['seed']}: "
                  f"final val ES-AUC {entry['curve'][-1][1]:.3f}", flush=True)
    print(json.dumps(noise(done)))


def _data(work, world: str, sizes, data_seed: int) -> Path:
    """The generated data of a table (made once; the default world keeps its old folder name)."""
    from trainer.data.synthetic import synthesize

    tag = "" if world == "default" else f"-{world}"
    root = Path(work) / f"fv{tag}-{sizes[0]}-{sizes[1]}-{sizes[2]}-s{data_seed}"
    if not root.exists():
        synthesize("fairvision", root, *sizes, seed=data_seed, world=world)
    return root


def best_configs(tab: dict, top: int) -> list[int]:
    """The `top` configurations by mean (over seeds) best-epoch validation ES-AUC."""
    by = {}
    for e in tab["entries"]:
        by.setdefault(e["config"], []).append(max(v for _, v in e["curve"]))
    return sorted(by, key=lambda c: -np.mean(by[c]))[:top]


def confirm(a) -> None:
    """The table's best region against plain fusion on TEST, paired over fresh training seeds
    (seeds --seed-offset.., none of them the table's): the chosen configuration(s) picked on
    validation from the table, then both arms trained on the same data with the same seeds."""
    from concurrent.futures import ProcessPoolExecutor

    tab = json.loads(Path(a.table).read_text())
    root = _data(a.work, tab.get("world", "default"), tab["sizes"], tab["data_seed"])
    chosen = best_configs(tab, a.top)
    seeds = range(a.seed_offset, a.seed_offset + a.seeds)
    arms = [("baseline", None, None)] + [("full", c, None) for c in chosen]
    arms += [("baseline", None, (m,)) for m in (("oct", "slo") if a.unimodal else ())]
    jobs = [{"config": c, "mode": mode, "params": tab["configs"][c] if c is not None else {},
             "modalities": mods, "seed": s, "attribute": tab["attribute"], "epochs": tab["epochs"],
             "sets": tab.get("sets", []),
             "root": str(root), "cache": str(Path(a.work) / "cache")}
            for mode, c, mods in arms for s in seeds]
    with ProcessPoolExecutor(a.workers) as pool:
        fits = list(pool.map(_fit, jobs))
    fused = lambda f: len(f["modalities"]) > 1  # noqa: E731
    base = {f["seed"]: f for f in fits if f["mode"] == "baseline" and fused(f)}
    out = {"command": " ".join(sys.argv), "table": a.table, "world": tab.get("world", "default"),
           "sets": tab.get("sets", []),
           "sizes": tab["sizes"], "data_seed": tab["data_seed"], "epochs": tab["epochs"],
           "seeds": list(seeds), "fits": fits, "arms": {}}
    for c in chosen:
        mine = {f["seed"]: f for f in fits if f["config"] == c and f["mode"] == "full"}
        out["arms"][f"config {c}"] = _versus(base, mine, seeds, tab["configs"][c])
    for m in ("oct", "slo") if a.unimodal else ():
        mine = {f["seed"]: f for f in fits if f["modalities"] == [m]}
        out["arms"][f"{m} only"] = _versus(base, mine, seeds, {})
    out["baseline_test_es_auc_mean"] = float(np.mean([base[s]["test"][1] for s in seeds]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(dumps(out, indent=1))
    print(dumps({k: out[k] for k in ("arms", "baseline_test_es_auc_mean")}, indent=1))


def _versus(base: dict, mine: dict, seeds, params: dict) -> dict:
    """An arm's test (ES-AUC, AUC) against plain fusion's, paired by seed."""
    return {"params": params,
            "test_es_auc_vs_baseline": paired([base[s]["test"][1] for s in seeds],
                                              [mine[s]["test"][1] for s in seeds]),
            "test_auc_vs_baseline": paired([base[s]["test"][0] for s in seeds],
                                           [mine[s]["test"][0] for s in seeds]),
            "test_es_auc_mean": float(np.mean([mine[s]["test"][1] for s in seeds]))}


def _versions() -> dict:
    import optuna
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "optuna": optuna.__version__}


def noise(tab: dict) -> dict:
    """Spread of one setting over seeds against the spread across settings (final-epoch and
    best-epoch validation ES-AUC): hyperparameters matter when the second is the larger."""
    by = {}
    for e in tab["entries"]:
        by.setdefault(e["config"], []).append(max(v for _, v in e["curve"]))
    full = [v for v in by.values() if len(v) >= 2]
    within = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in full]))) if full else math.nan
    across = float(np.std([np.mean(v) for v in by.values()], ddof=1))
    return {"sd_within_setting_over_seeds": within, "sd_across_settings": across,
            "ratio_across_to_within": across / within if within else math.nan, "settings": len(by)}


def landscape(a) -> None:
    """Which hyperparameters move a table's best-epoch validation ES-AUC: the noise figures,
    each hyperparameter's Spearman correlation with a configuration's seed-mean (validation and
    test), and the configurations ranked by it."""
    from scipy.stats import spearmanr

    tab = json.loads(Path(a.table).read_text())
    by = {}
    for e in tab["entries"]:
        by.setdefault(e["config"], []).append((max(v for _, v in e["curve"]), e["test"][1]))
    ids = sorted(by)
    val = [float(np.mean([v for v, _ in by[c]])) for c in ids]
    test = [float(np.mean([t for _, t in by[c]])) for c in ids]
    out = {"table": a.table, "noise": noise(tab), "spearman": {
        k: {"val": float(spearmanr([tab["configs"][c][k] for c in ids], val)[0]),
            "test": float(spearmanr([tab["configs"][c][k] for c in ids], test)[0])} for k in HP},
        "ranked": [{"config": ids[i], "val_es_auc": val[i], "test_es_auc": test[i],
                    "seeds": len(by[ids[i]]), **tab["configs"][ids[i]]}
                   for i in np.argsort(val)[::-1]]}
    if a.out:
        Path(a.out).write_text(dumps(out, indent=1))
    print(dumps({k: out[k] for k in ("noise", "spearman")}, indent=1))


# -- hypervolume and fronts ------------------------------------------------------------------
def front(points: list[tuple]) -> list[int]:
    return [i for i, (a, e) in enumerate(points)
            if not any(a2 >= a and e2 >= e and (a2 > a or e2 > e) for a2, e2 in points)]


def hypervolume(points, ref=REF) -> float:
    """Area dominated by `points` (both maximised) above `ref`."""
    pts = sorted({(a, e) for a, e in points if a > ref[0] and e > ref[1]}, reverse=True)
    area, top = 0.0, ref[1]
    for a, e in pts:                    # by AUC descending: each adds a strip above the best ES-AUC so far
        if e > top:
            area += (a - ref[0]) * (e - top)
            top = e
    return area


# -- phase 2: replaying a search on the table ------------------------------------------------
class Table:
    def __init__(self, tab: dict):
        self.epochs = tab["epochs"]
        self.entries = {}
        for e in tab["entries"]:
            self.entries.setdefault(e["config"], []).append(e)
        self.seeds = max(e["seed"] for e in tab["entries"]) + 1
        self.ids = sorted(self.entries)          # a table cut short: only the trained configurations
        self.units = np.array([unit(tab["configs"][i]) for i in self.ids])
        self.ref = REF

    def nadir(self) -> tuple:
        """The worst validation (AUC, ES-AUC) of any configuration and seed at its best epoch: a
        reference point fixed by the table, under which every trial counts (differences between
        methods are not drowned in the area every trial dominates)."""
        best = [max(e["curve"], key=lambda p: p[1]) for es in self.entries.values() for e in es]
        return (min(a for a, _ in best), min(v for _, v in best))

    def nearest(self, params: dict, exclude=frozenset()) -> int:
        """The design point nearest to `params` among those not in `exclude` (a study's
        configurations already trained: each configuration is trained once per study)."""
        dist = ((self.units - unit(params)) ** 2).sum(1)
        free = [i for i, c in enumerate(self.ids) if c not in exclude]
        if not free:
            raise ValueError(f"every one of the table's {len(self.ids)} configurations is already "
                             f"in this study; give the search fewer epochs or a larger design")
        return self.ids[min(free, key=lambda i: dist[i])]

    def design_hv(self, seed: int) -> float:
        """Validation hypervolume of the whole design's front in one seed's column (every
        configuration trained fully): what a search on this table can reach at most."""
        pts = [max(e["curve"], key=lambda p: p[1]) for es in self.entries.values() for e in es
               if e["seed"] == seed]
        return hypervolume(pts, self.ref)


METHODS = {   # name: (sampler, scheduler)
    "random": ("random", "none"),
    "tpe+asha_es_auc": ("tpe", "asha_es_auc"),
    "tpe+mo_asha": ("tpe", "mo_asha"),
    "tpe+mo_asha_front": ("tpe", "mo_asha_front"),
    "tpe_full": ("tpe", "none"),
    "nsga2": ("nsga2", "none"),   # Optuna's NSGA-II at full fidelity (population 8: generations fit the budget)
    "bohb": ("bohb", "hyperband_bohb"),   # Ray's TuneBOHB + HyperBandForBOHB, through Ray Tune (replay --bohb)
}


STOPPING = ("random", "tpe+asha_es_auc", "tpe+mo_asha", "tpe+mo_asha_front", "nsga2")   # the arms
RULES = ("asha_es_auc", "mo_asha", "mo_asha_front")


def _scheduler(kind: str, epochs: int, grace: int, eta: int):
    from ray.tune.schedulers import ASHAScheduler

    from search.run.mo_asha import MOASHAScheduler

    if kind == "asha_es_auc":
        return ASHAScheduler(time_attr="epoch", metric="es_auc", mode="max", max_t=epochs,
                             grace_period=grace, reduction_factor=eta)
    if kind.startswith("mo_asha"):
        return MOASHAScheduler(max_t=epochs, grace_period=grace, reduction_factor=eta,
                               keep_front=kind == "mo_asha_front")
    return None


def arm_seed(run: int, method: str) -> int:
    """The sampler seed of `method` in run `run`: drawn from (run, method), so no arm replays
    another's first trials (TPE's start-up trials are RandomSampler(seed) draws)."""
    return int(np.random.SeedSequence([run, *map(ord, method)]).generate_state(1)[0])


def simulate(tab: Table, method: str, budget: int, run_seed: int, workers: int = 4, grace: int = 1,
             eta: int = 3, warm: list | None = None, log: list | None = None,
             sampler_seed: int | None = None) -> dict:
    """One search on the table until `budget` epochs are trained. Returns the anytime curve
    [(epochs, val hypervolume)], the trials, and the final front's val and test hypervolume.
    `run_seed` picks the training-seed column; `sampler_seed` (default: run_seed) seeds the
    sampler. A suggestion is answered by the nearest configuration not yet in the study."""
    import optuna
    from ray.tune.schedulers import TrialScheduler

    from search.record.space import optuna_distributions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_kind, sched_kind = METHODS[method]
    seed = run_seed if sampler_seed is None else sampler_seed
    sampler = {"random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "nsga2": lambda: optuna.samplers.NSGAIISampler(population_size=8, seed=seed),
               "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
               }[sampler_kind]()
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    if warm:
        study.add_trials(warm)
    dists = optuna_distributions(HP)
    sched = _scheduler(sched_kind, tab.epochs, grace, eta)
    trials, curve, spent = [], [], 0
    n = 0

    def start():
        nonlocal n
        if len(trials) >= len(tab.ids):        # every configuration tried: the search is over
            return None
        ot = study.ask(dists)
        cfg = tab.nearest(ot.params, exclude={t.cfg for t in trials})
        # every trial of a study trains with the study's seed (as the service: scfg.seed), so a
        # run replays one seed's column of the table; runs alternate between the seeds
        entries = tab.entries[cfg]
        entry = next((e for e in entries if e["seed"] == run_seed % tab.seeds), entries[0])
        t = SimpleNamespace(trial_id=f"t{n}", ot=ot, cfg=cfg, entry=entry, epoch=0, status="RUNNING")
        n += 1
        if sched is not None and hasattr(sched, "on_trial_add"):
            sched.on_trial_add(None, t)
        trials.append(t)
        return t

    slots = [start() for _ in range(workers)]
    while spent < budget and any(slots):
        # every running trial trains one epoch per time unit; results arrive in slot order
        for i, t in enumerate(slots):
            if spent >= budget:
                break
            if t is None:
                continue
            t.epoch += 1
            spent += 1
            auc, es = t.entry["curve"][t.epoch - 1]
            if log is not None:
                log.append((t.trial_id, t.epoch, auc, es))
            action = (sched.on_trial_result(None, t, {"epoch": t.epoch, "auc": auc, "es_auc": es})
                      if sched is not None else TrialScheduler.CONTINUE)
            if t.epoch >= tab.epochs or action == TrialScheduler.STOP:
                t.status = "FULL" if t.epoch >= tab.epochs else "STOPPED"
                study.tell(t.ot, [auc, es])         # the last report, as OptunaSearch
                slots[i] = start() if spent < budget else None   # none after the budget
            curve.append((spent, hypervolume(_val_points(trials), tab.ref)))
    full = [t for t in trials if t.status == "FULL"]
    f = front(_val_points(full)) if full else []
    return {"curve": curve, "trials": trials, "front": [full[i] for i in f],
            "val_hv": curve[-1][1] if curve else 0.0,
            "test_hv": hypervolume([tuple(full[i].entry["test"]) for i in f], tab.ref)}


# -- BOHB: Ray's TuneBOHB + HyperBandForBOHB, replayed through Ray Tune itself ---------------
# HyperBandForBOHB pauses and resumes trials through Tune's controller (choose_trial_to_run,
# pause_trial, the searcher's on_pause), so it cannot be driven by hand as the other arms'
# schedulers are: a real Tune run on an embedded Ray whose function trainable reads the table's
# curve one epoch at a time. Results arrive in Ray's order, not the simulated cluster's, so this
# arm is not bit-reproducible; its sampler seed and numpy's (hpbandster draws from it) are set.

def _table_trainable(config: dict) -> None:
    """One replayed trial: the design point's recorded (AUC, ES-AUC) per epoch, resumed from its
    checkpoint (the last epoch reported) when HyperBand unpauses it."""
    import tempfile
    import time
    from pathlib import Path

    from ray import tune

    start, ckpt = 0, tune.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            start = int((Path(d) / "epoch").read_text())
    for epoch in range(start + 1, len(config["curve"]) + 1):
        time.sleep(config["pace"])               # every slot at one pace, as the simulated cluster
        auc, es = config["curve"][epoch - 1]
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "epoch").write_text(str(epoch))
            tune.report({"epoch": epoch, "auc": auc, "es_auc": es},
                        checkpoint=tune.Checkpoint.from_directory(d))


def _design_bohb(tab: Table, column: int, pace: float, **kwargs):
    """TuneBOHB whose suggestion is answered, as in the other arms, by the nearest design point
    not yet tried in the study (BOHB keeps learning from the point it proposed, as Optuna is told
    the asked parameters); the study ends when every design point is tried."""
    from ray.tune.search import Searcher
    from ray.tune.search.bohb import TuneBOHB

    class DesignBOHB(TuneBOHB):
        def suggest(self, trial_id: str):
            tried = self.__dict__.setdefault("tried", [])
            if len(tried) >= len(tab.ids):
                return Searcher.FINISHED
            cfg = super().suggest(trial_id)
            if not isinstance(cfg, dict):
                return cfg
            point = tab.nearest(cfg, exclude=set(tried))
            tried.append(point)
            entries = tab.entries[point]
            entry = next((e for e in entries if e["seed"] == column), entries[0])
            return dict(cfg, design_point=point, curve=entry["curve"], pace=pace)

    return DesignBOHB(**kwargs)


def _arrivals(budget: int):
    """A Tune stopper that records every result in arrival order (`.log`) and ends the
    experiment when `budget` epochs are trained."""
    from ray.tune import Stopper

    class Arrivals(Stopper):
        def __init__(self):
            self.budget, self.log = budget, []

        def __call__(self, trial_id: str, result: dict) -> bool:
            cfg = result["config"]
            self.log.append((trial_id, int(result["epoch"]), float(result["auc"]),
                             float(result["es_auc"]), int(cfg["design_point"])))
            return False

        def stop_all(self) -> bool:
            return len(self.log) >= self.budget

    return Arrivals()


def simulate_bohb(tab: Table, budget: int, run_seed: int, workers: int = 4, eta: int = 3,
                  sampler_seed: int | None = None, pace: float = 0.05, storage: str = "") -> dict:
    """One BOHB search on the table through Ray Tune (an embedded Ray must be running, with
    `workers` CPUs): TuneBOHB on validation ES-AUC (BOHB is single-objective), HyperBandForBOHB
    with max_t = the table's epochs and reduction factor eta (rungs at epochs max_t / eta^s).
    Returns what `simulate` returns, the curve rebuilt from the results in arrival order."""
    import tempfile

    import ray.tune as tune
    from ray.tune.schedulers import HyperBandForBOHB

    from search.record.space import param_space

    from ray import cloudpickle

    if __name__ != "__main__":     # imported from benchmarks/, a folder Ray's workers cannot import
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    seed = run_seed if sampler_seed is None else sampler_seed
    np.random.seed(seed % 2**32)         # hpbandster's KDE sampling draws from numpy's global state
    searcher = _design_bohb(tab, run_seed % tab.seeds, pace, seed=seed % 2**31)
    arrivals = _arrivals(budget)
    with tempfile.TemporaryDirectory(prefix="sq-bohb-") as tmp:
        tuner = tune.Tuner(
            _table_trainable, param_space=param_space("full"),
            tune_config=tune.TuneConfig(
                metric="es_auc", mode="max", search_alg=searcher, num_samples=-1,
                scheduler=HyperBandForBOHB(time_attr="training_iteration", max_t=tab.epochs,
                                           reduction_factor=eta),
                max_concurrent_trials=workers, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=storage or tmp, name=f"bohb-{run_seed}",
                                      stop=arrivals, verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        tuner.fit()
    return replay_log(tab, arrivals.log[:budget], run_seed)


def replay_log(tab: Table, log: list, run_seed: int) -> dict:
    """`simulate`'s output from results in arrival order [(trial, epoch, auc, es, design point)]:
    one epoch per result; a trial is full-length when it reports the table's last epoch."""
    trials, curve = {}, []
    for spent, (tid, epoch, _auc, _es, point) in enumerate(log, 1):
        if tid not in trials:
            entries = tab.entries[point]
            entry = next((e for e in entries if e["seed"] == run_seed % tab.seeds), entries[0])
            trials[tid] = SimpleNamespace(trial_id=tid, cfg=point, entry=entry, epoch=0, status="STOPPED")
        t = trials[tid]
        t.epoch = max(t.epoch, epoch)
        t.status = "FULL" if t.epoch >= tab.epochs else "STOPPED"
        curve.append((spent, hypervolume(_val_points(trials.values()), tab.ref)))
    full = [t for t in trials.values() if t.status == "FULL"]
    f = front(_val_points(full)) if full else []
    return {"curve": curve, "trials": list(trials.values()), "front": [full[i] for i in f],
            "val_hv": curve[-1][1] if curve else 0.0,
            "test_hv": hypervolume([tuple(full[i].entry["test"]) for i in f], tab.ref)}


def _best(t) -> tuple:
    """A full-length trial's validation point: its best-ES-AUC epoch (the model kept)."""
    return max(t.entry["curve"], key=lambda p: p[1])


def _val_points(trials) -> list[tuple]:
    return [_best(t) for t in trials if t.status == "FULL"]


def epochs_to(curve, target) -> float:
    return next((e for e, hv in curve if hv >= target - 1e-12), math.inf)


def shadow_stops(log: list, trials: list, kind: str, epochs: int, grace: int, eta: int) -> set:
    """Replay a stopping rule on the reference run's curves (every trial trained fully), in the
    order the results arrived; the trials it would have stopped."""
    from ray.tune.schedulers import TrialScheduler

    sched, stopped, seen = _scheduler(kind, epochs, grace, eta), set(), set()
    for tid, epoch, auc, es in log:
        t = SimpleNamespace(trial_id=tid)
        if tid not in seen and hasattr(sched, "on_trial_add"):
            sched.on_trial_add(None, t)
        seen.add(tid)
        if tid in stopped or epoch >= epochs:
            continue
        if sched.on_trial_result(None, t, {"epoch": epoch, "auc": auc, "es_auc": es}) == TrialScheduler.STOP:
            stopped.add(tid)
    return stopped


def paired(x, y) -> dict:
    """Mean of y - x over runs with a 95% t interval (scipy.stats.ttest_rel)."""
    from scipy.stats import ttest_rel

    d = np.asarray(y, float) - np.asarray(x, float)
    out = {"mean": float(d.mean()), "lo": math.nan, "hi": math.nan, "n": len(d)}
    if len(d) >= 2 and np.ptp(d) > 0:
        ci = ttest_rel(y, x).confidence_interval(0.95)
        out.update(lo=float(ci.low), hi=float(ci.high))
    return out


def replay(a) -> None:
    tab_raw = json.loads(Path(a.table).read_text())
    tab = Table(tab_raw)
    tab.ref = tab.nadir() if a.ref == "nadir" else REF
    ref_budget = a.ref_trials * tab.epochs
    share = a.budget_share
    budget = a.budget_epochs or int(ref_budget * share)
    arms = STOPPING + (("bohb",) if a.bohb else ())
    ray_ctx = _bohb_ray(a.workers) if a.bohb else contextlib.nullcontext()
    out = {"command": " ".join(sys.argv), "table": a.table, "table_meta": {k: tab_raw[k] for k in
           ("attribute", "sizes", "data_seed", "epochs", "seeds", "preset", "versions") if k in tab_raw},
           "noise": noise(tab_raw), "reference_point": tab.ref, "reference_point_rule": a.ref, "workers": a.workers, "grace": a.grace,
           "eta": a.eta, "reference_budget_epochs": ref_budget, "budget_share": budget / ref_budget,
           "budget_epochs": budget, "arms": list(arms), "runs": []}
    with ray_ctx:
        for r in range(a.runs):
            out["runs"].append(_replay_run(a, tab, r, ref_budget, budget, arms))
    out["summary"] = summarize(out)
    out["anytime"] = anytime(out)
    out["summary"]["epochs_to_95pct_design"] = out["anytime"]["epochs_to_95pct_design"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(dumps(out, indent=1))      # strict JSON: NaN and infinity -> null
    print(dumps(out["summary"], indent=1))


def _bohb_ray(workers: int):
    """The embedded Ray the BOHB arm's Tune runs use (loopback only; one for all runs)."""
    try:
        import ConfigSpace  # noqa: F401
        import hpbandster  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"replay --bohb needs hpbandster and ConfigSpace ({e}): "
                         "pip install -e '.[bench]'") from None
    from search.run.embedded_ray import local_ray

    return local_ray(workers, log_to_driver=False)


def _replay_run(a, tab: Table, r: int, ref_budget: int, budget: int, arms) -> dict:
    """Run r of the replay: the reference, every arm, safe pruning (and the warm start)."""
    log = []
    ref = simulate(tab, "tpe_full", ref_budget, r, a.workers, a.grace, a.eta, log=log,
                   sampler_seed=arm_seed(r, "tpe_full"))
    design = tab.design_hv(r % tab.seeds)
    row = {"seed": r, "design_val_hv": design,
           "tpe_full": {"val_hv": ref["val_hv"], "test_hv": ref["test_hv"],
                        "epochs": ref_budget, "distinct_configs": _distinct(ref),
                        "epochs_to_95pct_design": epochs_to(ref["curve"], 0.95 * design)}}
    for m in arms:
        started = time.perf_counter()
        res = (simulate_bohb(tab, budget, r, a.workers, a.eta, sampler_seed=arm_seed(r, m))
               if m == "bohb" else
               simulate(tab, m, budget, r, a.workers, a.grace, a.eta, sampler_seed=arm_seed(r, m)))
        row[m] = {"val_hv": res["val_hv"], "test_hv": res["test_hv"], "epochs": budget,
                  "seconds": time.perf_counter() - started, "hv_steps": hv_steps(res["curve"]),
                  "share_of_reference_hv": res["val_hv"] / ref["val_hv"] if ref["val_hv"] else math.nan,
                  "share_of_design_hv": res["val_hv"] / design if design else math.nan,
                  "epochs_to_95pct_reference": epochs_to(res["curve"], 0.95 * ref["val_hv"]),
                  "epochs_to_95pct_design": epochs_to(res["curve"], 0.95 * design),
                  "distinct_configs": _distinct(res),
                  "curve": res["curve"][:: max(1, len(res["curve"]) // 40)]}
    # the same epoch budget for random search and for TPE at full fidelity, for the curve
    ref_front = {t.trial_id for t in ref["front"]}
    row["safe_pruning"] = {}
    for kind in RULES:
        stops = shadow_stops(log, ref["trials"], kind, tab.epochs, a.grace, a.eta)
        # a study trains each configuration once, so the front's trials are distinct
        # configurations: the share below is per distinct configuration (front_configs: the check)
        row["safe_pruning"][kind] = {"front": len(ref_front), "stopped": len(ref_front & stops),
                                     "front_configs": len({t.cfg for t in ref["front"]}),
                                     "survives": 1 - len(ref_front & stops) / max(1, len(ref_front))}
    row["tpe_full"]["curve"] = ref["curve"][:: max(1, len(ref["curve"]) // 40)]
    row["tpe_full"]["hv_steps"] = hv_steps(ref["curve"])
    if a.warm_table:
        row["warm_start"] = warm_saving(a, tab, r)
    print(f"[replay] run {r}: " + ", ".join(f"{m} {row[m]['val_hv']:.4f}" for m in
                                           ("tpe_full",) + tuple(arms)), flush=True)
    return row


def hv_steps(curve) -> list:
    """The anytime curve where it changes [(epochs, val hypervolume)], plus its last point: exact
    and compact (the hypervolume only grows when a trial reaches full length)."""
    steps, last = [], None
    for e, hv in curve:
        if hv != last:
            steps.append((e, hv))
            last = hv
    if curve and steps[-1][0] != curve[-1][0]:
        steps.append(tuple(curve[-1]))
    return steps


def hv_at(steps, epochs: np.ndarray) -> np.ndarray:
    """The step curve's hypervolume after each of `epochs` (0 before its first point; its last
    value after a search that ended early)."""
    if not steps:
        return np.zeros(len(epochs))
    e = np.array([x for x, _ in steps])
    hv = np.array([y for _, y in steps])
    i = np.searchsorted(e, epochs, side="right") - 1
    return np.where(i >= 0, hv[np.clip(i, 0, None)], 0.0)


BANDS = (10, 25, 50, 75, 90)


def anytime(out: dict, boot: int = 5000) -> dict:
    """Across runs, per arm: the share of the run's design hypervolume reached after each epoch
    (percentiles BANDS), the epochs to 95% of it (median, 95% bootstrap interval over runs,
    runs that never reach it count as infinite) and the ratio of that median to random search's
    (resampled in pairs: a run's arms share its seed column)."""
    runs = out["runs"]
    arms = ["tpe_full"] + [m for m in out.get("arms", STOPPING) if m in runs[0]]
    budget = max(out.get("budget_epochs", 0), out["reference_budget_epochs"])
    grid = np.arange(1, budget + 1)
    design = np.array([r["design_val_hv"] for r in runs])
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(runs), size=(boot, len(runs)))
    to = {m: np.array([math.inf if r[m]["epochs_to_95pct_design"] is None
                       else r[m]["epochs_to_95pct_design"] for r in runs], float) for m in arms}
    res = {"bands_percentiles": list(BANDS), "epochs": grid.tolist(), "share_of_design": {},
           "epochs_to_95pct_design": {}}
    for m in arms:
        shares = np.array([hv_at(r[m]["hv_steps"] if "hv_steps" in r[m] else r[m]["curve"], grid) for r in runs]) / design[:, None]
        shares[:, runs[0][m]["epochs"]:] = np.nan      # nothing drawn past an arm's budget
        res["share_of_design"][m] = {str(q): np.round(np.percentile(shares, q, axis=0), 4).tolist()
                                     for q in BANDS}
        med = np.median(to[m][idx], axis=1)
        entry = {"median": float(np.median(to[m])), "median_95ci": _quantiles(med),
                 "runs_reaching": int(np.isfinite(to[m]).sum()), "runs": len(runs),
                 "per_run": to[m].tolist()}
        if m != "random" and "random" in to:
            ratio = _ratio(med, np.median(to["random"][idx], axis=1))
            entry["median_ratio_to_random"] = float(_ratio(np.median(to[m]), np.median(to["random"])))
            entry["median_ratio_to_random_95ci"] = _quantiles(ratio)
            entry["runs_within_25pct_of_random"] = int(np.sum(to[m] <= 0.25 * to["random"]))
        res["epochs_to_95pct_design"][m] = entry
    return res


def _ratio(a, b):
    """a / b with infinity kept meaningful: never reached / reached = inf, both never = nan."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isinf(a) & np.isinf(b), np.nan, np.where(np.isinf(b), 0.0, a / b))


def _quantiles(x) -> list:
    """The 2.5% and 97.5% points of a bootstrap sample that may hold infinities (observed
    values, no interpolation: an interval may end at infinity; nan resamples dropped)."""
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    if not len(x):
        return [math.nan, math.nan]
    return [float(np.quantile(x, q, method="inverted_cdf")) for q in (0.025, 0.975)]


def _distinct(res: dict) -> int:
    """Distinct configurations a search trained (a trial per configuration: equal to its
    trials; kept in the output as the check)."""
    return len({t.cfg for t in res["trials"] if t.epoch > 0})


def warm_saving(a, cold_tab: Table, r: int) -> dict:
    """Epochs a TPE + MO-ASHA search on the --warm-table data needs to reach its cold search's
    final hypervolume, cold vs seeded with the trials of a TPE + MO-ASHA search on the --table
    data (another attribute or site), as search/run/warm_start.py seeds Optuna."""
    import optuna

    from search.record.space import optuna_distributions

    target_tab = Table(json.loads(Path(a.warm_table).read_text()))
    target_tab.ref = target_tab.nadir() if a.ref == "nadir" else REF
    budget = int(a.ref_trials * target_tab.epochs * a.budget_share)
    # the earlier study: a whole search (the reference's epochs) on the first table
    first = simulate(cold_tab, "tpe+mo_asha", a.ref_trials * cold_tab.epochs, 1000 + r, a.workers,
                     a.grace, a.eta)
    dists = optuna_distributions(HP)
    warm = [optuna.trial.create_trial(params=t.ot.params, distributions=dists,
                                      values=list(t.entry["curve"][t.epoch - 1]))
            for t in first["trials"] if t.epoch > 0 and t.status != "RUNNING"]
    cold = simulate(target_tab, "tpe+mo_asha", budget, r, a.workers, a.grace, a.eta)
    hot = simulate(target_tab, "tpe+mo_asha", budget, r, a.workers, a.grace, a.eta, warm=warm)
    target = cold["val_hv"]
    return {"cold_val_hv": cold["val_hv"], "warm_val_hv": hot["val_hv"], "seed_trials": len(warm),
            "cold_epochs_to_cold_final": epochs_to(cold["curve"], target),
            "warm_epochs_to_cold_final": epochs_to(hot["curve"], target)}


def summarize(out: dict) -> dict:
    runs = out["runs"]
    ref = [r["tpe_full"]["val_hv"] for r in runs]
    s = {"runs": len(runs), "reference_val_hv_mean": float(np.mean(ref)),
         "reference_test_hv_mean": float(np.mean([r["tpe_full"]["test_hv"] for r in runs]))}
    s["design_val_hv_mean"] = float(np.mean([r["design_val_hv"] for r in runs]))
    s["tpe_full_epochs_to_95pct_design_median"] = float(np.median(
        [r["tpe_full"]["epochs_to_95pct_design"] for r in runs]))
    for m in out.get("arms", STOPPING):
        share = [r[m]["share_of_reference_hv"] for r in runs]
        to_design = [r[m]["epochs_to_95pct_design"] for r in runs]
        s[m] = {"epochs_share_of_reference": out["budget_share"],
                "val_hv_share_of_design_mean": float(np.mean([r[m]["share_of_design_hv"]
                                                              for r in runs])),
                # a run that never reaches it counts as infinite epochs (the median may be inf)
                "epochs_to_95pct_design_median": float(np.median(to_design)),
                "runs_reaching_95pct_design": int(sum(math.isfinite(x) for x in to_design)),
                "val_hv_share_of_reference_mean": float(np.mean(share)),
                "val_hv_vs_reference": paired(ref, [r[m]["val_hv"] for r in runs]),
                "test_hv_vs_reference": paired([r["tpe_full"]["test_hv"] for r in runs],
                                               [r[m]["test_hv"] for r in runs]),
                "runs_reaching_95pct": int(sum(v >= 0.95 for v in share))}
    s["mo_vs_es_auc_asha_val_hv"] = paired([r["tpe+asha_es_auc"]["val_hv"] for r in runs],
                                           [r["tpe+mo_asha"]["val_hv"] for r in runs])
    for kind in RULES:
        s[f"front_survives_{kind}"] = float(np.mean([r["safe_pruning"][kind]["survives"] for r in runs]))
    if runs and "warm_start" in runs[0]:
        w = [r["warm_start"] for r in runs]
        # a warm run that never reaches the cold run's final hypervolume counts as infinite epochs
        s["warm_start"] = {"cold_epochs_median": float(np.median([x["cold_epochs_to_cold_final"] for x in w])),
                           "warm_epochs_median": float(np.median([x["warm_epochs_to_cold_final"] for x in w])),
                           "seed_trials_mean": float(np.mean([x["seed_trials"] for x in w])),
                           "warm_reaches_cold_final": int(sum(math.isfinite(x["warm_epochs_to_cold_final"]) for x in w)),
                           "val_hv_warm_minus_cold": paired([x["cold_val_hv"] for x in w],
                                                            [x["warm_val_hv"] for x in w])}
    return s


LABELS = {"tpe_full": "TPE, full fidelity (reference, 24 trials)", "random": "random search, full fidelity",
          "tpe+asha_es_auc": "TPE + ES-AUC ASHA", "tpe+mo_asha": "TPE + MO-ASHA (service default)",
          "tpe+mo_asha_front": "TPE + MO-ASHA keeping the rung front", "nsga2": "NSGA-II (Optuna)",
          "bohb": "BOHB (TuneBOHB + HyperBandForBOHB)"}


def figure(a) -> None:
    """Anytime share of the design's validation hypervolume against epochs, one panel per arm:
    median across runs, 25-75% and 10-90% bands; random search's median drawn in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = json.loads(Path(a.replay).read_text())
    at = out.get("anytime") or anytime(out)
    arms = [m for m in ["tpe_full"] + out.get("arms", list(STOPPING)) if m in at["share_of_design"]]
    x = np.array(at["epochs"])
    cols = 4 if len(arms) > 6 else 3
    rows = math.ceil(len(arms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), sharex=True, sharey=True)
    band = lambda m, q: np.array(at["share_of_design"][m][str(q)], float)  # noqa: E731
    for ax, m in zip(axes.flat, arms):
        ax.fill_between(x, band(m, 10), band(m, 90), color="C0", alpha=0.15, lw=0, label="10-90%")
        ax.fill_between(x, band(m, 25), band(m, 75), color="C0", alpha=0.35, lw=0, label="25-75%")
        ax.plot(x, band(m, 50), color="C0", lw=1.5, label="median")
        if m != "random":
            ax.plot(x, band("random", 50), color="0.4", lw=1, ls="--", label="random, median")
        e = at["epochs_to_95pct_design"][m]
        ax.axhline(0.95, color="C3", lw=0.7)
        med = e["median"] if e["median"] is not None else math.inf     # JSON: never reached -> null
        ax.set_title(f"{LABELS.get(m, m)}\n95% at {med:g} epochs (median), "
                     f"{e['runs_reaching']}/{e['runs']} runs", fontsize=7.5)
        ax.set_ylim(0.3, 1.01)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(arms):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6.5, loc="lower right")
    for ax in axes[-1]:
        ax.set_xlabel("epochs trained")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of design's val HV")
    fig.suptitle(f"Anytime hypervolume, {len(out['runs'])} paired runs, {Path(a.replay).name}", fontsize=9)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=130)
    print(f"[figure] {a.out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="phase", required=True)
    t = sub.add_parser("table")
    t.add_argument("--attribute", default="gender")
    t.add_argument("--configs", type=int, default=32)
    t.add_argument("--seeds", type=int, default=2)
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--sizes", default="384,192,192")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--world", default="default", choices=("default", "sensitive"),
                   help="generated world (trainer synthesize --world; docs/data.md)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer config override for the MultiFair fits (e.g. "
                        "modulation_target=update); plain fusion in `confirm` gets none")
    t.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    t.add_argument("--work", default="results/search-quality")
    t.add_argument("--out", required=True)
    c = sub.add_parser("confirm", help="the table's best configuration(s) against plain fusion "
                       "on test, paired over fresh seeds")
    c.add_argument("--table", required=True)
    c.add_argument("--top", type=int, default=1)
    c.add_argument("--seeds", type=int, default=5)
    c.add_argument("--seed-offset", type=int, default=100)
    c.add_argument("--unimodal", action="store_true",
                   help="also plain OCT-only and SLO-only models (what each modality alone gives)")
    c.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    c.add_argument("--work", default="results/search-quality")
    c.add_argument("--out", required=True)
    s_ = sub.add_parser("landscape", help="noise and each hyperparameter's rank correlation")
    s_.add_argument("--table", required=True)
    s_.add_argument("--out", default="")
    r = sub.add_parser("replay")
    r.add_argument("--table", required=True)
    r.add_argument("--warm-table", default="")
    r.add_argument("--runs", type=int, default=10)
    r.add_argument("--ref-trials", type=int, default=24, help="trials of the full-fidelity reference")
    r.add_argument("--budget-share", type=float, default=0.25, help="epochs of the others / reference's")
    r.add_argument("--budget-epochs", type=int, default=0,
                   help="epochs of the others (overrides --budget-share; the whole design's "
                        "configs x epochs lets every full-fidelity arm reach the design's front)")
    r.add_argument("--bohb", action="store_true",
                   help="add Ray's TuneBOHB + HyperBandForBOHB (through Ray Tune; needs the "
                        "bench extra: hpbandster, ConfigSpace)")
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--grace", type=int, default=1)
    r.add_argument("--eta", type=int, default=3)
    r.add_argument("--ref", choices=["nadir", "fixed"], default="nadir",
                   help="hypervolume reference point: the table's worst (AUC, ES-AUC), or (0.5, 0.25)")
    r.add_argument("--out", required=True)
    f = sub.add_parser("figure", help="anytime hypervolume with bands from a replay's raw JSON")
    f.add_argument("--replay", required=True)
    f.add_argument("--out", required=True, help="PNG")
    a = p.parse_args(argv)
    {"table": table, "confirm": confirm, "replay": replay, "landscape": landscape,
     "figure": figure}[a.phase](a)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
