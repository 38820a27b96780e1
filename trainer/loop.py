"""fit(): epochs, validation, per-epoch callback, checkpoint and exact resume, final test.

The epoch loop reads top to bottom: forward, the method's step (trainer/methods/: MultiFair or a
comparison method, chosen by cfg.mode), backward (with the modality-branch gradient hooks), the
method's gradient edits, clip, step (per-encoder learning rates when the factors act on the
update), accumulate statistics on the device. The best epoch is chosen on
VALIDATION (cfg.select_metric); the test split is evaluated once, at the end, with bootstrap.
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from trainer.checkpoint import (as_kept, checkpoint_weights, load_best, load_state, snapshot,
                                write_checkpoint)
from trainer.config import ATTRIBUTES, TrainConfig, config_from_dict
from trainer.data import DataError, build_datasets
from trainer.data.resplit import resplit
from trainer.data.transforms import batch_transform
from trainer.guards import FiniteWatch, check_predictions, check_train_size
from trainer.inference import batches, forward, to_device
from trainer.jsonout import dumps
from trainer.metrics import at_val_threshold, bootstrap_fairness, evaluate_fairness
from trainer.models import build_classifiers, complete, create_model, create_tokenizer
from trainer.methods import create_method, method_class
from trainer.metrics import auc_summary
from trainer.reliance import (encode_split, flat_missing, flat_reliance, fused_probs,
                              missing_modalities, modality_reliance)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _param_groups(model: nn.Module) -> list[dict]:
    """One AdamW group per encoder (its lr can be scaled per step) and one for the rest."""
    groups = [{"params": list(model.encoders[m].parameters()), "modality": m}
              for m in model.modalities]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoders.")]
    return groups + [{"params": rest, "modality": None}]


@dataclass
class EpochReport:
    epoch: int
    val: dict
    train: dict
    is_best: bool
    save_checkpoint: Callable[[str | Path], Path] = field(repr=False)
    history: list = field(default_factory=list, repr=False)   # flat() of every epoch so far
    # snapshot(resume=True): the checkpoint as of this epoch, to be written later or on another
    # thread (trainer.checkpoint.write_snapshot)
    snapshot: Callable[..., object] | None = field(default=None, repr=False)

    def flat(self) -> dict[str, float]:
        out = {f"train/{k}": float(v) for k, v in self.train.items()
               if not k.startswith(("balance/", "fairness_factor/", "scale/", "trigger"))}
        out.update({f"mod/{k.replace('fairness_factor', 'fairness')}": float(v)
                    for k, v in self.train.items()
                    if k.startswith(("balance/", "fairness_factor/", "scale/"))})
        out["mod/trigger_rate"] = float(self.train.get("trigger", 0.0))
        for key in ("auc", "es_auc", "dpd", "deodds", "threshold_val", "dpd_at_val_threshold",
                    "deodds_at_val_threshold"):
            out[f"val/{key}"] = float(self.val[key])
        out.update(flat_reliance(self.val.get("reliance", {}), "val"))
        out.update(flat_missing(self.val.get("missing", {}), "val"))
        out.update({f"val/auc/{g}": float(v) for g, v in self.val["group_auc"].items()})
        out["epoch"] = float(self.epoch)
        return out


class Trainer:
    """Owns model, classifiers, optimisers, the training method and the best-so-far state."""

    def __init__(self, cfg: TrainConfig, datasets: dict | None = None):
        self.cfg = cfg.validate()
        self.device = _device(cfg)
        if self.device.type == "cuda" and cfg.max_gpu_memory_fraction < 1:
            torch.cuda.set_per_process_memory_fraction(cfg.max_gpu_memory_fraction, self.device)
        _seed_everything(cfg.seed)
        mods = cfg.resolved_modalities()
        family = method_class(cfg.mode).family        # the model family: fusion, clip, ...
        tokenizer = create_tokenizer(family, cfg) if "note" in mods else None
        self.data = dict(datasets or build_datasets(cfg, tokenizer=tokenizer))
        if cfg.resplit_folds:   # repeats that resample train/val too (trainer/data/resplit.py)
            self.data = resplit(self.data, cfg.resplit_folds, cfg.resplit_fold)
        check_train_size(len(self.data["train"]), cfg.batch_size)
        if cfg.shift_root and cfg.evaluate_test and "shift" not in self.data:
            # the other site's test split through the same data layer, opened now: a bad folder
            # fails before training, not after it
            self.data["shift"] = shift_test_split(cfg, tokenizer)
        self.group_names = ATTRIBUTES[cfg.attribute]
        self.model = create_model(family, cfg).to(self.device)
        self.classifiers = build_classifiers(cfg, self.model).to(self.device)
        self.method = create_method(cfg, mods, max(self.group_names) + 1).to(self.device)
        self.method.attach(self.data, self.device)   # FairCLIP's group batches, DBPM's memory
        if cfg.compile_encoders:     # in place: state_dict keys (checkpoints) do not change
            for encoder in self.model.encoders.values():
                encoder.compile()
        self.build_optimizers(cfg.fused_optimizer)
        self.epoch, self.history = 0, []
        self.best = {"epoch": 0, "score": -float("inf"), "val": None}
        self.best_weights: dict | None = None
        self.set_amp(cfg.amp)

    def set_amp(self, on: bool) -> None:
        """bf16 autocast for forward passes (CUDA only; a no-op context elsewhere)."""
        on = on and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on else nullcontext

    def build_optimizers(self, fused: bool) -> None:
        """AdamW for the model (one group per encoder) and for the modality classifiers; `fused`:
        one kernel per step on CUDA (docs/results.md, GPU section), torch's default elsewhere."""
        cfg = self.cfg
        kw = dict(fused=True) if fused and self.device.type == "cuda" else {}
        self.opt = self.method.make_optimizer(_param_groups(self.model), cfg, **kw)
        self.clf_opt = torch.optim.AdamW(self.classifiers.parameters(), lr=cfg.classifier_lr,
                                         weight_decay=cfg.classifier_weight_decay, **kw)

    def train_step(self, batch: dict, generator: torch.Generator | None) -> dict:
        """One step of the method on a collated batch; returns the step contract dict (tensors)."""
        cfg, model, method = self.cfg, self.model, self.method
        batch = batch_transform(to_device(complete(batch), self.device), train=method.augment,
                                generator=generator)
        labels, groups = batch["label"].float(), batch["group"].long()
        present = batch.get("present")                     # None: every modality in every row
        method.begin_step(batch)                                                  # (DBPM: index)
        with self.autocast():
            features = model.encode(batch)                                        # forward
            logits = model.fuse(*method.features(features, present, generator))  # (dropout, frozen)
            out = method.step(model, self.classifiers, features, logits, labels, groups,
                              present)                                            # losses
        on_update = cfg.modulation_target == "update"
        for i, m in enumerate(method.modalities):                                 # modulate
            if not on_update and features[m].requires_grad:
                features[m].register_hook(lambda g, s=out["scale"][i]: g * s.to(g.dtype))
        self.opt.zero_grad(set_to_none=True); self.clf_opt.zero_grad(set_to_none=True)
        (out["loss"] + out["classifier_loss"]).backward()                         # backward
        method.after_backward(model, out, generator)                              # (OGM-GE)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)               # clip
        nn.utils.clip_grad_norm_(self.classifiers.parameters(), cfg.grad_clip)
        if on_update:                        # Eq. 6 read literally: the factor scales the lr
            self._scale_encoder_lr(out["scale"])
        self.opt.step(); self.clf_opt.step()                                      # step
        return out

    def _scale_encoder_lr(self, scale: torch.Tensor) -> None:
        """Encoder m's learning rate = lr * scale_m for this step. AdamW normalises the gradient's
        size away, so a gradient factor mostly vanishes; an lr factor does not. (float(): one
        device sync per step, on this path only.)"""
        for group in self.opt.param_groups:
            if group["modality"] is not None:
                i = self.method.modalities.index(group["modality"])
                group["lr"] = self.cfg.lr * float(scale[i])

    # --- one training epoch ---------------------------------------------------------------
    def train_epoch(self, progress: bool = True,
                    on_step: Callable[[], None] | None = None) -> dict[str, float]:
        cfg = self.cfg
        self.model.train(); self.classifiers.train(); self.method.train()
        self.method.begin_epoch(self.model, self.epoch)                        # stage schedules
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch)   # resumable order
        aug = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + self.epoch)
        train = self.data["train"]
        order = torch.randperm(len(train), generator=gen)
        n_steps = len(order) // cfg.batch_size
        sums: dict[str, torch.Tensor] = {}
        reader = batches(train, order, cfg.batch_size, drop_last=True,
                         num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda")
        bar = tqdm(reader, total=n_steps,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False, disable=not progress)
        watch = FiniteWatch()                                    # divergence: one sync per epoch
        for batch in bar:
            out = self.train_step(batch, aug)
            if on_step is not None:     # e.g. the search ends a trial that Tune stopped
                on_step()
            watch.add(out)
            for k, v in out.items():                                              # log (no sync)
                if v.ndim == 0:
                    sums[k] = sums.get(k, 0) + v.detach().float()
        watch.check(self.epoch + 1)
        self.epoch += 1
        return {k: (v / max(n_steps, 1)).item() for k, v in sums.items()}

    # --- evaluation -----------------------------------------------------------------------
    def forward(self, split: str, encode: bool = False):
        """(batch, logits or encoded features) per batch of a split: the one inference path
        (trainer/inference.py) at this trainer's device, batch size, workers and autocast."""
        self.model.eval(); self.method.eval()
        return forward(self.model, self.data[split], self.cfg.batch_size * 2, self.device,
                       self.cfg.num_workers, self.autocast, encode)

    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, probabilities, groups) of a split."""
        probs, labels, groups = [], [], []
        for batch, logits in self.forward(split):
            probs.append(logits.sigmoid().cpu())
            labels.append(batch["label"].cpu()); groups.append(batch["group"].cpu())
        return (torch.cat(labels).numpy(), torch.cat(probs).numpy(), torch.cat(groups).numpy())

    def predict_encoded(self, split: str):
        """(labels, probabilities, groups, encoded) of a split from ONE encoder pass: the
        probabilities are the fusion of the encoded features (model(batch) = fuse(encode(batch))),
        and `encoded` serves modality reliance, which only re-runs the fusion."""
        encoded = encode_split(self, split)
        features, y, g, present = encoded
        return y, fused_probs(self, features, present=present), g, encoded

    def evaluate(self, split: str, threshold_val: float | None = None) -> dict:
        """Metrics at cfg.threshold, at the validation-chosen threshold (chosen on these
        predictions when threshold_val is None), modality reliance and the missing-modality
        block (each modality removed; the samples that lack it), all from one encoder pass."""
        y, p, g, encoded = self.predict_encoded(split)
        check_predictions(p, split, self.epoch)
        out = evaluate_fairness(y, p, g, threshold=self.cfg.threshold,
                                group_names=self.group_names)
        out.update(at_val_threshold(y, p, g, threshold_val, self.group_names))
        return {**out, "reliance": modality_reliance(self, split, encoded=encoded, probs=p),
                "missing": missing_modalities(self, encoded, p)}

    # --- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "epoch": self.epoch, "history": self.history,
                "best": self.best, "model": self.model.state_dict(),
                "classifiers": self.classifiers.state_dict(), "opt": self.opt.state_dict(),
                "clf_opt": self.clf_opt.state_dict(), "modulator": self.method.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def save_checkpoint(self, directory: str | Path, resume: bool = True) -> Path:
        """The kept best model (weights only, cfg.best_model_dtype) and, with `resume`, the exact
        training state; trainer/checkpoint.py describes the folder."""
        return write_checkpoint(self, directory, resume)

    def snapshot(self, resume: bool = True):
        """The checkpoint as of now, copied off the live tensors (trainer/checkpoint.py)."""
        return snapshot(self, resume)

    def load_checkpoint(self, directory: str | Path) -> None:
        state = load_state(directory, self.device)
        self.model.load_state_dict(state["model"])
        self.classifiers.load_state_dict(state["classifiers"])
        self.opt.load_state_dict(state["opt"]); self.clf_opt.load_state_dict(state["clf_opt"])
        self.method.load_state_dict(state["modulator"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu()); np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        # the kept best model as stored (bf16 by default): the weights a later checkpoint keeps
        # and the final test scores; training itself resumes from the exact fp32 state
        self.best_weights = load_best(directory)


def _is_better(score: float, best: float) -> bool:
    return bool(np.isfinite(score)) and score > best


def fit(cfg: TrainConfig, on_epoch: Callable[[EpochReport], None] | None = None,
        resume_from: str | Path | None = None, progress: bool = True,
        datasets: dict | None = None, on_step: Callable[[], None] | None = None) -> dict:
    """Train cfg.epochs epochs (continuing from `resume_from` if given); see docs/architecture.md.
    on_step() is called after every optimiser step (it may raise to end the fit)."""
    trainer = Trainer(cfg, datasets=datasets)
    if resume_from:
        trainer.load_checkpoint(resume_from)
    while trainer.epoch < cfg.epochs:
        train_stats = trainer.train_epoch(progress=progress, on_step=on_step)
        val = trainer.evaluate("val")
        score = val[cfg.select_metric]
        is_best = _is_better(score, trainer.best["score"])
        if is_best:
            trainer.best = {"epoch": trainer.epoch, "score": float(score), "val": val}
            trainer.best_weights = {k: v.detach().cpu().clone()
                                    for k, v in trainer.model.state_dict().items()}
        report = EpochReport(trainer.epoch, val, train_stats, is_best, trainer.save_checkpoint,
                             trainer.history, trainer.snapshot)
        trainer.history.append(report.flat())
        if on_epoch is not None:
            on_epoch(report)
    return _finish(trainer)


def _score_test(trainer: Trainer, keep_predictions: bool = False) -> dict:
    """Point metrics and cfg.bootstrap resamples (mean, std) on the test split; with
    `keep_predictions` also the test pass itself ("predictions": labels, probabilities, groups,
    group names), for a caller that compares it with another model's (search's paired test)."""
    cfg = trainer.cfg
    y, p, g, encoded = trainer.predict_encoded("test")
    val = trainer.best.get("val") or {}
    threshold_val = (val["threshold_val"] if "threshold_val" in val   # chosen epoch's, on val
                     else trainer.evaluate("val")["threshold_val"])
    point = {**evaluate_fairness(y, p, g, cfg.threshold, trainer.group_names),
             **at_val_threshold(y, p, g, threshold_val, trainer.group_names),
             "reliance": modality_reliance(trainer, "test", encoded=encoded, probs=p)}
    robust = {"missing": missing_modalities(trainer, encoded, p)}
    if "shift" in trainer.data:
        robust["shift"] = _score_shift(trainer, threshold_val)
    if keep_predictions:
        robust["predictions"] = {"label": y, "probability": p, "group": g,
                                 "group_names": trainer.group_names}
    if not cfg.bootstrap:                                       # bootstrap=0: point only
        return {"point": point, **robust}
    return {"point": point,
            **bootstrap_fairness(y, p, g, n=cfg.bootstrap, seed=cfg.seed,
                                 threshold=cfg.threshold, group_names=trainer.group_names),
            **robust}


def _score_shift(trainer: Trainer, threshold_val: float) -> dict:
    """The other site's test split (cfg.shift_root): same model, the same validation threshold;
    point estimates, with its own missing-modality block. dpd/deodds at cfg.threshold as the
    same-site point; *_at_val_threshold at the validation threshold."""
    y, p, g, encoded = trainer.predict_encoded("shift")
    check_predictions(p, "shift", trainer.epoch)
    names, cfg = trainer.group_names, trainer.cfg
    out = {"n": int(len(y)), **auc_summary(y, p, g, names)}
    if np.isfinite(out["auc"]):
        fair = evaluate_fairness(y, p, g, cfg.threshold, names)
        out.update(dpd=fair["dpd"], deodds=fair["deodds"],
                   **at_val_threshold(y, p, g, threshold_val, names))
    else:                  # one class only: rates' gaps are still defined, AUCs are not
        out.update(dpd=float("nan"), deodds=float("nan"), threshold_val=threshold_val,
                   dpd_at_val_threshold=float("nan"), deodds_at_val_threshold=float("nan"))
    out["missing"] = missing_modalities(trainer, encoded, p)
    return out


def shift_test_split(cfg: TrainConfig, tokenizer=None):
    """The TEST split of the site at cfg.shift_root, read through the same data layer (cache,
    audit, presence) with this fit's preprocessing and attribute."""
    if "://" not in cfg.shift_root and not Path(cfg.shift_root).is_dir():
        raise DataError(f"shift_root {cfg.shift_root}: no such folder (--shift-root names the "
                        f"data root of another site, in the same layout as --data-root)")
    return build_datasets(cfg.replace(data_root=cfg.shift_root, shift_root=""),
                          tokenizer=tokenizer, splits=("test",))["test"]   # its test split only


