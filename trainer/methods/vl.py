"""The CLIP methods: `clip` (fine-tuning, FairCLIP's baseline), `fairclip` (Luo et al., CVPR 2024:
CLIP loss + group Sinkhorn terms), `fairclip_dbpm` (FairCLIP with dynamic bad-pair mining, Wu et
al. 2025 after Lan et al., ICLR 2024). All train the CLIP dual encoder (trainer/models/clip.py)
through the loop's hooks; the prediction is the zero-shot score (the model's fuse).

Facts from the authors' code (read, not copied; docs/methods.md):
- CLIP loss 1/2 [CE(L_I, diag) + CE(L_T, diag)], L_I = exp(t) cos(image_i, text_j), L_T = L_I^T.
- FairCLIP adds lambda * sum_g SamplesLoss("sinkhorn", p=2, blur)(D_B, D_g) on 1-D point clouds,
  D_g from an extra batch drawn from group g's training samples, under no_grad. `official`
  (finetune_FairCLIP.py): D_B = diag(L_I L_T^T), D_g the same of the group batch divided by its
  sum; `aligned` (the reproducibility study's FairCLIP+): D = diag(L_I) for both, unnormalised
  (its SamplesLoss uses scaling 0.95; the official one geomloss's default 0.5).
- Adam, betas (0.1, 0.1), eps 1e-6, weight decay 6e-5, lr 1e-5, batch 32, 10 epochs.
Not reproduced: the checkpoint chosen on the test set (ours: validation ES-AUC), the missing
train/eval switch, per-slot instead of per-pair DBPM memory.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from trainer.data.plants import planted_files
from trainer.data.transforms import batch_transform
from trainer.inference import to_device
from trainer.methods.base import Method, classifier_outputs, contract
from trainer.methods.registry import register_method
from trainer.metrics import evaluate_fairness
from trainer.models.presence import complete, present_rows

KINDS = ("good", "noisy", "faulty")
VARIANTS = ("official", "aligned")


def pair_losses(logits_per_image: torch.Tensor) -> torch.Tensor:
    """(B,) per-pair CLIP loss 1/2 [CE(L_I[i], i) + CE(L_T[i], i)]; its mean is the CLIP loss."""
    target = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, target, reduction="none")
                  + F.cross_entropy(logits_per_image.T, target, reduction="none"))


def similarity_scores(logits_per_image: torch.Tensor, variant: str, normalise: bool):
    """FairCLIP's 1-D point cloud of a batch: diag(L_I L_T^T) (official; the group batch's
    divided by its sum) or diag(L_I) (aligned)."""
    if variant == "aligned":
        return logits_per_image.diagonal().float()
    scores = (logits_per_image @ logits_per_image).diagonal().float()   # L_T^T = L_I
    return scores / scores.sum() if normalise else scores


def sinkhorn_term(batch_scores: torch.Tensor, group_scores: torch.Tensor, blur: float,
                  variant: str) -> torch.Tensor:
    """geomloss SamplesLoss("sinkhorn", p=2, blur) between two 1-D point clouds, as FairCLIP
    calls it (scaling 0.5, the default, officially; 0.95 in the aligned code)."""
    from geomloss import SamplesLoss

    scaling = 0.95 if variant == "aligned" else 0.5
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling)
    return loss(batch_scores.reshape(-1, 1), group_scores.reshape(-1, 1))


def linear_probe(trainer) -> dict:
    """A logistic-regression probe on the frozen image features of the best model (train split
    fitted; C chosen on validation ES-AUC; test scored once): {"C", "val", "test"} metrics."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    splits = {}
    for split in ("train", "val", "test"):
        feats, labels, groups = [], [], []
        for batch, encoded in trainer.forward(split, encode=True):
            feats.append(encoded["slo"].cpu()); labels.append(batch["label"].cpu())
            groups.append(batch["group"].cpu())
        splits[split] = (torch.cat(feats).numpy(), torch.cat(labels).numpy(),
                         torch.cat(groups).numpy())
    scaler = StandardScaler().fit(splits["train"][0])
    names, cfg, best = trainer.group_names, trainer.cfg, None
    for c in (0.01, 0.1, 1.0, 10.0):
        probe = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(splits["train"][0]),
                                                           splits["train"][1])
        x, y, g = splits["val"]
        val = evaluate_fairness(y, probe.predict_proba(scaler.transform(x))[:, 1], g,
                                cfg.threshold, names)
        if best is None or val["es_auc"] > best[1]["es_auc"]:
            best = (c, val, probe)
    c, val, probe = best
    x, y, g = splits["test"]
    test = evaluate_fairness(y, probe.predict_proba(scaler.transform(x))[:, 1], g, cfg.threshold,
                             names)
    return {"C": c, "val": val, "test": test}


