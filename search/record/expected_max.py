"""Would more trials help? The expected best validation score of a search of n trials (Dodge et
al., "Show Your Work", EMNLP 2019), from the empirical distribution of this search's full-length
trials, with a bootstrap band.

With the N observed values sorted v_(1) <= ... <= v_(N) and the empirical CDF F(v_(i)) = i/N, the
best of n trials drawn (with replacement) from it has expectation
    E[max_n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n).
Caveats, stated with the line: the trials are TPE's (not independent draws) and ASHA-stopped trials
are left out (their values are early-epoch values), and the empirical CDF cannot extrapolate
beyond the best value seen: the curve flattens at it, so "would add ~X" is a lower bound on what
a larger search of the same kind could find, not a forecast of a better region. It is an
estimate and says so wherever it is printed. Non-finite values (a trial whose validation ES-AUC
is undefined: a group with one class) are left out and counted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def expected_max(values, ns) -> np.ndarray:
    """E[best of n] for each n in ns (closed form above)."""
    v = np.sort(np.asarray(values, float))
    big_n = len(v)
    if big_n == 0:
        raise ValueError("expected_max: no trial values")
    ranks = np.arange(1, big_n + 1) / big_n
    ns = np.atleast_1d(np.asarray(ns, float))
    weights = ranks[None, :] ** ns[:, None] - (ranks[None, :] - 1 / big_n) ** ns[:, None]
    return weights @ v


def curve(values, ns=None, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """{"n", "mean", "lo", "hi", "n_trials", "n_dropped"}: the estimated expected best for
    n = 1 .. 2N (default) with a 95% percentile band over `n_boot` bootstrap resamples of the
    trials; non-finite values are dropped first (None when no finite value is left)."""
    given = np.asarray(values, float)
    v = given[np.isfinite(given)]
    if len(v) == 0:
        return None
    ns = np.arange(1, 2 * len(v) + 1) if ns is None else np.asarray(ns)
    rng = np.random.default_rng(seed)
    boots = np.stack([expected_max(rng.choice(v, len(v)), ns) for _ in range(n_boot)])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    return {"n_trials": len(v), "n_dropped": int(len(given) - len(v)), "n": ns.tolist(),
            "mean": expected_max(v, ns).tolist(), "lo": lo.tolist(), "hi": hi.tolist()}


def line(c: dict) -> str:
    """One summary line: the expected best with the trials run and with twice as many."""
    n = c["n_trials"]
    at = dict(zip(c["n"], c["mean"]))
    dropped = f"; {c['n_dropped']} undefined value(s) left out" if c.get("n_dropped") else ""
    if n < 2 or 2 * n not in at:
        return f"estimated expected best val ES-AUC: needs 2+ full-length trials with a value (have {n}{dropped})"
    now, double = at[n], at[2 * n]
    return (f"estimated expected best val ES-AUC with {n} trials {now:.3f}, with {2 * n} {double:.3f}: "
            f"more trials would add ~{double - now:.3f} (an estimate, Dodge et al. 2019, from the {n} "
            f"full-length trials{dropped}; a lower bound, it cannot exceed the best seen)")


def figure(c: dict, out: Path) -> Path:
    """expected_max.png: the curve with its band, the trials run marked."""
    # matplotlib's backend is chosen when drawing, not on import (a caller's own backend stays)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(c["n"], c["mean"], color="C0", label="estimated expected best (empirical CDF)")
    ax.fill_between(c["n"], c["lo"], c["hi"], color="C0", alpha=0.2, label="95% bootstrap band")
    ax.axvline(c["n_trials"], color="grey", linestyle=":", label=f"{c['n_trials']} full-length trials run")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of trials")
    ax.set_ylabel("estimated expected best val ES-AUC")
    ax.set_title("Would more trials help? An estimate (Dodge et al. 2019)")
    ax.legend(loc="lower right", fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "expected_max.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
