"""MultiFair step: every term alive, gradients where they must be, bounds, trigger, modes."""
import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from trainer.config import make_config
from trainer.models import build_classifiers, build_model
from trainer.methods import create_method
from trainer.modulation import surrogate_group_auc

MODS = ("slo", "oct", "note")


def _setup(mode="full", modalities=MODS, seed=0, **fields):
    torch.manual_seed(seed)
    cfg = make_config("fairvision", "race", preset="tiny", modalities=modalities, mode=mode,
                      dropout=0.0, **fields)
    model = build_model(cfg).eval()  # deterministic: no dropout (BERT has its own)
    clf = build_classifiers(cfg, model)
    mod = create_method(cfg, cfg.resolved_modalities(), 3)   # the registered class of the mode
    return cfg, model, clf, mod


def _batch(cfg, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    labels = torch.tensor([0.0, 1.0] * (b // 2))
    groups = torch.arange(b) % 3
    batch = {"slo": torch.randn(b, 3, s, s, generator=g),
             "oct": torch.randn(b, cfg.oct_slices, s, s, generator=g),
             "note": {"input_ids": torch.randint(5, 290, (b, 12), generator=g),
                      "attention_mask": torch.ones(b, 12, dtype=torch.long)},
             "label": labels, "group": groups}
    return {k: v for k, v in batch.items() if k in cfg.resolved_modalities() or k in ("label", "group")}


def _step(cfg, model, clf, mod, batch):
    feats = model.encode(batch)
    logits = model.fuse(feats)
    return feats, mod.step(model, clf, feats, logits, batch["label"], batch["group"])


def _grads(loss, params):
    return torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)


def _alive(grads):
    present = [g for g in grads if g is not None]
    return bool(present) and all(torch.isfinite(g).all() for g in present) and \
        sum(g.abs().sum().item() for g in present) > 0


def test_direction_loss_reaches_every_encoder_and_fusion():
    cfg, model, clf, mod = _setup("modality")
    _, out = _step(cfg, model, clf, mod, _batch(cfg))
    assert out["gm"].requires_grad and out["gm"].item() > 0
    for m in MODS:
        assert _alive(_grads(out["gm"], model.encoders[m].parameters())), m
    assert _alive(_grads(out["gm"], model.fusion.parameters()))
    # L_gm never changes the classifiers' own parameters (they learn on detached features)
    assert all(g is None for g in _grads(out["gm"], clf.parameters()))


def test_fairness_loss_reaches_every_encoder_not_classifiers():
    cfg, model, clf, mod = _setup("fairness")
    _, out = _step(cfg, model, clf, mod, _batch(cfg))
    assert out["fairness"].requires_grad
    for m in MODS:
        assert _alive(_grads(out["fairness"], model.encoders[m].parameters())), m
    assert all(g is None for g in _grads(out["fairness"], clf.parameters()))


def test_classifier_loss_trains_only_classifiers():
    cfg, model, clf, mod = _setup("full")
    _, out = _step(cfg, model, clf, mod, _batch(cfg))
    assert _alive(_grads(out["classifier_loss"], clf.parameters()))
    assert all(g is None for g in _grads(out["classifier_loss"], model.parameters()))


def test_full_loss_has_all_terms_when_triggered():
    cfg, model, clf, mod = _setup("full", tau=1e-6)
    mod.fused_group_ema.copy_(torch.tensor([0.5, 0.7, 0.9]))   # large fused group gap
    _, out = _step(cfg, model, clf, mod, _batch(cfg))
    assert out["trigger"].item() == 1.0
    expected = out["task"] + cfg.lambda_gm * out["gm"] + cfg.lambda_f * out["fairness"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["gm"].item() > 0 and out["fairness"].item() > 0


def _encoder_and_rest_grads(model, clf, mod, cfg, batch, hooks: bool):
    model, clf, mod = copy.deepcopy(model), copy.deepcopy(clf), copy.deepcopy(mod)
    feats, out = _step(cfg, model, clf, mod, batch)
    if hooks:
        for i, m in enumerate(mod.modalities):
            feats[m].register_hook(lambda g, s=out["scale"][i]: g * s)
    out["loss"].backward()
    enc = {m: [p.grad.clone() for p in model.encoders[m].parameters() if p.grad is not None]
           for m in mod.modalities}
    rest = [p.grad.clone() for n, p in model.named_parameters() if not n.startswith("encoders.")]
    return enc, rest, out["scale"]


@pytest.mark.parametrize("mode", ["modality", "fairness", "full"])
def test_scaling_touches_only_modality_branches(mode):
    cfg, model, clf, mod = _setup(mode, tau=1e-6)
    mod.fused_group_ema.copy_(torch.tensor([0.5, 0.6, 0.9]))
    mod.group_ema.copy_(torch.tensor([[0.9, 0.6, 0.7], [0.8, 0.8, 0.5], [0.6, 0.7, 0.9]]))
    batch = _batch(cfg)
    enc0, rest0, scale = _encoder_and_rest_grads(model, clf, mod, cfg, batch, hooks=False)
    enc1, rest1, scale1 = _encoder_and_rest_grads(model, clf, mod, cfg, batch, hooks=True)
    torch.testing.assert_close(scale, scale1)
    assert not torch.allclose(scale, torch.ones_like(scale))
    for a, b in zip(rest0, rest1):                      # projections, fusion, head: unchanged
        torch.testing.assert_close(a, b)
    for i, m in enumerate(mod.modalities):              # encoder m: exactly scale_m times
        for a, b in zip(enc0[m], enc1[m]):
            torch.testing.assert_close(b, a * scale[i], rtol=1e-4, atol=1e-7)


def test_factors_stay_in_bounds_under_extreme_statistics():
    cfg, model, clf, mod = _setup("full")
    for seed in range(6):
        mod.group_ema.copy_(torch.rand(3, 3, generator=torch.Generator().manual_seed(seed)))
        mod.speed_ema.copy_(torch.tensor([0.0, 1.0, 0.5]))
        _, out = _step(cfg, model, clf, mod, _batch(cfg, seed=seed))
        for m in MODS:
            b, f = out[f"balance/{m}"].item(), out[f"fairness_factor/{m}"].item()
            assert cfg.balance_floor <= b <= cfg.rho
            assert cfg.balance_floor <= f <= 1 + cfg.delta / cfg.tau
            s = out[f"scale/{m}"].item()
            assert 0 < cfg.balance_floor ** 2 <= s <= cfg.rho * (1 + cfg.delta / cfg.tau)


def test_slow_modality_gets_larger_balance_factor():
    cfg, _, _, mod = _setup("modality", modalities=("slo", "oct"))
    labels = torch.tensor([0.0, 1.0] * 8)
    mod.speed_ema.copy_(torch.tensor([0.5, 0.5]))
    fast = labels * 0.8 + 0.1                      # oct: perfect AUC -> its EMA jumps
    slow = torch.full_like(labels, 0.5)            # slo: ties -> AUC 0.5, EMA unchanged
    balance = mod.balance_factors(torch.stack([slow, fast]), labels)
    # hand-worked: dA = (0, 0.1*(1-0.5)=0.05) -> a = (1e-4, 0.0501)
    a = torch.tensor([1e-4, 0.05 + 1e-4])
    torch.testing.assert_close(balance, (cfg.rho * (a.sum() - a) / a.sum()).clamp(cfg.balance_floor, cfg.rho))
    assert balance[0] > 1.0 and balance[1] == cfg.balance_floor


def test_trigger_follows_fused_group_gap():
    cfg, model, clf, mod = _setup("fairness", modalities=("slo", "oct"), tau=0.05)
    labels = torch.tensor([0.0, 1.0] * 6)
    groups = torch.tensor([0, 0, 1, 1, 2, 2] * 2)
    mod.fused_group_ema.fill_(0.8)
    assert mod.trigger(torch.where(labels > 0, 0.9, 0.1), labels, groups).item() == 0.0
    mod.fused_group_ema.copy_(torch.tensor([0.8, 0.8, 0.7]))
    assert mod.trigger(torch.full_like(labels, 0.5), labels, groups).item() == 1.0
    # below the trigger: Eq. 8 loss and scaling by B_m alone (here 1: fairness-only mode)
    mod.fused_group_ema.fill_(0.8)
    cfg.tau = 10.0
    _, out = _step(cfg, model, clf, mod, _batch(cfg, b=12))
    assert out["trigger"].item() == 0.0
    torch.testing.assert_close(out["loss"], out["task"])
    torch.testing.assert_close(out["scale"], torch.ones(2))


def test_baseline_is_plain_fusion():
    cfg, model, clf, mod = _setup("baseline")
    _, out = _step(cfg, model, clf, mod, _batch(cfg))
    torch.testing.assert_close(out["loss"], out["task"])
    torch.testing.assert_close(out["scale"], torch.ones(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surrogate_auc_in_unit_interval_and_tends_to_exact(seed):
    rng = np.random.default_rng(seed)
    scores = torch.tensor(rng.random(60), dtype=torch.float64)
    labels = torch.tensor(rng.integers(0, 2, 60), dtype=torch.float64)
    groups = torch.tensor(rng.integers(0, 2, 60))
    groups[:4] = 2
    labels[:4] = 1.0                                  # group 2 has one class -> NaN
    for temperature in (1.0, 0.1):
        s = surrogate_group_auc(scores, labels, groups, 3, temperature)
        assert torch.isnan(s[2]) and ((s[:2] >= 0) & (s[:2] <= 1)).all()
    s = surrogate_group_auc(scores, labels, groups, 3, 1e-4)
    for g in (0, 1):
        m = (groups == g).numpy()
        assert abs(s[g].item() - roc_auc_score(labels.numpy()[m], scores.numpy()[m])) < 1e-3


def test_each_mode_class_says_which_terms_act():
    """Mode behaviour lives on the registered classes, not in lists of mode names."""
    from trainer.methods import method_class
    acts = {mode: (method_class(mode).uses_balance, method_class(mode).uses_fairness)
            for mode in ("baseline", "modality", "fairness", "full", "full_reference")}
    assert acts == {"baseline": (False, False), "modality": (True, False),
                    "fairness": (False, True), "full": (True, True),
                    "full_reference": (True, True)}