class CLIPMethod(Method):
    """CLIP fine-tuning: the CLIP loss on the (image, note) pairs of the batch that have a note."""
    family = "clip"
    # CLIP's preprocessing as FairCLIP trains with it: no flip (a flipped fundus shows the other
    # eye, which the note names), no jitter
    augment = False
    # FairCLIP's training settings (finetune_FairCLIP.py) at the paper preset; 77 tokens always
    preset_settings = {
        "paper": dict(lr=1e-5, weight_decay=6e-5, epochs=10, batch_size=32, note_max_length=77,
                      note_source="gpt4_summary_or_note", modalities=("slo", "note")),
        "tiny": dict(note_max_length=77, note_source="gpt4_summary_or_note",
                     modalities=("slo", "note")),
    }

    @classmethod
    def check_config(cls, cfg, bad) -> None:
        check_vl_config(cfg, bad, needs_note=True)

    def make_optimizer(self, param_groups, cfg, **kw):
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=(0.1, 0.1), eps=1e-6,
                                weight_decay=cfg.weight_decay, **kw)

    def pairs(self, model, features: dict, present: dict | None):
        """(L_I over the pairs that have a note, their rows (None = all))."""
        rows = present_rows(present, "note", features["note"])
        image, text = features["slo"], features["note"]
        if rows is not None:
            image, text = image[rows], text[rows]
        return model.similarity(image, text), rows

    def extra_loss(self, model, logits_per_image, labels, groups) -> tuple[torch.Tensor, dict]:
        return logits_per_image.new_zeros(()), {}

    def pair_weights(self, losses: torch.Tensor, rows) -> torch.Tensor | None:
        return None

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        logits_per_image, rows = self.pairs(model, features, present)
        losses = pair_losses(logits_per_image)
        weights = self.pair_weights(losses.detach(), rows)
        clip_loss = losses.mean() if weights is None else (weights * losses).mean()
        extra, logged = self.extra_loss(model, logits_per_image, labels, groups)
        _, classifier_loss = classifier_outputs(classifiers, features, labels, tuple(features),
                                                present)
        scale = torch.ones(len(self.modalities), device=logits.device)
        return contract(clip_loss + extra, losses.mean(), classifier_loss, scale, self.modalities,
                        clip=losses.mean().detach(), **logged)

    def final_report(self, trainer) -> dict:
        if not self.cfg.linear_probe:
            return {}
        return {"test": {"linear_probe": linear_probe(trainer)}}


def check_vl_config(cfg, bad, needs_note: bool) -> None:
    if cfg.dataset != "fairvlmed":
        bad("dataset", f"mode {cfg.mode!r} trains on FairVLMed (SLO + note) only")
    mods = cfg.resolved_modalities()
    if "slo" not in mods or (needs_note and "note" not in mods) or "oct" in mods:
        bad("modalities", f"mode {cfg.mode!r} needs slo" + (" and note" if needs_note else "")
            + " (no oct)")
    if cfg.note_max_length > 77:
        bad("note_max_length", "CLIP's text tower holds 77 tokens")
    if cfg.fairclip_variant not in VARIANTS:
        bad("fairclip_variant", f"choose one of {VARIANTS}")
    for name in ("fairclip_lambda", "dbpm_beta_np", "dbpm_beta_fp", "lambda_orth", "lambda_proto"):
        if getattr(cfg, name) < 0:
            bad(name, "must be >= 0")
    if cfg.fairclip_blur <= 0:
        bad("fairclip_blur", "must be > 0")
    for name in ("fairclip_group_batch_size", "dbpm_warmup_epochs"):
        if getattr(cfg, name) < 0:
            bad(name, "must be >= 0")
    for name in ("vl_context_length", "vl_visual_prompts"):
        if getattr(cfg, name) < 1:
            bad(name, "must be >= 1")


