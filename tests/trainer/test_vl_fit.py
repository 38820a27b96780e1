"""Every vision-language mode through the trainer: two epochs on generated FairVLMed and on
FairVLMed files the project did not write (a `Testing` folder, a notes CSV with blank summaries,
-1 codes); every trainable parameter gets a finite gradient; the fit JSON's test metrics are
recomputed with sklearn from the checkpoint's model run through transformers' CLIPModel."""
import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from trainer.__main__ import main as cli_main
from trainer.config import make_config
from trainer.data.transforms import batch_transform
from trainer.loop import Trainer, load_model
from trainer.methods import available_methods
from trainer.models import complete

MODES = [("clip", []), ("fairclip", ["fairclip_variant=official"]),
         ("fairclip", ["fairclip_variant=aligned"]), ("fairclip_dbpm", ["dbpm_beta_fp=1"]),
         ("dualfairvl", [])]


def write_foreign_fairvlmed(root, n=(40, 24, 24), seed=0):
    """FairVLMed as the lab ships it, written here by hand (not by the project's generator):
    Training/Validation/Testing, every released key, -1 unknowns, a notes CSV whose summary is
    blank for some files (the note is used there)."""
    rng = np.random.default_rng(seed)
    rows, k = [], 0
    for folder, count in zip(("Training", "Validation", "Testing"), n):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            k += 1
            y = i % 2
            image = rng.integers(0, 60, (70, 56)).astype(np.uint8)
            r = 6 + 10 * y                                   # a bigger bright disc if glaucoma
            image[35 - r:35 + r, 28 - r:28 + r] += 120
            name = f"data_{k:05d}.npz"
            note = ("iop 26 mmhg, cdr 0.8, glaucoma, start latanoprost" if y
                    else "iop 15 mmhg, cdr 0.3, normal exam, return 12 months")
            np.savez(root / folder / name, slo_fundus=image, glaucoma=y,
                     gender=rng.integers(0, 2), race=rng.integers(0, 3),
                     ethnicity=-1 if i % 7 == 0 else rng.integers(0, 2),
                     language=-1 if i % 5 == 0 else rng.integers(0, 3),
                     maritalstatus=-1 if i % 6 == 0 else rng.integers(0, 5),
                     age=60.0, md=-1.0, tds=np.zeros(52, np.float32), note=note,
                     note_extra="age 60. " + note)
            rows.append({"filename": name, "use": folder.lower(), "note": note,
                         "gpt4_summary": "" if i % 4 == 0 else note[:40]})
    with open(root / "data_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader(); writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def foreign_root(tmp_path_factory):
    return write_foreign_fairvlmed(tmp_path_factory.mktemp("foreign") / "FairVLMed")


@pytest.fixture(scope="module")
def vl_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("vlcache"))


def _args(root, cache, mode, sets, attribute="gender"):
    args = ["fit", "--dataset", "fairvlmed", "--data-root", str(root), "--preset", "tiny",
            "--mode", mode, "--epochs", "2", "--attribute", attribute, "--no-progress",
            "--set", f"cache_dir={cache}", "--set", "batch_size=8", "--set", "bootstrap=5",
            "--set", "device=cpu"]
    for s in sets:
        args += ["--set", s]
    return args


def test_the_vl_modes_are_registered_as_their_own_family():
    assert set(available_methods("clip")) == {"clip", "fairclip", "fairclip_dbpm"}
    assert available_methods("dualfairvl") == ("dualfairvl",)
    assert not set(available_methods("fusion")) & {"clip", "dualfairvl"}
    with pytest.raises(ValueError, match="dataset.*FairVLMed"):
        make_config("fairvision", "race", preset="tiny", mode="clip")
    with pytest.raises(ValueError, match="fairclip_variant"):
        make_config("fairvlmed", "race", preset="tiny", mode="fairclip",
                    sets=["fairclip_variant=paper"])
    paper = make_config("fairvlmed", "race", mode="fairclip")
    assert (paper.lr, paper.weight_decay, paper.note_max_length) == (1e-5, 6e-5, 77)


@pytest.mark.parametrize("mode,sets", MODES)
def test_every_trainable_parameter_gets_a_finite_gradient(mode, sets, vl_root, vl_cache):
    cfg = make_config("fairvlmed", "race", preset="tiny", mode=mode, data_root=str(vl_root),
                      cache_dir=vl_cache, batch_size=8, sets=sets)
    trainer = Trainer(cfg)
    trainer.model.train(); trainer.method.train(); trainer.method.begin_epoch(trainer.model, 0)
    batch = batch_transform(complete(trainer.data["train"].get_batch(np.arange(8))), train=True)
    trainer.method.begin_step(batch)
    features = trainer.model.encode(batch)
    logits = trainer.model.fuse(features)
    out = trainer.method.step(trainer.model, trainer.classifiers, features, logits,
                              batch["label"].float(), batch["group"].long(), batch.get("present"))
    (out["loss"] + out["classifier_loss"]).backward()
    trainable = [(n, p) for n, p in list(trainer.model.named_parameters())
                 + list(trainer.classifiers.named_parameters()) if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), (mode, name)
    if mode == "dualfairvl":   # the CLIP backbone is frozen: only the prompt model learns
        frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
        assert any(n.startswith("text.") for n in frozen)
        assert sum(p.numel() for _, p in trainable) < sum(
            p.numel() for p in trainer.model.parameters())


