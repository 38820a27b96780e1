"""The trainer at the paper's sizes on one GPU: throughput, FLOP utilisation, memory, the effect of
each speed-up, trials per GPU. Trainer only (torch, timm; no Ray, MLflow or Optuna), so it runs on
a bare GPU machine. Writes one JSON (--out) after every section, so a run cut short keeps what it
measured; docs/results.md, section 1, cites it.

Sizes (the paper's): ViT-B/16 SLO encoder and ViT-B/16 OCT slice backbone (random init, the same
compute as pretrained), 224 px, 1 SLO image + 10 OCT slices per sample, batch 32, FairVision
generated at the released full resolution (200x200 SLO, 200x200x200 OCT) and read from the
preprocessed cache.

Sections, in order (a section is skipped when --budget-s would be exceeded):
  env       device, versions, a measured bf16 matmul ceiling beside the datasheet peak
  modes     every method: step time, samples/s, FLOPs per step (torch.utils.flop_counter, forward
            + backward of one step as dispatched: matmuls, convolutions, attention kernels),
            model FLOP utilisation against the bf16 dense peak, peak GPU memory, ratio to baseline
  ladder    baseline and full, each speed-up added in turn and measured in the same process:
            fp32 -> bf16 autocast -> SDPA attention -> fused AdamW -> torch.compile (encoders);
            plus OCT slices one at a time vs batched through the shared backbone, the host copy of
            a cache batch (uint8/fp16) vs a float32 one, and host-device syncs per step
  epoch     a whole training epoch read from the cache: DataLoader workers 0 vs N, samples/s
            against the step-only figure (what loading costs)
  share     1, 2 and 4 trainer processes on one GPU (as fractional-GPU Ray trials): per-process
            and total samples/s, GPU memory per process (nvidia-smi)

    python benchmarks/bench_gpu.py --out results/gpu.json            # on the GPU machine
    python benchmarks/bench_gpu.py --quick --out /tmp/gpu-quick.json # CPU smoke run, tiny sizes
    python benchmarks/bench_gpu.py --project benchmarks/results/bench-gpu-h200.json  # projection
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.config import make_config  # noqa: E402
from trainer.data import build_datasets  # noqa: E402
from trainer.data.synthetic import synthesize  # noqa: E402
from trainer.jsonout import dumps  # noqa: E402

# Dense bf16 tensor-core peak by datasheet (TFLOP/s), by the name torch reports.
PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H200": 989.4, "A100": 312.0}
ALL_MODES = ("baseline", "modality", "fairness", "full", "full_reference", "ogm_ge", "cggm",
             "fis", "sinkhorn", "modality_dropout", "unimodal_ensemble")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(name: str | None) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if name and key in name:
            return value
    return None


def config(args, root: Path, cache: Path, mode: str = "baseline", **kw):
    sizes = dict(image_size=args.image_size, oct_slices=args.oct_slices,
                 batch_size=args.batch_size, slo_encoder=args.encoder, oct_encoder=args.encoder)
    return make_config("fairvision", "race", preset="paper", data_root=str(root),
                       cache_dir=str(cache), mode=mode, pretrained=False,
                       **{"num_workers": 0, **sizes, **kw})


def make_trainer(cfg, datasets):
    from trainer.loop import Trainer
    return Trainer(cfg, datasets=datasets)


def set_attention(trainer, fused: bool) -> int:
    """timm's Attention modules: SDPA (fused kernels) or the explicit softmax(QK^T)V."""
    n = 0
    for mod in trainer.model.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = fused
            n += 1
    return n


def time_steps(trainer, batch, warmup: int, steps: int) -> dict:
    device = trainer.device
    trainer.model.train(); trainer.classifiers.train(); trainer.method.train()
    trainer.method.begin_epoch(trainer.model, 0)
    gen = torch.Generator(device=device).manual_seed(0)
    for _ in range(warmup):
        trainer.train_step(batch, gen)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.train_step(batch, gen)
        sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    out = {"median_s": med, "min_s": min(times), "max_s": max(times), "steps": steps,
           "samples_per_s": len(batch["label"]) / med}
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def count_flops(trainer, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch, gen)
    return float(counter.get_total_flops())


