"""What a search keeps on storage at the end, with and without deleting ended trials' resume
state (search/run/storage.py), by the checkpoint policy's own arithmetic (search/run/trainable.py
checkpoint_kind, asha_rungs) and Tune's num_to_keep=2. No training: sizes per file come from
`python benchmarks/checkpoint_cost.py` at the paper preset (2.03 GiB state.pt, 0.34 GiB bf16
best model), or --state-gib / --best-gib.

    python benchmarks/storage_kept.py [--num-samples 100 --max-epochs 10 --grace-period 2
        --reduction-factor 3 --checkpoint-every 5 --finalists 3 --confirm-seeds 3]

ASHA is taken to pass 1/reduction-factor of the trials at each rung (its asynchronous promotion
passes a few more early in a search). The confirmation stage trains finalists + the paper's
point + plain fusion, each with every seed, all epochs, resume state every K epochs, no rungs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.run.trainable import asha_rungs, checkpoint_kind, checkpoint_policy  # noqa: E402

KEEP = 2   # search/runner.py and search/decide/confirm.py: CheckpointConfig(num_to_keep=2)


def kept_gib(epochs: int, max_epochs: int, policy: dict, state: float, best: float,
             pruned: bool) -> tuple[float, float]:
    """(GiB kept, of which resume state) by one trial that trained `epochs` epochs."""
    written = [e for e in range(1, epochs + 1) if checkpoint_kind(e, max_epochs, policy)]
    kept = written[-KEEP:]
    states = sum(state for e in kept if checkpoint_kind(e, max_epochs, policy) == "resume")
    states = 0.0 if pruned else states
    return len(kept) * best + states, states


def study_gib(a, pruned: bool) -> dict[str, float]:
    rungs = asha_rungs(a.grace_period, a.reduction_factor, a.max_epochs)
    policy = checkpoint_policy(a.checkpoint_every, rungs)
    # trials ending at each rung (a share 1 - 1/rf of those reaching it) and at max_epochs
    ends, reaching = {}, float(a.num_samples)
    for r in rungs:
        ends[r] = reaching * (1 - 1 / a.reduction_factor)
        reaching /= a.reduction_factor
    ends[a.max_epochs] = reaching
    search = [(n, *kept_gib(e, a.max_epochs, policy, a.state_gib, a.best_gib, pruned)) for e, n in ends.items()]
    runs = (a.finalists + 2) * a.confirm_seeds
    confirm = kept_gib(a.max_epochs, a.max_epochs, checkpoint_policy(a.checkpoint_every),
                       a.state_gib, a.best_gib, pruned)
    return {"search": sum(n * g for n, g, _ in search), "search_state": sum(n * s for n, _, s in search),
            "confirm": runs * confirm[0], "confirm_state": runs * confirm[1], "ends": ends, "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--num-samples", 100), ("--max-epochs", 10), ("--grace-period", 2),
                          ("--reduction-factor", 3), ("--checkpoint-every", 5), ("--finalists", 3),
                          ("--confirm-seeds", 3)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--state-gib", type=float, default=2.03)
    p.add_argument("--best-gib", type=float, default=0.34)
    a = p.parse_args(argv)
    before, after = study_gib(a, pruned=False), study_gib(a, pruned=True)
    print("trials ending at epoch: " + ", ".join(f"{e}: {n:.1f}" for e, n in before["ends"].items())
          + f"; confirmation runs: {before['runs']}")
    for stage in ("search", "confirm"):
        print(f"{stage:8s} kept {before[stage]:7.1f} GiB without pruning (resume state "
              f"{before[stage + '_state']:.1f}), {after[stage]:7.1f} GiB with it")
    total_b, total_a = before["search"] + before["confirm"], after["search"] + after["confirm"]
    print(f"study    kept {total_b:7.1f} GiB without pruning, {total_a:7.1f} GiB with it: "
          f"{total_b - total_a:.1f} GiB of resume state deleted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