def _zero_shot_probs(model, dataset) -> np.ndarray:
    """p(glaucoma) of every test sample from transformers' own CLIPModel forward with the
    checkpoint's weights (prompts and CLIP normalisation applied here, not by our model)."""
    from tests.trainer.test_vl_models import _clip_of
    from trainer.models.clip import CLIP_MEAN, CLIP_STD
    from trainer.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    clip = _clip_of(model.float())
    batch = batch_transform(complete(dataset.get_batch(np.arange(len(dataset)))), train=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    cmean, cstd = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    with torch.no_grad():
        out = clip(pixel_values=(batch["slo"] * std + mean - cmean) / cstd,
                   input_ids=model.prompt_ids, attention_mask=model.prompt_mask)
    return out.logits_per_image.softmax(-1)[:, 1].numpy()


@pytest.mark.parametrize("mode,sets", MODES)
def test_every_mode_fits_generated_fairvlmed(mode, sets, vl_root, vl_cache, tmp_path, capsys):
    assert cli_main(_args(vl_root, vl_cache, mode, sets) + ["--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    point, probe = result["test"]["point"], result["test"]["linear_probe"]
    assert result["config"]["mode"] == mode and result["best_epoch"] in (1, 2)
    assert np.isfinite(point["auc"]) and np.isfinite(probe["test"]["auc"])
    assert set(point["group_auc"]) == {"female", "male"}
    # the score reads the image only: without it there is no score (null), never the complete figures
    slo_removed = result["test"]["missing"]["slo"]["removed"]
    assert slo_removed["auc"] is None and slo_removed["es_auc"] is None
    assert set(slo_removed["group_auc"]) == {"female", "male"} and not any(slo_removed["group_auc"].values())
    if mode == "dualfairvl":
        return
    # the same numbers from transformers' CLIPModel and sklearn: zero-shot score, AUC, group AUCs
    cfg = make_config("fairvlmed", "gender", preset="tiny", mode=mode, data_root=str(vl_root),
                      cache_dir=vl_cache)
    test = Trainer(cfg).data["test"]
    p = _zero_shot_probs(load_model(tmp_path / "checkpoint"), test)
    assert point["auc"] == pytest.approx(roc_auc_score(test.labels, p), abs=1e-6)
    for code, name in ((0, "female"), (1, "male")):
        rows = test.groups == code
        assert point["group_auc"][name] == pytest.approx(
            roc_auc_score(test.labels[rows], p[rows]), abs=1e-6)
    # the note plays no part in the zero-shot score: removing it changes nothing
    assert result["test"]["missing"]["note"]["removed"]["auc"] == pytest.approx(point["auc"])


@pytest.mark.parametrize("mode,sets", MODES)
def test_every_mode_fits_fairvlmed_files_the_project_did_not_write(mode, sets, foreign_root,
                                                                 vl_cache, capsys):
    assert cli_main(_args(foreign_root, vl_cache, mode, sets, attribute="ethnicity")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    point = result["test"]["point"]
    assert point["n"] == 24 - len(range(0, 24, 7))     # the -1 ethnicities dropped
    assert np.isfinite(point["auc"]) and np.isfinite(point["es_auc"])
    assert np.isfinite(result["test"]["linear_probe"]["test"]["auc"])


@pytest.mark.parametrize("mode", ["fairclip_dbpm", "dualfairvl"])   # per-pair memory; prototypes
def test_stateful_vl_modes_resume_exactly(mode, vl_root, vl_cache, tmp_path):
    from trainer.jsonout import strict
    from trainer.loop import fit

    cfg = make_config("fairvlmed", "gender", preset="tiny", mode=mode, data_root=str(vl_root),
                      cache_dir=vl_cache, batch_size=8, epochs=3, evaluate_test=False,
                      sets=["dbpm_warmup_epochs=1", "dbpm_beta_fp=1"])
    saved = {}
    straight = fit(cfg, on_epoch=lambda r: saved.setdefault("d", r.save_checkpoint(tmp_path)),
                   progress=False)
    resumed = fit(cfg, resume_from=saved["d"], progress=False)
    assert strict(straight["history"]) == strict(resumed["history"])