def count_syncs(trainer, batch) -> int | None:
    """Host-device synchronisations in one training step (CUDA's sync debug mode warns on each)."""
    if trainer.device.type != "cuda":
        return None
    import warnings
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step(batch, gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def release() -> None:
    """Give the memory of a trainer whose last reference the caller dropped back to the GPU."""
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Report:
    def __init__(self, path: Path, args):
        self.path, self.data = path, {"args": vars(args), "sections_done": []}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.data["sections_done"].append(key)
        self.data["elapsed_s"] = time.perf_counter() - T0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(dumps(self.data, indent=2))


def section_env(args, device) -> dict:
    import timm
    import transformers
    name = torch.cuda.get_device_name() if device.type == "cuda" else None
    out = {"device": name or "cpu", "torch": torch.__version__, "timm": timm.__version__,
           "transformers": transformers.__version__, "python": sys.version.split()[0],
           "cuda": torch.version.cuda, "peak_bf16_tflops_datasheet": peak_tflops(name)}
    if device.type == "cuda":
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(device); t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        out["matmul_bf16_tflops_measured"] = 2 * n**3 * 10 / (time.perf_counter() - t) / 1e12
        out["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        del a, b
    return out


def section_modes(args, root, cache, datasets, batch, peak) -> dict:
    out = {}
    for mode in args.modes:
        try:
            out[mode] = one_mode(args, root, cache, datasets, batch, peak, mode)
        except Exception as exc:          # one method failing must not lose the others' figures
            out[mode] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"mode {mode}: FAILED {out[mode]['error']}")
            release()
    base = out.get("baseline", {}).get("median_s")
    if base:
        for mode, r in out.items():
            if "median_s" in r:
                r["ratio_to_baseline"] = r["median_s"] / base
    return out


def one_mode(args, root, cache, datasets, batch, peak, mode) -> dict:
    t = time.perf_counter()
    trainer = make_trainer(config(args, root, cache, mode), datasets)
    build_s = time.perf_counter() - t
    if mode == "unimodal_ensemble":   # stage 1 (encoders train alone) is the costly stage
        trainer.method.begin_epoch(trainer.model, 0)
    r = time_steps(trainer, batch, args.warmup, args.steps)
    r["build_s"] = build_s
    r["flops_per_step"] = count_flops(trainer, batch)
    r["achieved_tflops"] = r["flops_per_step"] / r["median_s"] / 1e12
    if peak:
        r["mfu"] = r["achieved_tflops"] / peak
    r["syncs_per_step"] = count_syncs(trainer, batch)
    r["params_m"] = sum(p.numel() for p in trainer.model.parameters()) / 1e6
    log(f"mode {mode}: {r['median_s'] * 1e3:.1f} ms/step, {r['samples_per_s']:.0f} samples/s, "
        f"{r['achieved_tflops']:.0f} TFLOP/s, peak {r.get('peak_gpu_gib', 0):.1f} GiB")
    del trainer
    release()
    return r


@contextmanager
def per_slice_backbone():
    """The OCT encoder as it would be without batching: each slice through the backbone alone."""
    from trainer.models.encoders import SliceStackEncoder
    batched = SliceStackEncoder.forward

    def loop(self, volume):
        b, k, s, _ = volume.shape
        emb = torch.stack([self.backbone(volume[:, i:i + 1]) for i in range(k)], dim=1)
        return self.slice_transformer(emb + self.slice_pos[:, :k]).mean(dim=1)

    SliceStackEncoder.forward = loop
    try:
        yield
    finally:
        SliceStackEncoder.forward = batched


def section_ladder(args, root, cache, datasets, batch, peak) -> dict:
    out = {}
    for mode in args.ladder_modes:
        trainer = make_trainer(config(args, root, cache, mode), datasets)
        flops = count_flops(trainer, batch)
        rows = []

        def measure(label, **extra):
            r = time_steps(trainer, batch, args.warmup, args.steps)
            r.update(label=label, achieved_tflops=flops / r["median_s"] / 1e12, **extra)
            if peak:
                r["mfu"] = r["achieved_tflops"] / peak
            rows.append(r)
            log(f"ladder {mode} {label}: {r['median_s'] * 1e3:.1f} ms/step, "
                f"{r['achieved_tflops']:.0f} TFLOP/s, peak {r.get('peak_gpu_gib', 0):.1f} GiB")

        trainer.set_amp(False); set_attention(trainer, False); trainer.build_optimizers(False)
        measure("fp32, explicit attention, foreach AdamW")
        trainer.set_amp(True)
        measure("+ bf16 autocast")
        set_attention(trainer, True)
        measure("+ SDPA attention")
        trainer.build_optimizers(True)
        measure("+ fused AdamW")
        with per_slice_backbone():
            measure("(OCT slices one at a time instead of batched)", side=True)
        out.setdefault("host_copy", host_copy(trainer, batch))
        syncs = count_syncs(trainer, batch)
        out[mode] = {"flops_per_step": flops, "rows": rows, "syncs_per_step": syncs}
        del trainer
        release()
    return out


def section_compile(args, root, cache, datasets, batch, peak, deadline) -> dict:
    """The trainer's own compile_encoders option against eager, same process, per mode: the first
    step's time (compilation) and the step time after it."""
    out = {}
    for mode in args.ladder_modes:
        if time.perf_counter() + args.compile_budget_s > deadline:
            log(f"compile {mode}: skipped (budget)")
            continue
        row = {}
        for compiled in (False, True):
            trainer = make_trainer(config(args, root, cache, mode, compile_encoders=compiled),
                                   datasets)
            trainer.model.train(); trainer.classifiers.train(); trainer.method.train()
            gen = torch.Generator(device=trainer.device).manual_seed(0)
            sync(trainer.device); t = time.perf_counter()
            trainer.train_step(batch, gen); sync(trainer.device)
            first = time.perf_counter() - t
            r = time_steps(trainer, batch, args.warmup, args.steps)
            r["first_step_s"] = first
            row["compiled" if compiled else "eager"] = r
            log(f"compile {mode} {'compiled' if compiled else 'eager'}: first step {first:.1f} s,"
                f" then {r['median_s'] * 1e3:.1f} ms/step")
            del trainer
            release()
        row["speedup"] = row["eager"]["median_s"] / row["compiled"]["median_s"]
        row["break_even_steps"] = ((row["compiled"]["first_step_s"] - row["eager"]["first_step_s"])
                                   / max(row["eager"]["median_s"] - row["compiled"]["median_s"],
                                         1e-9))
        out[mode] = row
    return out


def host_copy(trainer, batch) -> dict:
    """Host-to-device copy of one batch as cached (uint8 SLO, float16 OCT) vs as float32 inputs
    normalised on the host, both from pinned memory."""
    device = trainer.device
    cached = {k: batch[k] for k in ("slo", "oct")}
    as_f32 = {"slo": batch["slo"].float()[:, None].expand(-1, 3, -1, -1).contiguous(),
              "oct": batch["oct"].float()}

    def copy_s(tensors) -> tuple[float, int]:
        if device.type == "cuda":
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        times = []
        for _ in range(10):
            sync(device); t = time.perf_counter()
            for v in tensors.values():
                v.to(device, non_blocking=True)
            sync(device); times.append(time.perf_counter() - t)
        return statistics.median(times), sum(v.numel() * v.element_size() for v in tensors.values())

    (c_s, c_b), (f_s, f_b) = copy_s(cached), copy_s(as_f32)
    return {"cached_uint8_fp16_s": c_s, "cached_bytes": c_b, "float32_s": f_s, "float32_bytes": f_b}


def tiled(dataset, k: int):
    """The same cached split with its rows repeated k times (reads the same memory-mapped cache)."""
    out = copy.copy(dataset)
    out.rows, out.labels, out.groups = (np.tile(a, k) for a in
                                        (dataset.rows, dataset.labels, dataset.groups))
    out.present = {m: np.tile(p, k) for m, p in getattr(dataset, "present", {}).items()}
    return out


def section_epoch(args, root, cache, datasets, step_samples_per_s) -> dict:
    data = {**datasets, "train": tiled(datasets["train"], args.epoch_repeat)}
    out = {"train_samples": len(data["train"]), "step_only_samples_per_s": step_samples_per_s}
    for workers in (0, args.loader_workers):
        cfg = config(args, root, cache, "baseline", num_workers=workers)
        trainer = make_trainer(cfg, data)
        trainer.train_epoch(progress=False)          # warm-up epoch (kernels, allocator)
        sync(trainer.device); t = time.perf_counter()
        trainer.train_epoch(progress=False)
        sync(trainer.device)
        s = time.perf_counter() - t
        steps = len(data["train"]) // cfg.batch_size
        out[f"workers_{workers}"] = {"epoch_s": s, "samples_per_s": steps * cfg.batch_size / s}
        log(f"epoch, {workers} loader workers: {s:.2f} s, "
            f"{steps * cfg.batch_size / s:.0f} samples/s")
        del trainer
        release()
    return out


def worker_main(args) -> None:
    """One trainer process of the `share` section: build, warm up, wait for the go file, then
    train on one cached batch for --seconds and write what it measured."""
    root, cache = Path(args.workdir) / "fv-full", Path(args.workdir) / "cache"
    cfg = config(args, root, cache, "baseline")
    datasets = build_datasets(cfg)
    trainer = make_trainer(cfg, datasets)
    batch = datasets["train"].get_batch(np.arange(args.batch_size))
    gen = torch.Generator(device=trainer.device).manual_seed(0)
    trainer.model.train(); trainer.classifiers.train()
    for _ in range(args.warmup):
        trainer.train_step(batch, gen)
    sync(trainer.device)
    Path(args.worker_ready).touch()
    while not Path(args.worker_go).exists():
        time.sleep(0.01)
    steps, t = 0, time.perf_counter()
    while time.perf_counter() - t < args.seconds:
        trainer.train_step(batch, gen)
        sync(trainer.device)
        steps += 1
    s = time.perf_counter() - t
    res = {"steps": steps, "seconds": s, "samples_per_s": steps * args.batch_size / s}
    if trainer.device.type == "cuda":
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    Path(args.worker_out).write_text(json.dumps(res))


def nvidia_smi_memory() -> dict[int, float]:
    try:
        text = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out = {}
    for line in text.strip().splitlines():
        pid, mem = (x.strip() for x in line.split(","))
        out[int(pid)] = float(mem) / 1024
    return out


def section_share(args, work: Path) -> dict:
    out = {}
    for n in args.share:
        tmp = Path(tempfile.mkdtemp(dir=work))
        go = tmp / "go"
        procs = []
        for i in range(n):
            cmd = [sys.executable, __file__, "--worker", "--workdir", str(work),
                   "--worker-ready", str(tmp / f"ready{i}"), "--worker-go", str(go),
                   "--worker-out", str(tmp / f"out{i}.json"), "--seconds", str(args.seconds),
                   "--encoder", args.encoder, "--image-size", str(args.image_size),
                   "--oct-slices", str(args.oct_slices), "--batch-size", str(args.batch_size),
                   "--warmup", str(args.warmup)]
            procs.append(subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "2"}))
        t = time.perf_counter()
        while not all((tmp / f"ready{i}").exists() for i in range(n)):
            if any(p.poll() not in (None, 0) for p in procs) or time.perf_counter() - t > 300:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"share {n}: a worker failed to start")
            time.sleep(0.1)
        go.touch()
        time.sleep(min(args.seconds / 2, 5))
        mem = nvidia_smi_memory()
        for p in procs:
            p.wait(timeout=args.seconds + 120)
        rows = [json.loads((tmp / f"out{i}.json").read_text()) for i in range(n)]
        for p, r in zip(procs, rows):
            r["nvidia_smi_gib"] = mem.get(p.pid)
        total = sum(r["samples_per_s"] for r in rows)
        out[str(n)] = {"processes": rows, "total_samples_per_s": total,
                       "per_process_samples_per_s": total / n}
        log(f"share {n} processes: total {total:.0f} samples/s, "
            f"memory {[r['nvidia_smi_gib'] or r.get('peak_reserved_gib') for r in rows]}")
    one = out.get("1", {}).get("total_samples_per_s")
    if one:
        for r in out.values():
            r["total_over_one"] = r["total_samples_per_s"] / one
    return out


