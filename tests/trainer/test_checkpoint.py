"""Checkpoint folders (trainer/checkpoint.py): best model only or with exact-resume state, a
manifest that tells complete folders, exact resume, the kept model's dtype."""
import json

import pytest
import torch
from safetensors.torch import load_file

from trainer.checkpoint import (BEST_FILE, MANIFEST, STATE_FILE, NotResumable, folder_complete,
                                read_manifest, write_snapshot)
from trainer.config import make_config
from trainer.jsonout import strict
from trainer.loop import Trainer, evaluate_checkpoint, fit, load_model


@pytest.fixture(scope="module")
def root(dataset):
    return dataset("checkpoint")


def _cfg(root, **kw):
    kw.setdefault("epochs", 2)
    kw.setdefault("bootstrap", 0)
    return make_config("fairvision", "gender", preset="tiny", data_root=str(root), **kw)


def _trained(root, **kw):
    """A Trainer after one epoch, its weights kept as the best (as fit() keeps them)."""
    trainer = Trainer(_cfg(root, **kw))
    trainer.train_epoch(progress=False)
    val = trainer.evaluate("val")
    trainer.best = {"epoch": trainer.epoch, "score": float(val["es_auc"]), "val": val}
    trainer.best_weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    return trainer


def test_manifest_lists_exactly_what_was_written(root, tmp_path):
    trainer = _trained(root)
    full = trainer.save_checkpoint(tmp_path / "full")
    best_only = trainer.save_checkpoint(tmp_path / "best", resume=False)
    for folder, expected in ((full, {BEST_FILE, STATE_FILE}), (best_only, {BEST_FILE})):
        manifest = read_manifest(folder)
        on_disk = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != MANIFEST}
        assert manifest["files"] == on_disk and set(on_disk) == expected
        assert manifest["resume"] == (STATE_FILE in expected) and manifest["epoch"] == 1
        assert folder_complete(folder)
        json.loads((folder / MANIFEST).read_text())   # strict JSON


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_best_model_is_the_best_weights_cast_to_the_dtype(root, tmp_path, dtype):
    trainer = _trained(root, best_model_dtype=dtype)
    folder = trainer.save_checkpoint(tmp_path, resume=False)
    stored = load_file(str(folder / BEST_FILE))
    target = getattr(torch, dtype)
    assert set(stored) == set(trainer.best_weights)
    for name, tensor in trainer.best_weights.items():
        expected = tensor.to(target) if tensor.is_floating_point() else tensor
        assert stored[name].dtype == expected.dtype and torch.equal(stored[name], expected), name
    # bf16 halves the bytes of fp32 weights (the manifest's sizes are the files')
    floats = sum(t.numel() for t in trainer.best_weights.values() if t.is_floating_point())
    assert read_manifest(folder)["files"][BEST_FILE] >= floats * target.itemsize


def test_bad_dtype_is_refused_naming_the_field(root):
    with pytest.raises(ValueError, match="best_model_dtype"):
        _cfg(root, best_model_dtype="int8").validate()


def test_best_only_folder_loads_the_model_but_refuses_resume(root, tmp_path):
    trainer = _trained(root)
    folder = trainer.save_checkpoint(tmp_path, resume=False)
    model = load_model(folder)
    kept = load_file(str(folder / BEST_FILE))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, kept[name].float() if kept[name].is_floating_point() else kept[name])
    assert evaluate_checkpoint(folder, bootstrap=0)["point"]["auc"] > 0
    with pytest.raises(NotResumable, match="best model only"):
        Trainer(_cfg(root)).load_checkpoint(folder)


def test_incomplete_folders_are_told_apart(root, tmp_path):
    trainer = _trained(root)
    cut = trainer.save_checkpoint(tmp_path / "cut")
    with open(cut / STATE_FILE, "r+b") as f:   # an upload cut off midway
        f.truncate(10)
    assert not folder_complete(cut)
    missing = trainer.save_checkpoint(tmp_path / "missing")
    (missing / BEST_FILE).unlink()
    assert not folder_complete(missing)
    no_manifest = trainer.save_checkpoint(tmp_path / "nomanifest")
    (no_manifest / MANIFEST).unlink()
    assert not folder_complete(no_manifest)


