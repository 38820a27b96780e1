"""The MultiFair step quantities (multifair-method.md), computed on the device without CPU syncs.

Per step, for modalities m = 1..M and groups g = 1..G:
  A_m        exact batch AUC of classifier c_m (on detached h_m), smoothed by an EMA; dA_m is the
             change of that EMA (Eq. 4).
  B_m        = rho * sum_{k!=m} a_k / sum_k a_k with a_k = |dA_k| + eps (Eq. 5 with |dA|, as the
             authors' code), clamped to [balance_floor, rho]: positive and bounded.
  L_gm       = mean_m (B_m - B_m * cos(g_F, g_m)) (Eq. 7). g_F: gradient of the fused task loss
             w.r.t. the head's last linear layer; g_m: gradient of c_m's loss (on NON-detached h_m)
             w.r.t. c_m's last linear layer (same shape). Both taken with create_graph=True, so
             L_gm sends gradient into the fusion model and encoder m. (The authors' version is
             identically zero.)
  E_{m,g}    EMA of a pairwise sigmoid surrogate AUC of c_m on group g (Eq. 9): in [0, 1], tends to
             the exact AUC as the temperature goes to 0. The history is detached, the current batch
             term stays in the graph (computed from NON-detached h_m), so F_G reaches encoder m. A
             group with one class in the batch keeps its previous EMA.
  F_m^g, f_m = 1 + delta*(Ebar_m - E_{m,g})/tau; f_m = sum_g p_g F_m^g (Eqs. 11-12), clamped to
             [balance_floor, 1 + delta/tau].
  F_G        = mean_m mean_g |E_{m,g} - Ebar_m| (Eq. 13).
  trigger    = (max_g - min_g of the EMA of the FUSED model's exact group AUC) >= tau (Alg. 1).
Scale for encoder m: B_m * (trigger ? f_m : 1); the loop applies it with a gradient hook on h_m,
so only the modality branch (encoder) is scaled, never projections, fusion or head.

Missing modalities (`present`, trainer/methods/base.py): A_m, E_{m,g}, the group shares p_g of
f_m, c_m's losses and L_gm's classifier gradient use only the samples that have modality m. A
group with no (positive, negative) pair of such samples keeps its previous EMA (never NaN); a
modality absent from the whole batch keeps its speed EMA and gets f_m = 1. The trigger reads the
FUSED prediction, which every sample has.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from trainer.metrics import batch_auc, group_auc_tensor
from trainer.models.presence import classifier_loss_of, present_rows

SPEED_EPS = 1e-4


def surrogate_group_auc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                        num_groups: int, temperature: float,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """(G,) differentiable AUC per group: mean over (pos, neg) pairs of sigmoid((s+ - s-)/T).
    NaN where a group lacks a positive or a negative in the batch. `mask` (bool (B,)) keeps only
    those samples (the ones that have the modality)."""
    pos, neg = labels > 0.5, labels <= 0.5
    if mask is not None:
        pos, neg = pos & mask, neg & mask
    same = groups[:, None] == groups[None, :]
    pair = (pos[:, None] & neg[None, :] & same).to(scores.dtype)                     # (B, B)
    onehot = F.one_hot(groups.clamp_min(0), num_groups).to(scores.dtype)            # (B, G)
    soft = torch.sigmoid((scores[:, None] - scores[None, :]) / temperature)  # (B, B)
    # per group: sum over pairs whose first element is in group g
    num = onehot.T @ (pair * soft).sum(dim=1)
    den = onehot.T @ pair.sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1.0), torch.full_like(num, float("nan")))


def group_shares(groups: torch.Tensor, num_groups: int, rows: list) -> torch.Tensor:
    """p_g: each group's share of the batch, (G,); with presence masks, of the samples that have
    modality m, (M, G) (all zeros for a modality absent from the whole batch)."""
    # one_hot, not bincount: bincount sizes its output from the data (a device sync on CUDA)
    onehot = F.one_hot(groups, num_groups).float()
    if all(r is None for r in rows):
        return onehot.mean(dim=0)
    out = []
    for r in rows:
        w = torch.ones_like(onehot[:, 0]) if r is None else r.float()
        out.append((onehot * w[:, None]).sum(dim=0) / w.sum().clamp_min(1.0))
    return torch.stack(out)


class MultiFairModulator(nn.Module):
    """Holds the EMA state (buffers, so it checkpoints with state_dict) and computes one step.

    Which terms act is said by the class: the registered MultiFair modes
    (trainer/methods/multifair.py) set `uses_balance` (B_m and L_gm) and `uses_fairness` (f_m and
    F_G behind the trigger); this base, with neither, is plain fusion."""
    uses_balance = False
    uses_fairness = False

    def __init__(self, cfg, modalities: tuple[str, ...], num_groups: int):
        super().__init__()
        self.cfg, self.modalities, self.num_groups = cfg, modalities, num_groups
        m, g = len(modalities), num_groups
        self.register_buffer("speed_ema", torch.full((m,), 0.5))
        self.register_buffer("group_ema", torch.full((m, g), 0.5))      # E_{m,g}
        self.register_buffer("fused_group_ema", torch.full((g,), 0.5))  # trigger statistic

    # --- Eq. 4-5 ---------------------------------------------------------------------------
    def balance_factors(self, cls_probs: torch.Tensor, labels: torch.Tensor,
                        rows: list | None = None) -> torch.Tensor:
        cfg = self.cfg
        rows = rows or [None] * len(cls_probs)
        auc = torch.stack([batch_auc(p, labels, mask=r) for p, r in zip(cls_probs, rows)])
        new = torch.where(auc.isnan(), self.speed_ema,
                          cfg.speed_ema_decay * self.speed_ema + (1 - cfg.speed_ema_decay) * auc)
        a = (new - self.speed_ema).abs() + SPEED_EPS
        self.speed_ema.copy_(new)
        balance = cfg.rho * (a.sum() - a) / a.sum()
        return balance.clamp(cfg.balance_floor, cfg.rho)

    # --- Eq. 9-13 --------------------------------------------------------------------------
    def group_terms(self, live_probs: list[torch.Tensor], labels, groups, rows: list | None = None):
        cfg = self.cfg
        rows = rows or [None] * len(live_probs)
        batch = torch.stack([surrogate_group_auc(p, labels, groups, self.num_groups,
                                                 cfg.surrogate_temperature, r)
                             for p, r in zip(live_probs, rows)])
        old = self.group_ema.detach()
        ema = torch.where(batch.isnan(), old, cfg.ema_decay * old + (1 - cfg.ema_decay)
                          * batch.nan_to_num(0.5))
        self.group_ema.copy_(ema.detach())
        mean = ema.mean(dim=1, keepdim=True)                                   # Ebar_m
        fairness_loss = (ema - mean).abs().mean()                              # F_G
        factor_g = 1 + cfg.delta * (mean - ema).detach() / cfg.tau             # F_m^g
        share = group_shares(groups, self.num_groups, rows)                     # p_g
        factor = (factor_g * share).sum(dim=1)                                 # f_m
        factor = torch.where(share.sum(dim=-1) > 0, factor, torch.ones_like(factor))
        return fairness_loss, factor.clamp(cfg.balance_floor, 1 + cfg.delta / cfg.tau)

    def trigger(self, fused_probs: torch.Tensor, labels, groups) -> torch.Tensor:
        auc = group_auc_tensor(fused_probs.detach(), labels, groups, self.num_groups)
        s = self.cfg.ema_decay
        self.fused_group_ema.copy_(torch.where(auc.isnan(), self.fused_group_ema,
                                               s * self.fused_group_ema + (1 - s) * auc))
        gap = self.fused_group_ema.max() - self.fused_group_ema.min()
        return (gap >= self.cfg.tau).float()

    # --- the step --------------------------------------------------------------------------
    def step(self, model, classifiers: nn.ModuleDict, features: dict[str, torch.Tensor],
             logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
             present: dict | None = None) -> dict:
        """Losses and per-modality scales for one batch. Returns the step contract dict; the
        loop backpropagates out["loss"] + out["classifier_loss"] and applies out["scale"].
        `present`: the batch's presence masks (None = complete)."""
        cfg, mods = self.cfg, self.modalities
        task = F.binary_cross_entropy_with_logits(logits.float(), labels)
        rows = [present_rows(present, m, labels) for m in mods]

        # Classifiers learn on detached features (their own update; no second forward pass).
        det_logits = [classifiers[m](features[m].detach()).squeeze(-1).float() for m in mods]
        classifier_loss = sum(classifier_loss_of(z, labels, r) for z, r in zip(det_logits, rows))
        with torch.no_grad():
            balance = self.balance_factors([z.sigmoid() for z in det_logits], labels, rows)
            trig = self.trigger(logits.sigmoid(), labels, groups)

        zero = task.new_zeros(())
        gm, fair = zero, zero
        need_live = self.uses_balance or self.uses_fairness
        live_logits, last_grads = [], []
        for m, r in zip(mods, rows):
            if not need_live:
                break
            # c_m on NON-detached h_m with detached parameter copies: the gradient of these terms
            # reaches encoder m but never changes c_m's own parameters.
            params = {k: v.detach().requires_grad_(k.startswith(f"{len(classifiers[m]) - 1}."))
                      for k, v in classifiers[m].named_parameters()}
            z = functional_call(classifiers[m], params, (features[m],)).squeeze(-1).float()
            live_logits.append(z)
            if self.uses_balance:
                last = [params[f"{len(classifiers[m]) - 1}.weight"],
                        params[f"{len(classifiers[m]) - 1}.bias"]]
                g = torch.autograd.grad(classifier_loss_of(z, labels, r), last,
                                        create_graph=True)
                last_grads.append(torch.cat([t.flatten() for t in g]))

        if self.uses_balance:
            head = model.head_last
            g_fused = torch.autograd.grad(task, [head.weight, head.bias], create_graph=True)
            g_fused = torch.cat([t.flatten() for t in g_fused])
            cos = torch.stack([F.cosine_similarity(g_fused, g_m, dim=0, eps=1e-12)
                               for g_m in last_grads])
            gm = (balance.abs() - balance * cos).mean()                         # Eq. 7

        factor = torch.ones_like(balance)
        if self.uses_fairness:
            fair, factor = self.group_terms([z.sigmoid() for z in live_logits], labels, groups,
                                            rows)
        elif need_live:
            with torch.no_grad():
                _, factor = self.group_terms([z.sigmoid() for z in live_logits], labels, groups,
                                             rows)

        loss = task
        if self.uses_balance:
            loss = loss + cfg.lambda_gm * gm                                   # Eq. 8
        if self.uses_fairness:
            loss = loss + trig * cfg.lambda_f * fair                           # Eq. 14
        applied_balance = balance if self.uses_balance else torch.ones_like(balance)
        applied_factor = trig * factor + (1 - trig) if self.uses_fairness else torch.ones_like(factor)
        scale = (applied_balance * applied_factor).detach()                   # Eqs. 6 / 15

        # gm and fairness stay in the graph (tests take their gradients); the loop logs detached copies.
        out = {"loss": loss, "task": task.detach(), "gm": gm, "fairness": fair,
               "classifier_loss": classifier_loss, "trigger": trig, "scale": scale}
        for i, m in enumerate(mods):
            out[f"balance/{m}"] = balance[i]
            out[f"fairness_factor/{m}"] = factor[i].detach()
            out[f"scale/{m}"] = scale[i]
        return out
