"""What a checkpoint costs at the PAPER preset, and what the search's checkpoint policy writes per
trial-epoch (issue 13). CPU only, no data and no downloads: the paper preset's fusion model
(randomly initialised), its modality classifiers and both AdamW optimisers with their moments
filled by one step, written the way the trainer writes them (trainer/checkpoint.py).

    python benchmarks/checkpoint_cost.py [--num-samples 16 --max-epochs 10 --grace-period 2
        --reduction-factor 3 --checkpoint-every 5] [--dir /path/on/the/storage] [--json out.json]

Per checkpoint it prints bytes and median write time (3 writes) of: the exact-resume state
(state.pt), the kept best model as safetensors at bf16 / fp16 / fp32, the old format (state +
fp32 best model every epoch), Tune's persist (a copy of the folder to the storage path) and the
read-back. Then, for ASHA's expected trial lengths (a fraction 1/rf of the trials passes each
rung), bytes written per trial-epoch and checkpoint seconds per epoch under the policy for
K = 1, 2, 3, 5, 10, against the old policy: as the training thread would pay them writing
synchronously, and as it pays them now that the search writes in the background (the snapshot,
the part of a write that outlasts the next epoch, and the trial's last write). Seconds are also
given as a share of a 9 s epoch (--epoch-seconds; the GPU estimate in the GPU issue: an assumption
until the GPU benchmark runs there).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.timing import median_s  # noqa: E402

GPU_EPOCH_S = 9.0
GIB = 2 ** 30


def paper_trainer():
    """A Trainer object of the paper preset without data: model, classifiers, method, both
    optimisers (moments filled), best weights = current weights."""
    from trainer.config import ATTRIBUTES, make_config
    from trainer.loop import Trainer, _param_groups
    from trainer.methods import create_method
    from trainer.models import build_classifiers, build_model

    cfg = make_config("fairvision", "gender", preset="paper", pretrained=False, data_root="unused")
    t = Trainer.__new__(Trainer)
    t.cfg, t.device = cfg, torch.device("cpu")
    t.model = build_model(cfg)
    t.classifiers = build_classifiers(cfg, t.model)
    t.method = create_method(cfg, cfg.resolved_modalities(), max(ATTRIBUTES[cfg.attribute]) + 1)
    t.opt = torch.optim.AdamW(_param_groups(t.model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    t.clf_opt = torch.optim.AdamW(t.classifiers.parameters(), lr=cfg.classifier_lr)
    for p in list(t.model.parameters()) + list(t.classifiers.parameters()):
        p.grad = torch.randn_like(p) * 1e-3
    t.opt.step(); t.clf_opt.step()
    t.epoch, t.history = 1, [{"epoch": 1.0, "val/auc": 0.5, "val/es_auc": 0.5}]
    t.best = {"epoch": 1, "score": 0.5, "val": None}
    t.best_weights = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    return t


def measure(trainer, where: Path) -> dict:
    from trainer.checkpoint import BEST_FILE, STATE_FILE, load_best, load_state

    m = {}
    full = where / "full"
    m["full_s"] = median_s(lambda: trainer.save_checkpoint(full, resume=True))
    m["state_bytes"] = (full / STATE_FILE).stat().st_size
    for dtype in ("bfloat16", "float16", "float32"):
        trainer.cfg.best_model_dtype = dtype
        folder = where / f"best-{dtype}"
        m[f"best_{dtype}_s"] = median_s(lambda: trainer.save_checkpoint(folder, resume=False))
        m[f"best_{dtype}_bytes"] = (folder / BEST_FILE).stat().st_size
    trainer.cfg.best_model_dtype = "bfloat16"
    m["state_s"] = max(0.0, m["full_s"] - m["best_bfloat16_s"])

    def old_format():   # before issue 13: state + fp32 best model (torch.save), every epoch
        old = where / "old"
        old.mkdir(exist_ok=True)
        torch.save(trainer.state_dict(), old / "state.pt")
        torch.save({"config": trainer.cfg.to_dict(), "epoch": 1, "model": trainer.best_weights},
                   old / "best_model.pt")
    m["old_s"] = median_s(old_format)
    m["old_bytes"] = sum(p.stat().st_size for p in (where / "old").iterdir())

    def persist():      # Tune copies the reported folder to the storage path
        target = where / "storage"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(full, target)
    m["persist_full_s"] = median_s(persist)
    # the search writes in the background (search/run/trainable.py BackgroundReporter): the training
    # thread pays for the snapshot, a memory copy of the state (the best weights are shared)
    m["snapshot_resume_s"] = median_s(lambda: trainer.snapshot(resume=True))
    m["snapshot_best_s"] = median_s(lambda: trainer.snapshot(resume=False))
    m["persist_best_s"] = median_s(lambda: (shutil.rmtree(where / "storage-best", ignore_errors=True),
                                         shutil.copytree(where / "best-bfloat16", where / "storage-best")))
    m["read_state_s"] = median_s(lambda: load_state(full, "cpu"), 1)
    m["read_best_s"] = median_s(lambda: load_best(full), 1)
    m["params"] = sum(p.numel() for p in trainer.model.parameters())
    return m


def rungs(grace: int, rf: int, max_epochs: int) -> list[int]:
    from search.run.trainable import asha_rungs

    return asha_rungs(grace, rf, max_epochs)


def trial_lengths(grace: int, rf: int, max_epochs: int) -> list[tuple[int, float]]:
    """(epochs, probability) of a trial's length under ASHA: 1/rf of the trials pass each rung."""
    out, p = [], 1.0
    for r in rungs(grace, rf, max_epochs):
        out.append((r, p * (1 - 1 / rf)))
        p /= rf
    return out + [(max_epochs, p)]


