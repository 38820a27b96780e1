"""Training methods (trainer/methods/): each method's defining behaviour on hand-made batches,
every method through `python -m trainer fit --mode NAME`, unimodal runs, update-target scaling,
exact resume for the stateful methods."""
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax

from trainer.__main__ import main as cli_main
from trainer.config import make_config
from trainer.jsonout import strict
from trainer.loop import Trainer, fit
from trainer.methods import available_methods, create_method
from trainer.methods.cggm import cggm_coefficients
from trainer.methods.fis import fis_weights, group_distances
from trainer.methods.modality_dropout import dropout_mask
from trainer.methods.ogm_ge import ge_noise_, ogm_coefficients
from trainer.methods.sinkhorn import sinkhorn_fairness
from trainer.models import build_classifiers, build_model

MODS = ("slo", "oct")


@pytest.fixture(scope="module")
def root(dataset):
    return dataset("methods")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _cfg(mode, root="", cache="", **kw):
    kw.setdefault("modalities", MODS)
    return make_config("fairvision", "race", preset="tiny", mode=mode, data_root=str(root),
                       cache_dir=str(cache), dropout=0.0, bootstrap=5, batch_size=16, **kw)


def _batch(cfg, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    return {"slo": torch.randn(b, 3, s, s, generator=g),
            "oct": torch.randn(b, cfg.oct_slices, s, s, generator=g),
            "label": torch.tensor([0.0, 1.0] * (b // 2)), "group": torch.arange(b) % 3}


def _identity_classifiers():
    return torch.nn.ModuleDict({m: torch.nn.Identity() for m in MODS})


# --- OGM-GE ----------------------------------------------------------------------------------
def test_ogm_coefficient_is_one_for_weaker_and_below_one_for_dominant():
    cfg = _cfg("ogm_ge", ogm_alpha=0.5)
    method = create_method(cfg, MODS, 3)
    labels = torch.tensor([0.0, 1.0] * 4)
    # hand-made classifier outputs: slo confidently right, oct at chance
    feats = {"slo": torch.where(labels > 0, 2.0, -2.0)[:, None], "oct": torch.zeros(8, 1)}
    out = method.step(None, _identity_classifiers(), feats, torch.zeros(8), labels,
                      torch.zeros(8, dtype=torch.long))
    s_slo, s_oct = 8 * (1 / (1 + math.exp(-2.0))), 8 * 0.5        # sums of true-class probs
    assert out["ogm_coef/slo"].item() == pytest.approx(1 - math.tanh(0.5 * s_slo / s_oct), 1e-5)
    assert out["ogm_coef/oct"].item() == 1.0 and out["ogm_coef/slo"].item() < 1
    # M = 3 (our generalisation): ratio to the mean of the others; only the dominant one < 1
    coef = ogm_coefficients(torch.tensor([3.0, 2.0, 1.0]), alpha=0.5)
    assert coef[0].item() == pytest.approx(1 - math.tanh(0.5 * 3 / 1.5)) and coef[1:].eq(1).all()


def test_ogm_ge_noise_has_the_gradients_std_and_respects_the_window():
    grad = torch.randn(200, 100, generator=torch.Generator().manual_seed(0)) * 0.3
    orig = grad.clone()
    ge_noise_(grad, 0.25, torch.Generator().manual_seed(1))
    noise = grad - 0.25 * orig
    assert noise.std().item() == pytest.approx(orig.std().item(), rel=0.03)
    assert abs(noise.mean().item()) < 0.01
    method = create_method(_cfg("ogm_ge", ogm_start_epoch=1, ogm_end_epoch=2), MODS, 3)
    for epoch, active in ((0, False), (1, True), (2, False)):
        method.begin_epoch(None, epoch)
        assert method.active is active


# --- full_reference ----------------------------------------------------------------------------
def _model_step(mode, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = _cfg(mode, **kw)
    model, method = build_model(cfg).eval(), create_method(cfg, MODS, 3)
    clf = build_classifiers(cfg, model)
    batch = _batch(cfg)
    feats = model.encode(batch)
    logits = model.fuse(*method.features(feats, None, torch.Generator().manual_seed(0)))
    out = method.step(model, clf, feats, logits, batch["label"], batch["group"])
    return cfg, model, clf, method, out, logits, batch


def test_full_reference_terms_carry_no_gradient():
    cfg, model, _, method, out, logits, batch = _model_step("full_reference", tau=1e-6)
    assert out["gm"].item() > 0 and not out["gm"].requires_grad
    assert not out["fairness"].requires_grad
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(out["loss"], params, retain_graph=True, allow_unused=True)
    task = F.binary_cross_entropy_with_logits(logits, batch["label"])
    want = torch.autograd.grad(task, params, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    expected = out["task"] + cfg.lambda_gm * out["gm"] + out["trigger"] * cfg.lambda_f * out["fairness"]
    torch.testing.assert_close(out["loss"].detach(), expected)


# --- CGGM --------------------------------------------------------------------------------------
def test_cggm_coefficients_follow_the_formula():
    torch.testing.assert_close(cggm_coefficients(torch.tensor([0.1, 0.3])),
                               torch.tensor([0.75, 0.25]), atol=1e-3, rtol=0)
    cfg = _cfg("cggm", rho=1.5)
    method = create_method(cfg, MODS, 3)
    labels = torch.tensor([0.0, 1.0] * 4)
    # slo right on 6 of 8 (accuracy 0.75, up 0.25 from 0.5); oct right on 4 of 8 (no change)
    slo = torch.where(labels > 0, 1.0, -1.0)
    slo[:2] = -slo[:2]
    feats = {"slo": slo[:, None], "oct": torch.where(torch.arange(8) < 4, 1.0, -1.0)[:, None]}
    out = method.step(None, _identity_classifiers(), feats, torch.zeros(8), labels, labels.long())
    d = torch.tensor([0.25, 0.0]).abs() + 1e-4
    torch.testing.assert_close(out["scale"], 1.5 * (d.sum() - d) / d.sum())
    assert out["scale/oct"] > out["scale/slo"]                     # the stalled modality gets more
    torch.testing.assert_close(method.prev_accuracy, torch.tensor([0.75, 0.5]))


# --- FIS and the Sinkhorn regulariser -----------------------------------------------------------
def test_fis_weights_sum_to_one_and_upweight_the_worse_group():
    losses = torch.tensor([0.1, 0.2, 0.1, 0.15, 0.2, 0.1, 1.5, 1.8])   # group 1 (last two): worse
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    w = fis_weights(losses, groups, 2, c=0.5, temperature=1.0)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[groups == 1].sum() > 2 / 8                               # more than its share
    dist = group_distances(losses, groups, 2)
    assert dist[1] > dist[0] >= 0                                     # the group term too
    torch.testing.assert_close(fis_weights(losses, groups, 2, c=0.0, temperature=0.5),
                               torch.tensor(softmax(losses.numpy() / 0.5), dtype=torch.float32))
    flat = fis_weights(torch.full((8,), 0.7), groups, 2, c=0.5, temperature=1.0)
    torch.testing.assert_close(flat, torch.full((8,), 1 / 8))           # uniform -> plain mean


def test_sinkhorn_is_zero_for_identical_groups_and_grows_with_shift():
    base = torch.linspace(0.1, 0.9, 10)
    groups = torch.tensor([0] * 10 + [1] * 10)
    same = sinkhorn_fairness(torch.cat([base, base]), groups, 3)
    assert same.item() < 1e-4
    values = [sinkhorn_fairness(torch.cat([base, (base + s).clamp(0, 1)]), groups, 3).item()
              for s in (0.05, 0.15, 0.3)]
    assert values[0] > same.item() and values == sorted(values) and values[-1] > 10 * values[0]
    scores = torch.cat([base, base + 0.2]).requires_grad_()
    sinkhorn_fairness(scores, groups, 2).backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0


# --- modality dropout ----------------------------------------------------------------------------
def test_modality_dropout_never_drops_everything_and_is_off_in_eval():
    gen = torch.Generator().manual_seed(0)
    mask = dropout_mask(4000, 3, 0.6, gen, "cpu")
    assert not mask.all(dim=1).any()
    assert mask.float().mean().item() == pytest.approx(0.6 - 0.6 ** 3 / 3, abs=0.02)
    method = create_method(_cfg("modality_dropout", modality_dropout_rate=0.5), MODS, 3)
    feats = {m: torch.ones(64, 4) for m in MODS}
    same, present = method.features(feats, None, gen)
    # dropping = marking absent in the presence mask the fusion sees; features are untouched
    assert all(same[m] is feats[m] for m in MODS)
    assert any((~present[m]).any() for m in MODS)
    assert (torch.stack([present[m] for m in MODS], dim=1).any(dim=1)).all()
    method.eval()
    assert method.features(feats, None, gen) == (feats, None)


# --- unimodal ensemble -------------------------------------------------------------------------
def test_unimodal_ensemble_stage_one_keeps_fused_loss_out_of_encoders():
    cfg, model, clf, method, out, _, _ = _model_step("unimodal_ensemble", epochs=2)
    assert method.stage == 1
    enc = list(model.encoders.parameters())
    assert all(g is None for g in torch.autograd.grad(out["loss"], enc, retain_graph=True,
                                                      allow_unused=True))
    for m in MODS:       # each encoder learns from its own head
        grads = torch.autograd.grad(out["classifier_loss"], list(model.encoders[m].parameters()),
                                    retain_graph=True, allow_unused=True)
        assert sum(g.abs().sum().item() for g in grads if g is not None) > 0
    fused = [p for n, p in model.named_parameters() if not n.startswith("encoders.")]
    assert all(g is not None for g in torch.autograd.grad(out["loss"], fused, allow_unused=True))


def test_unimodal_ensemble_stage_two_leaves_encoders_unchanged(root, cache):
    trainer = Trainer(_cfg("unimodal_ensemble", root, cache, epochs=2, unimodal_epochs=1))
    trainer.train_epoch(progress=False)
    enc = copy.deepcopy(trainer.model.encoders.state_dict())
    head = trainer.model.head[-1].weight.detach().clone()
    stats = trainer.train_epoch(progress=False)
    assert stats["stage"] == 2.0
    for k, v in trainer.model.encoders.state_dict().items():
        assert torch.equal(v, enc[k]), k
    assert not torch.equal(trainer.model.head[-1].weight, head)


# --- where the factors act -----------------------------------------------------------------------
def _deltas(trainer, batch, unit_lr):
    trainer = copy.deepcopy(trainer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    if unit_lr:   # same step, factors not applied: the plain lr for every encoder
        orig = trainer._scale_encoder_lr
        trainer._scale_encoder_lr = lambda scale: orig(torch.ones_like(scale))
    torch.manual_seed(0)        # the OCT slice transformer's own dropout draws from it
    out = trainer.train_step(batch, torch.Generator().manual_seed(0))
    return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}, out


def test_update_target_scales_each_encoders_lr_by_exactly_its_factor(root, cache):
    trainer = Trainer(_cfg("modality", root, cache, modulation_target="update"))
    batch = trainer.data["train"].get_batch(list(range(16)))
    scaled, out = _deltas(trainer, batch, unit_lr=False)
    plain, _ = _deltas(trainer, batch, unit_lr=True)
    assert not torch.allclose(out["scale"], torch.ones(2, device=out["scale"].device))
    for n in scaled:
        factor = out["scale"][MODS.index(n.split(".")[1])].item() if n.startswith("encoders.") else 1.0
        torch.testing.assert_close(scaled[n], plain[n] * factor, rtol=1e-4, atol=3e-7, msg=n)  # fp32 rounding of p_new - p_old
    with pytest.raises(ValueError, match="modulation_target"):
        _cfg("ogm_ge", modulation_target="update")


# --- every method ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", available_methods("fusion"))
def test_every_method_gives_every_parameter_a_finite_gradient(mode):
    cfg, model, clf, method, out, _, _ = _model_step(mode)
    (out["loss"] + out["classifier_loss"]).backward()
    method.after_backward(model, out, torch.Generator().manual_seed(0))
    for name, p in list(model.named_parameters()) + list(clf.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), (mode, name)


# Golden test AUC and ES-AUC of the one-epoch command-line fit below, per method (one CPU thread;
# the same with two). A change to a method's step moves its figures: rerun, explain, update.
GOLDEN_CLI = {
    "baseline": (0.8, 0.7444108761329306), "modality": (0.4196078431372549, 0.3886893704850361),
    "fairness": (0.8235294117647058, 0.6648677819751753),
    "full": (0.4392156862745098, 0.40441982473108823),
    "full_reference": (0.7764705882352941, 0.6368919871543824),
    "ogm_ge": (0.7803921568627451, 0.7305798915310806),
    "cggm": (0.7294117647058824, 0.713202614379085), "fis": (0.792156862745098, 0.7461293997721412),
    "sinkhorn": (0.803921568627451, 0.743567096508273),
    # issue 22: a dropped modality is masked out of attention (was: h_m zeroed, its token kept)
    "modality_dropout": (0.8509803921568627, 0.7383153824910246),
    "unimodal_ensemble": (0.7647058823529412, 0.6039215686274509),
}


def test_every_method_has_golden_figures():
    assert set(GOLDEN_CLI) == set(available_methods("fusion"))


@pytest.mark.parametrize("mode", available_methods("fusion"))
def test_every_method_fits_from_the_command_line(mode, root, cache, capsys, one_thread):
    rc = cli_main(["fit", "--dataset", "fairvision", "--data-root", str(root), "--preset", "tiny",
                   "--mode", mode, "--epochs", "1", "--attribute", "race", "--no-progress",
                   "--set", f"cache_dir={cache}", "--set", "batch_size=16", "--set", "bootstrap=5",
                   "--set", "device=cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["config"]["mode"] == mode
    point = result["test"]["point"]
    torch.testing.assert_close((point["auc"], point["es_auc"]), GOLDEN_CLI[mode], rtol=1e-4,
                               atol=1e-5)


def test_unimodal_fit_and_refusal(root, cache, capsys):
    common = ["fit", "--dataset", "fairvision", "--data-root", str(root), "--preset", "tiny",
              "--epochs", "1", "--no-progress", "--modalities", "slo",
              "--set", f"cache_dir={cache}", "--set", "batch_size=16", "--set", "bootstrap=5"]
    assert cli_main(common + ["--mode", "baseline"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["config"]["modalities"] == ["slo"] and np.isfinite(result["test"]["point"]["auc"])
    assert cli_main(common + ["--mode", "full"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'full'" in err[0] and "slo" in err[0]


@pytest.mark.parametrize("mode", ["cggm", "ogm_ge", "modality_dropout"])   # state or own draws
def test_stateful_methods_resume_exactly(mode, root, cache, tmp_path):
    cfg = _cfg(mode, root, cache, epochs=2, evaluate_test=False)
    saved = {}
    straight = fit(cfg, on_epoch=lambda r: saved.setdefault("d", r.save_checkpoint(tmp_path)),
                   progress=False)
    resumed = fit(cfg, resume_from=saved["d"], progress=False)
    assert strict(straight["history"]) == strict(resumed["history"])   # NaN as null


@pytest.mark.parametrize("field,value", [("ogm_alpha", 0), ("fis_c", 1.5), ("fis_temperature", 0),
                                         ("sinkhorn_weight", -1), ("modality_dropout_rate", 1.0),
                                         ("ogm_end_epoch", -1), ("modulation_target", "weights")])
def test_method_hyperparameters_are_validated_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        _cfg("full", **{field: value})
    with pytest.raises(ValueError, match="'nonesuch'"):
        _cfg("nonesuch")