register_method("clip")(CLIPMethod)


@register_method("fairclip")
class FairCLIP(CLIPMethod):
    """CLIP loss + fairclip_lambda * sum over groups of Sinkhorn(D_B, D_g), an extra no-grad
    batch per group drawn from the training split (groups and notes as the batch's)."""
    hyperparameters = ("fairclip_lambda", "fairclip_blur")

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, modalities, num_groups)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))   # resumable draws
        self.train_data, self.members, self.device = None, {}, None

    def attach(self, datasets: dict, device) -> None:
        train = datasets["train"]
        has_note = train.present.get("note", np.ones(len(train), bool))
        self.train_data, self.device = train, torch.device(device)
        self.members = {g: np.flatnonzero((train.groups == g) & has_note)
                        for g in range(self.num_groups)}

    def group_batch(self, g: int, step: int) -> dict | None:
        members = self.members.get(g, ())
        if len(members) < 2:
            return None
        size = min(self.cfg.fairclip_group_batch_size or self.cfg.batch_size, len(members))
        rng = np.random.default_rng([self.cfg.seed, step, g])
        batch = self.train_data.get_batch(np.sort(rng.choice(members, size, replace=False)))
        return batch_transform(to_device(complete(batch), self.device), train=self.augment)

    def extra_loss(self, model, logits_per_image, labels, groups):
        variant, total = self.cfg.fairclip_variant, logits_per_image.new_zeros(())
        batch_scores = similarity_scores(logits_per_image, variant, normalise=False)
        step = int(self.steps)
        self.steps += 1
        for g in range(self.num_groups):
            batch = self.group_batch(g, step)
            if batch is None:
                continue
            with torch.no_grad():
                feats = model.encode(batch)
                group_scores = similarity_scores(model.similarity(feats["slo"], feats["note"]),
                                                 variant, normalise=True)
            total = total + sinkhorn_term(batch_scores, group_scores, self.cfg.fairclip_blur,
                                          variant)
        return self.cfg.fairclip_lambda * total, {"sinkhorn": total.detach()}


