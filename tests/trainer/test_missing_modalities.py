"""Missing modalities and another site (issue 22): the presence mask in the model, every method on
incomplete batches, the missing-modality and shifted-site blocks of every evaluation, and the
known answer (only the SLO carries the label: removing it drops AUC to chance, removing the OCT
changes little)."""
import copy
import json
import shutil
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from trainer.__main__ import main as cli_main
from trainer.config import make_config
from trainer.data.synthetic import synthesize
from trainer.loop import Trainer, fit, result_json
from trainer.methods import available_methods, create_method
from trainer.methods.ogm_ge import ogm_coefficients
from trainer.models import build_classifiers, build_model, complete
from trainer.reliance import encode_split, fused_probs

MODS = ("slo", "oct")


class WithMissing:
    """A split with modalities absent at fixed rates: batch["present"] as the loaders give it and
    the absent rows' inputs zeroed, as the cache stores them (contract of issue 22)."""

    def __init__(self, base, rates: dict, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.base = base
        self.present = {m: rng.random(len(base)) >= rates.get(m, 0.0) for m in MODS}

    def __len__(self):
        return len(self.base)

    def get_batch(self, idx):
        batch, idx = self.base.get_batch(idx), np.asarray(idx)
        batch["present"] = {m: torch.from_numpy(self.present[m][idx].copy()) for m in MODS}
        for m in MODS:
            batch[m][~batch["present"][m]] = 0
        return batch


def _cfg(root, tmp_path, **kw):
    kw = {"batch_size": 16, "bootstrap": 0, "device": "cpu", "dropout": 0.0, **kw}
    return make_config("fairvision", "race", preset="tiny", data_root=str(root),
                       cache_dir=str(tmp_path / "cache"), **kw)


def _batch(cfg, b=24, seed=0, absent_oct=()):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    present = {"slo": torch.ones(b, dtype=torch.bool), "oct": torch.ones(b, dtype=torch.bool)}
    present["oct"][list(absent_oct)] = False
    return {"slo": torch.randn(b, 3, s, s, generator=g),
            "oct": torch.randn(b, cfg.oct_slices, s, s, generator=g),
            "label": torch.tensor([0.0, 1.0] * (b // 2)), "group": torch.arange(b) % 3,
            "present": present}


def _model(mode="full", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = make_config("fairvision", "race", preset="tiny", mode=mode, modalities=MODS,
                      dropout=0.0, **kw)
    model = build_model(cfg).eval()
    return cfg, model, build_classifiers(cfg, model), create_method(cfg, MODS, 3)


# --- the model -----------------------------------------------------------------------------
def test_all_present_gives_the_outputs_of_a_model_without_presence():
    cfg, model, _, _ = _model()
    batch = _batch(cfg)
    with torch.no_grad():
        old = model({k: v for k, v in batch.items() if k != "present"})
        assert torch.equal(model(complete(batch)), old)          # the loop's path: no mask at all
        masked = model(batch)                                    # an all-False padding mask
    torch.testing.assert_close(masked, old, rtol=0, atol=1e-6)


def test_removing_a_modality_equals_a_sample_that_never_had_it():
    cfg, model, _, _ = _model()
    batch = _batch(cfg, absent_oct=range(0, 24, 3))
    with torch.no_grad():
        features = model.encode({**batch, "present": None})     # every row really encoded
        removed = model.fuse(features, {"slo": batch["present"]["slo"],
                                        "oct": batch["present"]["oct"]})
        garbage = batch["oct"].clone()
        garbage[~batch["present"]["oct"]] = 1e3 * torch.randn_like(garbage[~batch["present"]["oct"]])
        lacking = model({**batch, "oct": garbage})               # those rows truly lack the OCT
        zeros = model.encode(batch)["oct"][~batch["present"]["oct"]]
    assert torch.equal(removed, lacking)
    assert torch.equal(zeros, torch.zeros_like(zeros))           # absent rows: zero features
    with torch.no_grad():                                        # and the mask did something
        assert not torch.allclose(removed, model.fuse(features), atol=1e-4)


def test_the_encoder_of_an_absent_modality_never_sees_the_row():
    cfg, model, _, _ = _model()
    seen = []
    model.encoders["oct"].register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))
    batch = _batch(cfg, b=8, absent_oct=(1, 2, 5))
    model(batch)
    model({**batch, "present": {**batch["present"], "oct": torch.zeros(8, dtype=torch.bool)}})
    assert seen == [5]                   # 5 present rows once; an all-absent batch skips it


# --- every method ----------------------------------------------------------------------------
def _method_grads(mode, batch, method, model, clf, seed=0):
    method = copy.deepcopy(method)
    features = model.encode(batch)
    logits = model.fuse(*method.features(features, batch["present"],
                                         torch.Generator().manual_seed(seed)))
    out = method.step(model, clf, features, logits, batch["label"], batch["group"],
                      batch["present"])
    params = list(model.parameters()) + list(clf.parameters())
    grads = torch.autograd.grad(out["loss"] + out["classifier_loss"], params, allow_unused=True)
    return out, dict(zip([n for n, _ in model.named_parameters()]
                         + [f"clf.{n}" for n, _ in clf.named_parameters()], grads))


@pytest.mark.parametrize("mode", available_methods("fusion"))
def test_every_method_trains_on_incomplete_batches_and_absent_rows_send_no_gradient(mode):
    """Changing what an absent row holds changes no loss and no gradient (the encoder and c_m
    never learn from it), every term stays finite, and with the OCT absent from the whole batch
    the OCT encoder gets no gradient at all."""
    cfg, model, clf, method = _model(mode, epochs=2)
    method.train()
    batch = _batch(cfg, absent_oct=(0, 3, 4, 9, 10))
    out, grads = _method_grads(mode, batch, method, model, clf)
    for k, v in out.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), (mode, k)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items()
               if n.startswith("encoders.oct")), mode                 # present rows do teach it
    other = {**batch, "oct": batch["oct"].clone()}
    other["oct"][[0, 3, 4, 9, 10]] = torch.randn(5, cfg.oct_slices, cfg.image_size, cfg.image_size)
    out2, grads2 = _method_grads(mode, other, method, model, clf)
    assert torch.equal(out["loss"], out2["loss"]), mode
    for name, g in grads.items():
        assert (g is None and grads2[name] is None) or torch.equal(g, grads2[name]), (mode, name)
    none = {**batch, "present": {**batch["present"], "oct": torch.zeros(24, dtype=torch.bool)}}
    out3, grads3 = _method_grads(mode, none, method, model, clf)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out3.values()), mode
    assert all(g is None or not g.any() for n, g in grads3.items()
               if n.startswith("encoders.oct")), mode


