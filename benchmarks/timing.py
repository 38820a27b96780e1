"""The timers the benchmarks share: the median wall time of repeated calls, and the median step
time of several trainers timed in turn (interleaved, so a load change hits every one alike)."""
from __future__ import annotations

import statistics
import time


def median_s(fn, repeats: int = 3) -> float:
    """Median seconds of `repeats` calls of fn() (the median: one slow call on a shared machine
    does not move it)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def interleaved_step_medians(trainers: dict, batch_of, generator, warmup: int, steps: int,
                             device) -> dict[str, float]:
    """Median seconds of `Trainer.train_step` per trainer: warmup + steps rounds, each round one
    step of every trainer in turn on `batch_of(name, trainer)`; the warm-up rounds are dropped."""
    times = {name: [] for name in trainers}
    for r in range(warmup + steps):
        for name, trainer in trainers.items():
            batch = batch_of(name, trainer)
            sync(device)
            started = time.perf_counter()
            trainer.train_step(batch, generator)
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}