@register_method("fairclip_dbpm")
class FairCLIPDBPM(FairCLIP):
    """FairCLIP with dynamic bad-pair mining, per PAIR: a memory M[i, e] of each pair's loss;
    after the warm-up, m_i = mean over earlier epochs, (mu, sigma) over all pairs; noisy if
    m_i < mu - beta_np sigma, faulty if m_i > mu + beta_fp sigma; a bad pair's loss is weighted
    by w = exp(-(loss - mu)^2 / (2 sigma^2)) (the normal density scaled to peak 1; no gradient
    through w); no pair is dropped."""
    hyperparameters = ("fairclip_lambda", "fairclip_blur", "dbpm_beta_np", "dbpm_beta_fp",
                       "dbpm_warmup_epochs")

    def __init__(self, cfg, modalities, num_groups):
        super().__init__(cfg, modalities, num_groups)
        self.register_buffer("stats", torch.tensor([0.0, 1.0]))    # mu, sigma of the judgement
        self.memory = self.kind = self.flagged_at = self.last_weight = self.planted = None
        self.epoch, self.index = 0, None

    def attach(self, datasets: dict, device) -> None:
        super().attach(datasets, device)
        n = len(datasets["train"])
        self.memory = torch.full((n, self.cfg.epochs), float("nan"))
        self.kind = torch.zeros(n, dtype=torch.long)       # 0 good, 1 noisy, 2 faulty
        self.flagged_at = torch.zeros(n, dtype=torch.long)  # epoch (1-based) of the current flag
        self.last_weight = torch.ones(n)
        self.files = getattr(datasets["train"], "files", None)
        planted = planted_files(self.cfg.data_root) if self.files is not None else None
        # the plant as a mask over training items (generated data only): per-epoch recovery
        self.planted = None if planted is None else torch.tensor(
            [str(f) in planted for f in self.files])

    # the memory is per-pair state: checkpointed with the method (exact resume)
    def get_extra_state(self):
        return {"memory": self.memory, "kind": self.kind, "flagged_at": self.flagged_at,
                "last_weight": self.last_weight}

    def set_extra_state(self, state):
        self.memory, self.kind = state["memory"], state["kind"]
        self.flagged_at, self.last_weight = state["flagged_at"], state["last_weight"]

    def begin_epoch(self, model, epoch: int) -> None:
        self.epoch = epoch
        if epoch < max(self.cfg.dbpm_warmup_epochs, 1):
            return
        seen = self.memory[:, :epoch]
        known = ~seen.isnan().all(dim=1)
        mean = torch.nanmean(seen, dim=1)
        mu, sigma = mean[known].mean(), mean[known].std().clamp_min(1e-8)
        kind = torch.zeros_like(self.kind)
        kind[known & (mean < mu - self.cfg.dbpm_beta_np * sigma)] = 1
        kind[known & (mean > mu + self.cfg.dbpm_beta_fp * sigma)] = 2
        newly = (kind > 0) & (self.kind == 0)
        self.flagged_at = torch.where(newly, epoch + 1, torch.where(kind > 0, self.flagged_at, 0))
        self.kind = kind
        self.stats = torch.stack([mu, sigma]).to(self.stats)

    def begin_step(self, batch: dict) -> None:
        self.index = batch["index"].cpu()

    def pair_weights(self, losses: torch.Tensor, rows) -> torch.Tensor:
        index = self.index if rows is None else self.index[rows.cpu()]
        self.memory[index, self.epoch] = losses.float().cpu()
        bad = self.kind[index].to(losses.device) > 0
        mu, sigma = self.stats.to(losses.device)
        density = torch.exp(-(losses - mu) ** 2 / (2 * sigma ** 2))
        weights = torch.where(bad, density, torch.ones_like(losses))
        self.last_weight[index] = weights.float().cpu()
        return weights

    def step(self, model, classifiers, features, logits, labels, groups, present=None) -> dict:
        out = super().step(model, classifiers, features, logits, labels, groups, present)
        flagged, device = self.kind > 0, out["loss"].device   # (the memory lives on the host)
        out["dbpm_flagged"] = flagged.float().mean().to(device)
        if self.planted is not None:    # recovery of the plant at this epoch's judgement
            hits = (flagged & self.planted).sum().float()
            out["dbpm_precision"] = (hits / flagged.sum().clamp_min(1)).to(device)
            out["dbpm_recall"] = (hits / self.planted.sum().clamp_min(1)).to(device)
        return out

    def final_report(self, trainer) -> dict:
        report = super().final_report(trainer)
        flagged = torch.nonzero(self.kind > 0).squeeze(1).tolist()
        names = [str(self.files[i]) for i in flagged] if self.files is not None else []
        rows = [{"filename": name, "epoch_flagged": int(self.flagged_at[i]),
                 "kind": KINDS[int(self.kind[i])], "weight": float(self.last_weight[i])}
                for name, i in zip(names, flagged)]
        summary = {"n_flagged": len(flagged), "n_noisy": int((self.kind == 1).sum()),
                   "n_faulty": int((self.kind == 2).sum())}
        summary.update(plant_recovery(self.cfg.data_root, set(names), self.files))
        report.setdefault("test", {})["bad_pairs"] = summary
        report["private"] = {"bad_pairs": rows}
        return report


def plant_recovery(data_root, flagged: set[str], train_files) -> dict:
    """Precision and recall of the flagged training pairs against the planted list (when the
    data carry one): {"planted", "precision", "recall"} or {}."""
    planted = planted_files(data_root)
    if train_files is None or planted is None:
        return {}
    planted &= {str(f) for f in train_files}
    hits = len(planted & flagged)
    return {"planted": len(planted),
            "precision": hits / len(flagged) if flagged else math.nan,
            "recall": hits / len(planted) if planted else math.nan}