def test_multifair_statistics_use_present_samples_and_keep_empty_groups():
    """Group 0 has no OCT in the batch: its OCT EMA keeps its value (no NaN), the SLO's moves; the
    OCT's group shares are over the samples that have it; an all-absent modality keeps its speed
    EMA and gets fairness factor 1."""
    cfg, model, clf, method = _model("full", tau=1e-6)
    batch = _batch(cfg, absent_oct=range(0, 24, 3))              # group = index % 3 -> group 0
    _method_grads("full", batch, method, model, clf)              # on a copy: method untouched
    features = model.encode(batch)
    out = method.step(model, clf, features, model.fuse(features, batch["present"]),
                      batch["label"], batch["group"], batch["present"])
    assert method.group_ema[1, 0] == 0.5 and (method.group_ema[1, 1:] != 0.5).all()
    assert (method.group_ema[0] != 0.5).all()
    assert all(torch.isfinite(v).all() for v in out.values() if torch.is_tensor(v))
    none = {**batch, "present": {**batch["present"], "oct": torch.zeros(24, dtype=torch.bool)}}
    speed, ema = method.speed_ema.clone(), method.group_ema.clone()
    features = model.encode(none)
    out = method.step(model, clf, features, model.fuse(features, none["present"]),
                      none["label"], none["group"], none["present"])
    assert method.speed_ema[1] == speed[1] and torch.equal(method.group_ema[1], ema[1])
    assert out["fairness_factor/oct"] == 1.0
    assert all(torch.isfinite(v).all() for v in out.values() if torch.is_tensor(v))


def test_ogm_scores_of_an_absent_modality_are_left_out():
    coef = ogm_coefficients(torch.tensor([3.0, 2.0, 99.0]), 0.5,
                            defined=torch.tensor([True, True, False]))
    assert torch.equal(coef[:2], ogm_coefficients(torch.tensor([3.0, 2.0]), 0.5))
    assert coef[2] == 1.0
    alone = ogm_coefficients(torch.tensor([3.0, 0.0]), 0.5, defined=torch.tensor([True, False]))
    assert torch.equal(alone, torch.ones(2))


def test_modality_dropout_drops_only_present_modalities_and_keeps_one():
    cfg, _, _, method = _model("modality_dropout", modality_dropout_rate=0.9)
    method.train()
    present = {"slo": torch.rand(4000) < 0.7, "oct": torch.ones(4000, dtype=torch.bool)}
    present["oct"][~present["slo"]] = True                        # every sample has one
    feats = {m: torch.ones(4000, 4) for m in MODS}
    out, kept = method.features(feats, present, torch.Generator().manual_seed(0))
    assert out is feats
    for m in MODS:
        assert not (kept[m] & ~present[m]).any()                 # never brings one back
    assert (kept["slo"] | kept["oct"]).all()                     # never drops everything
    only_oct = ~present["slo"]
    assert kept["oct"][only_oct].all()                           # its one modality is kept