def _finish(trainer: Trainer) -> dict:
    test, private = None, {}
    if trainer.cfg.evaluate_test and trainer.best_weights is not None:
        # the validation-chosen epoch, as the kept best model holds it (cfg.best_model_dtype)
        trainer.model.load_state_dict(as_kept(trainer.best_weights, trainer.cfg.best_model_dtype))
        test = _score_test(trainer)
        report = trainer.method.final_report(trainer)   # VL: linear probe, DBPM's bad pairs
        test.update(report.get("test", {}))
        private = report.get("private", {})            # file names: local files only
    return {"best_epoch": trainer.best["epoch"], "val": trainer.best["val"], "test": test,
            "history": trainer.history, "config": trainer.cfg.to_dict(), "private": private}


def load_model(checkpoint_dir: str | Path, best: bool = True) -> nn.Module:
    """The fusion model stored in a checkpoint directory (best epoch by default), on the CPU."""
    state = checkpoint_weights(checkpoint_dir, best)
    cfg = config_from_dict(state["config"]).replace(pretrained=False)
    model = create_model(method_class(cfg.mode).family, cfg)
    model.load_state_dict(state["model"])
    return model.eval()


def evaluate_checkpoint(checkpoint_dir: str | Path, datasets: Callable | None = None,
                        keep_predictions: bool = False, **overrides) -> dict:
    """Score the validation-chosen model of a checkpoint on the test split, once (used by the
    search for its chosen trial). `overrides` replace config fields (e.g. data_root, device);
    `datasets(cfg)` gives the splits where the caller opens the data (the search's node path);
    `keep_predictions`: _score_test's "predictions" too."""
    state = checkpoint_weights(checkpoint_dir)
    cfg = config_from_dict({**state["config"], **overrides, "pretrained": False})
    trainer = Trainer(cfg, datasets=datasets(cfg) if datasets is not None else None)
    trainer.model.load_state_dict(state["model"])
    if state.get("threshold_val") is not None:   # the chosen epoch's, kept: scored as fit() scores
        trainer.best["val"] = {"threshold_val": state["threshold_val"]}
    return {"epoch": state.get("epoch", state.get("best", {}).get("epoch")),
            **_score_test(trainer, keep_predictions)}


def result_json(result: dict) -> str:
    """The one-line JSON summary printed by `python -m trainer fit`."""
    summary = {k: result[k] for k in ("best_epoch", "val", "test")}
    summary["config"] = {k: result["config"][k] for k in
                         ("dataset", "attribute", "mode", "modalities", "rho", "lambda_gm",
                          "tau", "delta", "lambda_f", "seed", "epochs", "modulation_target")}
    from trainer.methods import method_class
    for name in method_class(result["config"]["mode"]).hyperparameters:
        summary["config"][name] = result["config"][name]
    return dumps(summary)   # strict JSON: an undefined group AUC is null, not NaN


__all__ = ["fit", "load_model", "evaluate_checkpoint", "EpochReport", "Trainer", "result_json"]