def policy_cost(m: dict, every: int, grace: int, rf: int, max_epochs: int, old: bool = False,
                epoch_s: float = GPU_EPOCH_S) -> tuple[float, float, float]:
    """(bytes per trial-epoch, training-thread checkpoint seconds per trial-epoch written on the
    training thread, the same written in the background), in expectation over ASHA's trial
    lengths. Background: the thread pays the snapshot, plus whatever of the write and Tune's
    copy to storage is not done when the next epoch ends (one epoch in flight at most), plus the
    whole last write (the trial ends only once Tune has its last report)."""
    from search.run.trainable import checkpoint_kind, checkpoint_policy

    policy = checkpoint_policy(every, rungs(grace, rf, max_epochs))
    sizes = {"resume": m["state_bytes"] + m["best_bfloat16_bytes"], "best": m["best_bfloat16_bytes"]}
    # written locally, then copied to storage by Tune: both count as time
    sync = {"resume": m["full_s"] + m["persist_full_s"],
            "best": m["best_bfloat16_s"] + m["persist_best_s"]}
    snap = {"resume": m["snapshot_resume_s"], "best": m["snapshot_best_s"]}
    exp_bytes = exp_sync = exp_async = exp_epochs = 0.0
    for length, prob in trial_lengths(grace, rf, max_epochs):
        written = on_thread = in_background = 0.0
        for e in range(1, length + 1):
            if old:
                written += m["old_bytes"]
                on_thread += (m["old_s"] + m["persist_full_s"] * m["old_bytes"] / sizes["resume"])
                continue
            kind = checkpoint_kind(e, max_epochs, policy)
            if kind:
                written += sizes[kind]
                on_thread += sync[kind]
                late = sync[kind] if e == length else max(0.0, sync[kind] - epoch_s)
                in_background += snap[kind] + late
        exp_bytes += prob * written
        exp_sync += prob * on_thread
        exp_async += prob * (on_thread if old else in_background)
        exp_epochs += prob * length
    return exp_bytes / exp_epochs, exp_sync / exp_epochs, exp_async / exp_epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--grace-period", type=int, default=2)
    p.add_argument("--reduction-factor", type=int, default=3)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--dir", default="", help="where to write (default: a temporary folder)")
    p.add_argument("--epoch-seconds", type=float, default=GPU_EPOCH_S,
                   help="an epoch's length, for the shares (default: the GPU estimate, 9 s)")
    p.add_argument("--json", default="")
    a = p.parse_args()
    torch.manual_seed(0)
    trainer = paper_trainer()
    where = Path(tempfile.mkdtemp(prefix="ckpt-cost-", dir=a.dir or None))
    try:
        m = measure(trainer, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"\n== one checkpoint at the paper preset ({m['params'] / 1e6:.0f} M parameters), on {where.parent} ==")
    rows = [("exact-resume state (state.pt: fp32 weights + 2 AdamW)", m["state_bytes"], m["state_s"]),
            ("best model, safetensors bf16 (kept)", m["best_bfloat16_bytes"], m["best_bfloat16_s"]),
            ("best model, safetensors fp16", m["best_float16_bytes"], m["best_float16_s"]),
            ("best model, safetensors fp32", m["best_float32_bytes"], m["best_float32_s"]),
            ("resume checkpoint (state + bf16 best)", m["state_bytes"] + m["best_bfloat16_bytes"], m["full_s"]),
            ("old format, every epoch (state + fp32 best, torch.save)", m["old_bytes"], m["old_s"])]
    for name, size, secs in rows:
        print(f"  {name:<58} {size / GIB:6.3f} GiB  {secs:6.2f} s  ({size / max(secs, 1e-9) / 1e9:.2f} GB/s)")
    print(f"  Tune's persist of a resume checkpoint (copy to local storage)     {m['persist_full_s']:6.2f} s")
    print(f"  snapshot on the training thread (background writes): resume {m['snapshot_resume_s']:.2f} s, "
          f"best only {m['snapshot_best_s']:.3f} s")
    print(f"  read back: state {m['read_state_s']:.2f} s, best model {m['read_best_s']:.2f} s")
    lengths = trial_lengths(a.grace_period, a.reduction_factor, a.max_epochs)
    print(f"\n== per trial-epoch, ASHA grace {a.grace_period}, factor {a.reduction_factor}, max "
          f"{a.max_epochs} epochs (rungs {rungs(a.grace_period, a.reduction_factor, a.max_epochs)}; "
          f"trial lengths {', '.join(f'{n} ep: {q:.0%}' for n, q in lengths)}) ==")
    print(f"  {'':<34} {'':>18} {'written on the training thread':>31} {'in the background (now)':>26}")
    print(f"  {'policy':<34} {'GiB / trial-epoch':>18} {'s / epoch':>12} {'% of ' + format(a.epoch_seconds, 'g') + ' s':>18} "
          f"{'s / epoch':>12} {'% of ' + format(a.epoch_seconds, 'g') + ' s':>13}")
    table = {}
    for label, every, old in [("old: state + fp32 best every epoch", 1, True)] + \
            [(f"--checkpoint-every {k}", k, False) for k in (1, 2, 3, 5, 10, 0)]:
        size, secs, bg = policy_cost(m, every, a.grace_period, a.reduction_factor, a.max_epochs, old,
                                     a.epoch_seconds)
        table[label] = {"gib_per_trial_epoch": size / GIB, "checkpoint_s_per_epoch_sync": secs,
                        "checkpoint_s_per_epoch_background": bg}
        mark = "  <- default" if not old and every == a.checkpoint_every else ""
        print(f"  {label:<34} {size / GIB:18.3f} {secs:12.2f} {100 * secs / a.epoch_seconds:17.1f}% "
              f"{bg:12.2f} {100 * bg / a.epoch_seconds:12.1f}%{mark}")
    print("  (goals: <= 0.4 GiB per trial-epoch, checkpoint time <= 5% of an epoch; seconds scale with "
          "this disk's speed: measure on the cluster's storage with --dir)")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "one_checkpoint": m, "policy": table}, indent=1))


if __name__ == "__main__":
    main()