# --- evaluation ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(dataset):
    return dataset("methods")


def _missing_data(trainer_cfg, rates, tmp_path):
    from trainer.data import build_datasets
    data = build_datasets(trainer_cfg)
    return {s: WithMissing(d, rates, seed=i) for i, (s, d) in enumerate(data.items())}


def test_evaluation_reports_removed_and_absent_exactly(root, tmp_path):
    cfg = _cfg(root, tmp_path, mode="baseline", epochs=1)
    data = _missing_data(cfg, {"slo": 0.3, "oct": 0.25}, tmp_path)
    trainer = Trainer(cfg, datasets=data)
    trainer.train_epoch(progress=False)
    val = trainer.evaluate("val")
    y, p, g = trainer.predict("val")
    for i, m in enumerate(MODS):
        lacks = ~data["val"].present[m]
        absent = val["missing"][m]["absent"]
        assert absent["n"] == lacks.sum() > 0
        assert absent["auc"] == pytest.approx(roc_auc_score(y[lacks], p[lacks]), abs=1e-12)
        # removed = the model on the same split with m absent from every sample
        trainer.data["gone"] = WithMissing(data["val"].base, {}, seed=1)
        trainer.data["gone"].present = {**data["val"].present, m: np.zeros(len(y), bool)}
        y2, p2, _ = trainer.predict("gone")
        torch.testing.assert_close(p2, fused_probs(trainer, *_removed(trainer, m)), rtol=0,
                                   atol=1e-6)
        assert val["missing"][m]["removed"]["auc"] == pytest.approx(roc_auc_score(y2, p2), abs=1e-6)
        assert set(val["missing"][m]["removed"]["group_auc"]) == set(val["group_auc"])


def _removed(trainer, m):
    features, y, _, present = encode_split(trainer, "val")
    return features, None, None, {**present, m: torch.zeros(len(y), dtype=torch.bool)}


def test_fit_json_and_epoch_metrics_carry_the_missing_blocks(root, tmp_path):
    cfg = _cfg(root, tmp_path, mode="full", epochs=1, bootstrap=3)
    reports = []
    res = fit(cfg, on_epoch=reports.append, progress=False,
              datasets=_missing_data(cfg, {"oct": 0.3}, tmp_path))
    flat = reports[-1].flat()
    for m in MODS:
        assert math.isfinite(flat[f"val/missing/{m}/auc"])
        assert math.isfinite(flat[f"val/missing/{m}/es_auc"])
        assert flat[f"val/absent/{m}/n"] == res["val"]["missing"][m]["absent"]["n"]
    assert flat["val/absent/slo/n"] == 0 and math.isnan(flat["val/absent/slo/es_auc"])
    assert flat["val/absent/oct/n"] > 0
    line = result_json(res)
    parsed = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert set(parsed["test"]["missing"]) == set(MODS)
    assert parsed["test"]["missing"]["slo"]["absent"] == {
        "n": 0, "auc": None, "es_auc": None, "group_auc": {"asian": None, "black": None,
                                                          "white": None}}
    assert set(parsed["val"]["missing"]["oct"]["removed"]) == {"auc", "es_auc", "group_auc"}