ASHA_SHARE = Path(__file__).resolve().parent / "results" / "asha-share-100x10-g2f3.json"


def asha_share(path=ASHA_SHARE, epochs: int = 10, grace: int = 2, factor: int = 3) -> dict:
    """ASHA's share of the trials' epochs, measured by benchmarks/asha_share.py with the same
    max epochs, grace period and reduction factor as the projection (a share measured with
    another schedule says nothing about this one: refused)."""
    r = json.loads(Path(path).read_text())
    got = (r["args"]["max_epochs"], r["args"]["grace_period"], r["args"]["reduction_factor"])
    if got != (epochs, grace, factor):
        raise ValueError(f"{path}: ASHA share measured with max_epochs, grace, factor = {got}, "
                         f"the projection needs {(epochs, grace, factor)}")
    return {"measured": r["asha_epoch_share"], "synchronous": r["synchronous_share"],
            "source": os.path.relpath(Path(path).resolve(), ASHA_SHARE.parents[2]),
            "trials": r["trials"]}


def projection(data: dict, trials: int = 100, epochs: int = 10, n_train: int = 6000,
               n_val: int = 1000, gpus: int = 8, epoch_fraction=None,
               share_file=ASHA_SHARE) -> dict:
    """A search at full FairVision size on one node of `gpus` GPUs, one trial per GPU, from the
    measured figures: training at the epoch section's rate (steps + loading from the cache),
    validation as a forward pass (a third of a training step's FLOPs per sample), and ASHA's share
    of the trials' epochs (grace 2, factor 3, the service's defaults) read from `share_file`
    (benchmarks/asha_share.py: the measured share, and the synchronous successive-halving
    arithmetic beside it), unless epoch_fraction gives the shares."""
    share = None
    if epoch_fraction is None:
        share = asha_share(share_file, epochs)
        epoch_fraction = (share["synchronous"], share["measured"])
    train_rate = (data.get("epoch", {}).get("workers_0", {}).get("samples_per_s")
                  or data["modes"]["baseline"]["samples_per_s"])
    epoch_s = n_train / train_rate + n_val / (3 * data["modes"]["baseline"]["samples_per_s"])
    out = {"assumptions": dict(trials=trials, epochs=epochs, n_train=n_train, n_val=n_val,
                               gpus=gpus, epoch_fraction=list(epoch_fraction),
                               train_samples_per_s=train_rate, asha_share=share),
           "epoch_s": epoch_s}
    for f in epoch_fraction:
        gpu_s = trials * epochs * f * epoch_s
        out[f"fraction_{f:.3g}"] = {"trial_epochs": trials * epochs * f, "gpu_hours": gpu_s / 3600,
                                    "wall_minutes": gpu_s / gpus / 60}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="results/bench-gpu.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke run")
    p.add_argument("--encoder", default="vit_base_patch16_224")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--oct-slices", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--modes", default=",".join(ALL_MODES))
    p.add_argument("--ladder-modes", default="baseline,full")
    p.add_argument("--sections", default="env,modes,ladder,epoch,share,compile")
    p.add_argument("--n-train", type=int, default=32, help="full-size generated train samples")
    p.add_argument("--epoch-repeat", type=int, default=8,
                   help="epoch section: the train rows repeated this often (the cache is read "
                        "the same way; generating full-size data is slow)")
    p.add_argument("--loader-workers", type=int, default=6)
    p.add_argument("--share", default="1,2,4", help="process counts for the share section")
    p.add_argument("--seconds", type=float, default=12.0, help="share: timed window per process")
    p.add_argument("--compile-budget-s", type=float, default=150.0)
    p.add_argument("--budget-s", type=float, default=480.0, help="skip sections past this")
    p.add_argument("--workdir")
    p.add_argument("--project", metavar="JSON", help="only print the projection from a result")
    p.add_argument("--asha-share", default=str(ASHA_SHARE), metavar="JSON",
                   help="ASHA's epoch share for the projection (benchmarks/asha_share.py --json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-ready", help=argparse.SUPPRESS)
    p.add_argument("--worker-go", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args)
    if args.project:
        return print(dumps(projection(json.loads(Path(args.project).read_text()),
                                      share_file=args.asha_share), indent=2))
    if args.quick:
        args.encoder, args.image_size, args.oct_slices, args.batch_size = "tiny_vit", 32, 4, 8
        args.steps, args.warmup, args.n_train, args.seconds = 3, 1, 24, 2.0
        args.loader_workers = 2
    args.modes = [m for m in args.modes.split(",") if m]
    args.ladder_modes = [m for m in args.ladder_modes.split(",") if m]
    args.share = [int(x) for x in args.share.split(",") if x]
    sections = args.sections.split(",")
    deadline = T0 + args.budget_s
    torch.backends.cuda.matmul.allow_tf32 = True     # fp32 rows: TF32 tensor cores, as default
    torch.backends.cudnn.allow_tf32 = True           # training scripts enable them

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = Report(Path(args.out), args)
    workdir_given = args.workdir is not None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-gpu-"))
    args.workdir = str(work)
    root, cache = work / "fv-full", work / "cache"
    try:
        env = section_env(args, device)
        report.put("env", env)
        log(f"env: {env}")
        peak = env.get("peak_bf16_tflops_datasheet")
        gen_s = None
        if not root.exists():
            t = time.perf_counter()
            synthesize("fairvision", root, n_train=args.n_train, n_val=8, n_test=8,
                       full_size=not args.quick, seed=0, modalities=("slo", "oct"))
            gen_s = time.perf_counter() - t
        t = time.perf_counter()
        datasets = build_datasets(config(args, root, cache))
        cache_s = time.perf_counter() - t
        n = sum(len(d) for d in datasets.values())
        report.put("data", {"samples": n, "generate_s": gen_s, "cache_build_s": cache_s,
                            "cache_build_samples_per_s": n / cache_s,
                            "full_size": not args.quick})
        log(f"data: {n} samples generated in {gen_s:.1f} s, cached in {cache_s:.1f} s")
        batch = datasets["train"].get_batch(np.arange(args.batch_size))
        for name in sections[1:]:
            if time.perf_counter() > deadline:
                log(f"section {name} skipped: budget {args.budget_s} s spent")
                continue
            log(f"section {name}")
            try:
                run_section(name, args, report, root, cache, datasets, batch, peak, work,
                            deadline)
            except Exception as exc:      # keep the other sections' figures
                import traceback
                traceback.print_exc()
                report.put(name, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        if not workdir_given:
            shutil.rmtree(work, ignore_errors=True)
    if "median_s" in report.data.get("modes", {}).get("baseline", {}):
        try:
            report.put("projection", projection(report.data, share_file=args.asha_share))
        except (OSError, ValueError, KeyError) as exc:   # the measured figures are kept
            report.put("projection", {"error": f"{type(exc).__name__}: {exc}"})
    log(f"done: {args.out}")


def run_section(name, args, report, root, cache, datasets, batch, peak, work, deadline) -> None:
    if name == "modes":
        report.put("modes", section_modes(args, root, cache, datasets, batch, peak))
    elif name == "ladder":
        report.put("ladder", section_ladder(args, root, cache, datasets, batch, peak))
    elif name == "compile":
        report.put("compile", section_compile(args, root, cache, datasets, batch, peak, deadline))
    elif name == "epoch":
        step = report.data.get("modes", {}).get("baseline", {}).get("samples_per_s")
        report.put("epoch", section_epoch(args, root, cache, datasets, step))
    elif name == "share":
        report.put("share", section_share(args, work))
    else:
        raise ValueError(f"--sections: unknown section {name!r}")

if __name__ == "__main__":
    main()
