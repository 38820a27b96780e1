"""What the missing-modality block (val/test "missing", issue 22) adds to an epoch.

Every evaluation encodes the split once; the block re-fuses those features M more times (each
modality marked absent in turn), no encoder pass. This prints, on the tiny preset, the median
time of a training epoch, the one encoder pass over validation, one fusion pass, the reliance
block (M x 5 fusion passes) and the missing block, and the block's share of the epoch; then the
same fusion pass at the paper's fusion size (FairVision: width 128, 2 layers, 4 heads; FairVLMed:
256, 3, 8) over --n-real samples of random features, which is what the block costs at the real
size (the encoders, which dominate there, are not re-run). A benchmark that prints figures, not a
timed test. Trainer only (no Ray, no MLflow).

    python benchmarks/bench_missing_eval.py                    # tiny preset, CPU
    python benchmarks/bench_missing_eval.py --n-real 10000 --repeats 5
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import median_s  # noqa: E402
from trainer.config import make_config, paper_settings
from trainer.data.synthetic import synthesize
from trainer.loop import Trainer
from trainer.models import build_model
from trainer.reliance import encode_split, fused_probs, missing_modalities, modality_reliance


def tiny(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = synthesize("fairvision", Path(tmp) / "fairvision", n_train=args.n_train,
                          n_val=args.n_val, n_test=16, seed=0, missing="slo=0.3,oct=0.2")
        cfg = make_config("fairvision", "race", preset="tiny", data_root=str(root),
                          cache_dir=str(Path(tmp) / "cache"), device="cpu", bootstrap=0)
        trainer = Trainer(cfg)
        epoch = median_s(lambda: trainer.train_epoch(progress=False), args.repeats)
        encoded = encode_split(trainer, "val")
        features, _, _, present = encoded
        probs = fused_probs(trainer, features, present=present)
        rows = {
            "training epoch": epoch,
            "encode val (once per evaluation)": median_s(lambda: encode_split(trainer, "val"),
                                                        args.repeats),
            "one fusion pass over val": median_s(
                lambda: fused_probs(trainer, features, present=present), args.repeats),
            "reliance block (M x 5 fusion passes)": median_s(
                lambda: modality_reliance(trainer, "val", encoded=encoded, probs=probs),
                args.repeats),
            "missing block (M fusion passes + metrics)": median_s(
                lambda: missing_modalities(trainer, encoded, probs), args.repeats),
            "whole evaluate of val": median_s(lambda: trainer.evaluate("val"), args.repeats),
        }
    print(f"tiny preset, CPU, {torch.get_num_threads()} threads, train {args.n_train}, "
          f"val {args.n_val}, M = 2, median of {args.repeats}")
    for name, sec in rows.items():
        print(f"  {name:44s} {sec * 1000:9.1f} ms")
    block = rows["missing block (M fusion passes + metrics)"]
    share = block / (epoch + rows["whole evaluate of val"])
    print(f"  missing block / (epoch + evaluate): {100 * share:.1f} %")


def real_size(args) -> None:
    print(f"fusion only at the paper's sizes, {args.n_real} samples, M = 2, batch 64")
    for dataset in ("fairvision", "fairvlmed"):
        s = paper_settings(dataset, "race")
        cfg = make_config(dataset, "race", preset="tiny", proj_dim=s["proj_dim"],
                          fusion_heads=s["fusion_heads"], fusion_layers=s["fusion_layers"],
                          head_hidden=s["head_hidden"], batch_size=32, device="cpu")
        model = build_model(cfg).eval()
        feats = {m: torch.randn(args.n_real, model.encoders[m].out_dim)
                 for m in model.modalities}
        present = {m: torch.ones(args.n_real, dtype=torch.bool) for m in model.modalities}
        shim = type("T", (), {"cfg": cfg, "model": model, "device": torch.device("cpu"),
                              "autocast": staticmethod(lambda: torch.autocast("cpu",
                                                                               enabled=False))})
        one = median_s(lambda: fused_probs(
            shim, feats, present={**present, model.modalities[0]:
                                  torch.zeros(args.n_real, dtype=torch.bool)}), args.repeats)
        print(f"  {dataset:10s} width {s['proj_dim']:3d}, {s['fusion_layers']} layers: one "
              f"masked fusion pass {one:6.2f} s, the missing block (M = 2) {2 * one:6.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-val", type=int, default=128)
    p.add_argument("--n-real", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    tiny(args)
    real_size(args)


if __name__ == "__main__":
    main()