def test_resume_from_any_epoch_equals_the_uninterrupted_fit(root, tmp_path):
    """Exact resume, also when the best epoch came before the checkpoint: the kept best model is
    rounded to bf16 and fit() scores the test split with those weights either way."""
    cfg = _cfg(root, epochs=3, bootstrap=0)
    saved = {}

    def keep(report):
        saved[report.epoch] = report.save_checkpoint(tmp_path / f"e{report.epoch}")

    straight = fit(cfg, on_epoch=keep, progress=False)
    for epoch in (1, 2):
        resumed = fit(cfg, resume_from=saved[epoch], progress=False)
        assert strict(resumed["history"]) == strict(straight["history"]), epoch
        assert resumed["best_epoch"] == straight["best_epoch"]
        assert resumed["test"]["point"] == straight["test"]["point"], epoch


def test_a_snapshot_written_after_training_went_on_is_the_epoch_s_checkpoint(root, tmp_path):
    """The search writes an epoch's checkpoint on another thread while the next epoch trains: a
    snapshot taken at epoch 1 and written only after the fit ended holds exactly what a
    synchronous write at epoch 1 holds, and resuming from it equals the uninterrupted fit. (The
    check is not blind: the live weights moved on after the snapshot.)"""
    cfg = _cfg(root, epochs=3)
    held = {}

    def keep(report):
        if report.epoch == 1:
            held["snap"] = report.snapshot(resume=True)
            held["sync"] = report.save_checkpoint(tmp_path / "sync")
        held["last"] = report.snapshot(resume=True)

    straight = fit(cfg, on_epoch=keep, progress=False)
    late = write_snapshot(held["snap"], tmp_path / "late")
    # map_location: the synchronous write stores the live (possibly CUDA) tensors, a snapshot
    # stores CPU copies; both load onto any device through load_state
    a, b = torch.load(held["sync"] / STATE_FILE, weights_only=False, map_location="cpu"), \
        torch.load(late / STATE_FILE, weights_only=False, map_location="cpu")
    assert b["epoch"] == 1 and strict(b["history"]) == strict(a["history"])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for group in ("opt", "clf_opt"):
        for pid, moments in a[group]["state"].items():
            for key, value in moments.items():
                assert torch.equal(value, b[group]["state"][pid][key]), (group, pid, key)
    assert load_file(str(late / BEST_FILE)).keys() == load_file(str(held["sync"] / BEST_FILE)).keys()
    manifest = {k: v for k, v in read_manifest(late).items() if k != "files"}
    assert manifest == {k: v for k, v in read_manifest(held["sync"]).items() if k != "files"}
    moved = held["last"].state["model"]
    assert held["last"].epoch == 3
    assert any(not torch.equal(moved[k], v) for k, v in b["model"].items())
    resumed = fit(cfg, resume_from=late, progress=False)
    assert strict(resumed["history"]) == strict(straight["history"])   # NaN as null
    assert resumed["test"]["point"] == straight["test"]["point"]


def test_evaluate_checkpoint_gives_the_fit_s_own_test_figures(root, tmp_path):
    """The model a checkpoint hands on, scored by evaluate_checkpoint, gives exactly the test
    figures fit() reported (the same rounded weights, the chosen epoch's validation threshold)."""
    cfg = _cfg(root, epochs=2)
    saved = {}
    result = fit(cfg, on_epoch=lambda r: saved.__setitem__("dir", r.save_checkpoint(tmp_path, resume=False)),
                 progress=False)
    scored = evaluate_checkpoint(saved["dir"])
    assert scored["epoch"] == result["best_epoch"]
    assert scored["point"] == result["test"]["point"]
