"""Parameter counts and step time of the vision-language modes (clip, fairclip official and
aligned, fairclip_dbpm, dualfairvl) at a preset, beside the plain fusion model (`baseline`).

Same generated FairVLMed, same batch for every mode; modes interleaved round by round so drift
in machine load hits each alike; the median step time over --steps rounds. Trainer only (no Ray,
no MLflow). A benchmark that prints figures, not a timed test.

    python benchmarks/bench_vl.py                                  # tiny preset, CPU
    python benchmarks/bench_vl.py --preset paper --device cuda     # ViT-B/16 CLIP (hub cache)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import interleaved_step_medians  # noqa: E402
from trainer.config import make_config  # noqa: E402
from trainer.data.synthetic import synthesize  # noqa: E402

MODES = {"baseline": [], "clip": [], "fairclip": ["fairclip_variant=official"],
         "fairclip_aligned": ["fairclip_variant=aligned"], "fairclip_dbpm": [], "dualfairvl": []}


def build(args, root: Path, cache: Path) -> dict:
    from trainer.loop import Trainer

    trainers = {}
    for name, sets in MODES.items():
        mode = "fairclip" if name == "fairclip_aligned" else name
        cfg = make_config("fairvlmed", "gender", preset=args.preset, mode=mode, data_root=str(root),
                          cache_dir=str(cache), batch_size=args.batch_size, device=args.device,
                          sets=sets + ["dbpm_warmup_epochs=0"] * (mode == "fairclip_dbpm"))
        trainer = Trainer(cfg)
        trainer.model.train(); trainer.classifiers.train(); trainer.method.train()
        trainer.method.begin_epoch(trainer.model, 0)
        trainers[name] = trainer
    return trainers


def params(trainer) -> dict:
    model = trainer.model
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="JSON file for the figures")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-vl-") as tmp:
        root = synthesize("fairvlmed", Path(tmp) / "vl", n_train=args.batch_size * 4, n_val=16,
                          n_test=16, seed=0, full_size=args.preset == "paper")
        trainers = build(args, root, Path(tmp) / "cache")
        device = trainers["clip"].device
        batch = trainers["clip"].data["train"].get_batch(np.arange(args.batch_size))
        gen = torch.Generator(device=device).manual_seed(0)
        medians = interleaved_step_medians(
            trainers, lambda name, trainer: batch if name != "baseline" else
            trainer.data["train"].get_batch(np.arange(args.batch_size)), gen, args.warmup, args.steps, device)
        rows = {name: {**params(t), "step_ms": 1000 * medians[name]}
                for name, t in trainers.items()}
    print(f"preset {args.preset}, batch {args.batch_size}, device {args.device}, median over "
          f"{args.steps} steps; x = step time / clip")
    print(f"{'mode':<18}{'params':>12}{'trainable':>12}{'step ms':>10}{'x':>7}")
    for name, row in rows.items():
        print(f"{name:<18}{row['total']:>12,}{row['trainable']:>12,}{row['step_ms']:>10.1f}"
              f"{row['step_ms'] / rows['clip']['step_ms']:>7.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "modes": rows}, indent=1))


if __name__ == "__main__":
    main()