# --- another site ------------------------------------------------------------------------------
def test_shift_root_scores_the_other_sites_test_split(root, tmp_path, capsys):
    other = synthesize("fairvision", tmp_path / "site2" / "fairvision", n_train=16, n_val=16,
                       n_test=40, seed=11)
    cfg = _cfg(root, tmp_path, mode="baseline", epochs=1, shift_root=str(other))
    res = fit(cfg, progress=False)
    shift = res["test"]["shift"]
    assert shift["n"] == 40 and set(shift["missing"]) == set(MODS)
    assert shift["threshold_val"] == res["val"]["threshold_val"]     # the val threshold
    # the same fit with the other site's test split AS its test split scores the same
    from trainer.data import build_datasets
    data = {**build_datasets(cfg), "test": build_datasets(cfg.replace(data_root=str(other)))["test"]}
    same = fit(cfg.replace(shift_root=""), progress=False, datasets=data)["test"]["point"]
    assert shift["auc"] == same["auc"] and shift["es_auc"] == same["es_auc"]
    assert shift["dpd_at_val_threshold"] == same["dpd_at_val_threshold"]
    for key in ("es_auc", "dpd", "deodds", "group_auc"):
        assert key in shift
    rc = cli_main(["fit", "--dataset", "fairvision", "--data-root", str(root), "--preset", "tiny",
                   "--epochs", "1", "--no-progress", "--shift-root", str(tmp_path / "nowhere"),
                   "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "batch_size=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nowhere" in err[0] and "shift_root" in err[0]


# --- the known answer ----------------------------------------------------------------------------
def test_known_answer_removing_the_informative_slo_drops_to_chance_the_oct_changes_nothing(
        tmp_path_factory):
    """Only the SLO carries the label (the OCT is rendered from a decoy label): a model trained
    with modality dropout scores well; with the SLO removed from every test sample its score is
    label-blind (AUC about 0.5: the null AUC's standard deviation at 600 test samples is about
    0.025, so 0.08 is over 3 sd), with the OCT removed it hardly moves. A small CNN for the SLO:
    the cup of a 32-pixel fundus is a few pixels wide, which the tiny ViT learns far slower."""
    root = synthesize("fairvision", tmp_path_factory.mktemp("slo_only") / "fairvision",
                      n_train=256, n_val=64, n_test=600, seed=7, informative=("slo",))
    cfg = make_config("fairvision", "race", preset="tiny", data_root=str(root),
                      cache_dir=str(root.parent / "cache"), mode="modality_dropout", epochs=4,
                      batch_size=16, bootstrap=0, device="cpu", slo_encoder="test_resnet",
                      select_metric="auc")
    res = fit(cfg, progress=False)
    point, missing = res["test"]["point"], res["test"]["missing"]
    assert point["auc"] > 0.72
    assert abs(missing["slo"]["removed"]["auc"] - 0.5) < 0.08
    assert abs(missing["oct"]["removed"]["auc"] - point["auc"]) < 0.02
    assert point["reliance"]["slo"]["auc"] > 0.15 > abs(point["reliance"]["oct"]["auc"])


def test_auc_summary_agrees_with_evaluate_fairness_and_sklearn():
    from trainer.metrics import auc_summary, evaluate_fairness
    rng = np.random.default_rng(0)
    y, p, g = rng.integers(0, 2, 300), rng.random(300), rng.integers(-1, 3, 300)
    names = {0: "a", 1: "b", 2: "c"}
    s, e = auc_summary(y, p, g, names), evaluate_fairness(y, p, g, group_names=names)
    assert (s["auc"], s["es_auc"], s["group_auc"]) == (e["auc"], e["es_auc"], e["group_auc"])
    one = g == 1                                   # one group: es_auc = auc / (1 + 0)
    assert auc_summary(y[one], p[one], g[one], names)["es_auc"] == roc_auc_score(y[one], p[one])
    empty = auc_summary(y[:0], p[:0], g[:0], names)
    assert math.isnan(empty["auc"]) and math.isnan(empty["es_auc"]) and len(empty["group_auc"]) == 3


# --- through the real loaders: generated missing modalities and a shifted site -------------------
@pytest.fixture(scope="module")
def holes_root(tmp_path_factory):
    return synthesize("fairvision", tmp_path_factory.mktemp("holes") / "fairvision", n_train=64,
                      n_val=48, n_test=48, seed=5, missing="slo=0.3,oct=0.2")


@pytest.mark.parametrize("mode", available_methods("fusion"))
def test_every_method_fits_generated_data_with_missing_modalities(mode, holes_root, tmp_path):
    cfg = _cfg(holes_root, tmp_path, mode=mode, epochs=1, evaluate_test=False)
    res = fit(cfg, progress=False)
    h = res["history"][-1]
    assert math.isfinite(h["train/loss"]) and math.isfinite(h["val/auc"])
    assert h["val/absent/slo/n"] > 0 and h["val/absent/oct/n"] > 0


def test_generated_missing_data_and_shifted_site_reach_the_fit_json(holes_root, tmp_path):
    from trainer.data import build_datasets
    shifted = synthesize("fairvision", tmp_path / "site2" / "fairvision", n_train=16, n_val=16,
                         n_test=40, seed=6, site="shifted", missing="oct=0.25")
    for folder in ("Training", "Validation"):   # another site may hold its test data only
        shutil.rmtree(shifted / "Glaucoma" / folder)
    cfg = _cfg(holes_root, tmp_path, mode="full", epochs=1, shift_root=str(shifted))
    res = json.loads(result_json(fit(cfg, progress=False)),
                     parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    data = build_datasets(cfg)
    for split in ("val", "test"):
        for m in MODS:
            assert res[split]["missing"][m]["absent"]["n"] == (~data[split].present[m]).sum()
    shift = res["test"]["shift"]
    other = build_datasets(cfg.replace(data_root=str(shifted)), splits=("test",))["test"]
    assert shift["n"] == len(other) == 40
    assert shift["missing"]["oct"]["absent"]["n"] == (~other.present["oct"]).sum() > 0
    assert shift["missing"]["slo"]["absent"]["n"] == 0
