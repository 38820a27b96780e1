"""Trainer benchmark: MultiFair step-time overhead, loader throughput, peak memory.

Prints (and writes as JSON with --json):
  1. step time of each mode with the same encoders and batch, and the ratio full / baseline
     (target: <= 1.10 at realistic encoder sizes);
  2. loader throughput at full resolution (200x200 SLO, 200x200x200 OCT): decoding + preprocessing
     the npz files (what every epoch would cost without a cache) vs reading the preprocessed cache,
     in samples/s, and their ratio;
  3. peak memory (GPU: torch.cuda.max_memory_allocated per mode; CPU: process max RSS).
Trainer only (no Ray, no MLflow), so it runs on a bare GPU machine.

    python benchmarks/bench_trainer.py                       # CPU, moderate size
    python benchmarks/bench_trainer.py --encoder vit_base_patch16_224 --image-size 224 \
        --oct-slices 10 --batch-size 32 --steps 30           # the paper's sizes, on a GPU
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.config import MODES, make_config
from trainer.data import build_datasets
from trainer.data.synthetic import synthesize
from trainer.jsonout import dumps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_steps(args, root: Path, cache: Path) -> dict:
    """Median step time per mode. Modes are interleaved round by round (same batch, same
    encoders), so drift in machine load hits every mode alike."""
    from trainer.loop import Trainer

    trainers = {}
    for mode in MODES:
        cfg = make_config("fairvision", "gender", preset="tiny", data_root=str(root),
                          cache_dir=str(cache), mode=mode, slo_encoder=args.encoder,
                          oct_encoder=args.encoder, image_size=args.image_size,
                          oct_slices=args.oct_slices, batch_size=args.batch_size,
                          proj_dim=128, fusion_heads=4, fusion_layers=2, head_hidden=128,
                          oct_slice_layers=2, amp=True, lr=3e-5, classifier_lr=1e-5)
        trainers[mode] = Trainer(cfg)
        trainers[mode].model.train(); trainers[mode].classifiers.train()
    device = trainers["full"].device
    batch = trainers["full"].data["train"].get_batch(np.arange(args.batch_size))
    gen = torch.Generator(device=device).manual_seed(0)
    times = {mode: [] for mode in MODES}
    peak = {}
    for r in range(args.warmup + args.steps):
        for mode, trainer in trainers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device); t0 = time.perf_counter()
            trainer.train_step(batch, gen)
            _sync(device)
            if r >= args.warmup:
                times[mode].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak[mode] = max(peak.get(mode, 0), torch.cuda.max_memory_allocated() / 2**20)
    results = {mode: {"median_s": statistics.median(t), "min_s": min(t),
                      "peak_gpu_mb": peak.get(mode)} for mode, t in times.items()}
    results["device"] = str(device)
    results["encoder_params_m"] = sum(
        p.numel() for p in trainers["full"].model.encoders.parameters()) / 1e6
    base = results["baseline"]["median_s"]
    for mode in ("modality", "fairness", "full"):
        results[f"ratio_{mode}_over_baseline"] = results[mode]["median_s"] / base
    return results


def bench_loader(args, root: Path, cache: Path) -> dict:
    """Decode + preprocess every npz (a fresh cache build: what each epoch would cost without the
    cache) against reading batches of the built cache through memory maps."""
    cfg = make_config("fairvision", "gender", preset="tiny", data_root=str(root),
                      cache_dir=str(cache), image_size=224, oct_slices=10)
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    datasets = build_datasets(cfg)          # decodes every npz once, writes the cache
    build_s = time.perf_counter() - t0
    n = sum(len(d) for d in datasets.values())
    t0 = time.perf_counter()
    datasets = build_datasets(cfg)          # cache hit: memory maps only
    reopen_s = time.perf_counter() - t0
    train = datasets["train"]
    t0 = time.perf_counter()
    for epoch in range(args.loader_epochs):
        order = np.random.default_rng(epoch).permutation(len(train))
        for s in range(0, len(order), 32):
            train.get_batch(order[s:s + 32])
    cached_s = (time.perf_counter() - t0) / args.loader_epochs
    npz_rate, cache_rate = n / build_s, len(train) / cached_s
    return {"samples": n, "npz_decode_preprocess_samples_per_s": npz_rate,
            "cache_samples_per_s": cache_rate, "ratio_cache_over_npz": cache_rate / npz_rate,
            "cache_reopen_s": reopen_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", default="vit_small_patch16_224", help="timm name, random init")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--oct-slices", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--n-full-size", type=int, default=48, help="full-resolution samples to write")
    p.add_argument("--loader-epochs", type=int, default=3)
    p.add_argument("--workdir", help="where to write the generated data (default: a temp dir)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        root, cache = work / "fv-full", work / "cache"
        if not root.exists():
            n = args.n_full_size
            synthesize("fairvision", root, n_train=n, n_val=max(n // 4, 8), n_test=max(n // 4, 8),
                       full_size=True, seed=0)
        out = {"loader": bench_loader(args, root, cache), "steps": bench_steps(args, root, cache),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "args": vars(args), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(dumps(out, indent=2))
    s, ld = out["steps"], out["loader"]
    print(f"\nstep time (median, {s['device']}, encoders {s['encoder_params_m']:.1f} M params): "
          + ", ".join(f"{m} {s[m]['median_s'] * 1000:.0f} ms" for m in MODES))
    print("ratios to baseline: " + ", ".join(
        f"{m} {s[f'ratio_{m}_over_baseline']:.3f}" for m in ("modality", "fairness", "full")))
    print(f"loader: npz {ld['npz_decode_preprocess_samples_per_s']:.1f} samples/s, cache "
          f"{ld['cache_samples_per_s']:.0f} samples/s, ratio {ld['ratio_cache_over_npz']:.1f}x")
    print(f"peak RSS {out['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(dumps(out, indent=2))


if __name__ == "__main__":
    main()
