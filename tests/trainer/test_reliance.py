"""Modality reliance: the encode-once shortcut equals permuting the inputs; the sign names the
modality that carries the label; the fit JSON and epoch metrics carry reliance and thresholds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.config import make_config
from trainer.data.transforms import batch_transform
from trainer.inference import BatchView
from trainer.loop import Trainer, fit
from trainer.metrics import prevalence_threshold
from trainer.reliance import encode_split, fused_probs


@pytest.fixture(scope="module")
def oct_only(dataset):
    """Only the OCT carries the label; the SLO is rendered from a decoy label."""
    return dataset("oct_only")


def _cfg(root, tmp_path, **kw):
    return make_config("fairvision", "race", preset="tiny", data_root=str(root),
                       cache_dir=str(tmp_path / "cache"), bootstrap=0, batch_size=16, **kw)


@pytest.mark.parametrize("modality", ["slo", "oct"])
def test_feature_permutation_equals_input_permutation(oct_only, tmp_path, modality):
    trainer = Trainer(_cfg(oct_only, tmp_path))
    trainer.train_epoch(progress=False)                      # a model whose output varies
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    shortcut = fused_probs(trainer, encode_split(trainer, "val")[0], modality, perm)
    batch = BatchView(trainer.data["val"], [np.arange(48)])[0]
    batch[modality] = batch[modality][perm]
    trainer.model.eval()
    with torch.no_grad():
        direct = trainer.model(batch_transform(batch, train=False, generator=None)).sigmoid()
    assert np.allclose(shortcut, direct.numpy(), atol=1e-5)
    unpermuted = fused_probs(trainer, encode_split(trainer, "val")[0])
    assert not np.allclose(shortcut, unpermuted, atol=1e-4)   # the permutation did something


def test_reliance_names_the_informative_modality(oct_only, tmp_path):
    reports = []
    res = fit(_cfg(oct_only, tmp_path, epochs=2, mode="baseline"), on_epoch=reports.append,
              progress=False)
    test = res["test"]["point"]
    assert test["auc"] > 0.7
    assert test["reliance"]["oct"]["auc"] > 0.15 > abs(test["reliance"]["slo"]["auc"])
    flat = reports[-1].flat()
    assert flat["val/reliance/oct/auc"] > flat["val/reliance/slo/auc"]
    for key in ("val/reliance/slo/es_auc", "val/dpd_at_val_threshold",
                "val/deodds_at_val_threshold", "val/threshold_val"):
        assert np.isfinite(flat[key])
    # the test split uses the threshold chosen on validation at the chosen epoch
    assert test["threshold_val"] == res["val"]["threshold_val"]


def test_one_encoder_pass_predicts_exactly_what_the_model_does(oct_only, tmp_path):
    """evaluate() encodes a split once and fuses the features (reliance reuses them): the
    probabilities are model(batch)'s, bit for bit on the CPU, in the same sample order."""
    trainer = Trainer(_cfg(oct_only, tmp_path))
    trainer.train_epoch(progress=False)
    for split in ("val", "test"):
        y, p, g = trainer.predict(split)
        y2, p2, g2, _ = trainer.predict_encoded(split)
        assert np.array_equal(p, p2) and np.array_equal(y, y2) and np.array_equal(g, g2)


def test_validation_threshold_is_the_prevalence_rule(oct_only, tmp_path):
    trainer = Trainer(_cfg(oct_only, tmp_path))
    trainer.train_epoch(progress=False)
    y, p, _ = trainer.predict("val")
    assert trainer.evaluate("val")["threshold_val"] == prevalence_threshold(y, p)


def test_unimodal_fits_score_on_the_informative_modality_only(dataset, tmp_path):
    """The known answer from the other side: trained on the OCT alone the model scores well; on
    the SLO alone (rendered from a decoy label) it stays at chance. 200 test samples: the AUC of
    a label-blind score has a standard deviation of about 0.04 there, so 0.15 is ~3.5 sd."""
    root = dataset("oct_only_test200")
    on_oct = fit(_cfg(root, tmp_path, epochs=2, mode="baseline", modalities="oct"),
                 progress=False)["test"]["point"]
    on_slo = fit(_cfg(root, tmp_path, epochs=2, mode="baseline", modalities="slo"),
                 progress=False)["test"]["point"]
    assert on_oct["auc"] > 0.75
    assert abs(on_slo["auc"] - 0.5) < 0.15
    assert set(on_oct["reliance"]) == {"oct"} and on_oct["reliance"]["oct"]["auc"] > 0.15
