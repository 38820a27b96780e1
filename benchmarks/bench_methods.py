"""Step time of every training method (trainer/methods/) relative to `baseline`.

Same data, same batch, same encoders for every method; methods are interleaved round by round so
drift in machine load hits each alike; the median step time over --steps rounds is reported with
its ratio to baseline. Two sizes: `tiny` (the tiny preset: 32 px, 4 OCT slices) and `bigger`
(64 px, 8 OCT slices, wider fusion), or a timm encoder of your choice with --encoder.
Trainer only (no Ray, no MLflow). A benchmark that prints figures, not a timed test.

    python benchmarks/bench_methods.py                         # tiny and bigger, CPU
    python benchmarks/bench_methods.py --sizes bigger --steps 20
    python benchmarks/bench_methods.py --sizes bigger --encoder vit_small_patch16_224 \
        --image-size 224 --batch-size 32                       # on a GPU
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import interleaved_step_medians  # noqa: E402
from trainer.config import make_config  # noqa: E402
from trainer.data.synthetic import synthesize  # noqa: E402
from trainer.methods import available_methods  # noqa: E402

SIZES = {
    "tiny": dict(),
    "bigger": dict(image_size=64, oct_slices=8, proj_dim=64, fusion_heads=4, fusion_layers=2,
                   head_hidden=64, oct_slice_layers=2),
}


def bench_size(name: str, args, root: Path, cache: Path) -> dict[str, float]:
    """Median seconds per train_step for every method at one size."""
    from trainer.loop import Trainer

    fields = dict(SIZES[name], batch_size=args.batch_size)
    if args.encoder:
        fields.update(slo_encoder=args.encoder, oct_encoder=args.encoder,
                      image_size=args.image_size or 224)
    trainers = {}
    for mode in available_methods("fusion"):
        cfg = make_config("fairvision", "race", preset="tiny", data_root=str(root),
                          cache_dir=str(cache), mode=mode, epochs=2, device=args.device, **fields)
        trainers[mode] = Trainer(cfg)
        trainers[mode].model.train(); trainers[mode].classifiers.train()
        trainers[mode].method.train(); trainers[mode].method.begin_epoch(trainers[mode].model, 0)
    device = trainers["baseline"].device
    batch = trainers["baseline"].data["train"].get_batch(np.arange(args.batch_size))
    gen = torch.Generator(device=device).manual_seed(0)
    return interleaved_step_medians(trainers, lambda mode, trainer: batch, gen, args.warmup,
                                    args.steps, device)


def print_table(results: dict[str, dict[str, float]]) -> None:
    sizes = list(results)
    print(f"{'method':<20}" + "".join(f"{s + ' ms':>12}{s + ' x':>10}" for s in sizes))
    for mode in available_methods("fusion"):
        row = f"{mode:<20}"
        for s in sizes:
            ms, ratio = 1000 * results[s][mode], results[s][mode] / results[s]["baseline"]
            row += f"{ms:>12.1f}{ratio:>10.2f}"
        print(row)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,bigger", help="comma-separated: tiny, bigger")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--encoder", default="", help="a timm name for both image encoders")
    p.add_argument("--image-size", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-methods-") as tmp:
        root = synthesize("fairvision", Path(tmp) / "fv", n_train=args.batch_size * 2,
                          n_val=16, n_test=16, seed=0)
        results = {}
        for size in args.sizes.split(","):
            results[size] = bench_size(size, args, root, Path(tmp) / "cache")
            print(f"median step time over {args.steps} steps (batch {args.batch_size}, "
                  f"device {args.device}); x = ratio to baseline", flush=True)
            print_table(results)


if __name__ == "__main__":
    main()
