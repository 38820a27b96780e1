"""Encoders (timm, transformers) and the fusion model: shapes, every parameter's gradient,
pretrained weights from a local file or directory, clear errors when weights are missing."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from trainer.config import make_config
from trainer.models import build_classifiers, build_model
from trainer.models.encoders import create_image_encoder
from trainer.models.text import create_text_encoder, load_tokenizer


def _batch(cfg, b=4):
    s = cfg.image_size
    tok = load_tokenizer(cfg.note_encoder)
    note = tok(["iop 24 mmhg od, cup disc ratio 0.7"] * b, padding="max_length", truncation=True,
               max_length=cfg.note_max_length, return_tensors="pt")
    return {"slo": torch.randn(b, 3, s, s), "oct": torch.randn(b, cfg.oct_slices, s, s),
            "note": {"input_ids": note["input_ids"], "attention_mask": note["attention_mask"]}}


def test_three_modality_model_every_parameter_gets_a_finite_gradient():
    cfg = make_config("fairvision", "gender", preset="tiny", modalities=("slo", "oct", "note"))
    model = build_model(cfg)
    feats = model.encode(_batch(cfg))
    assert {m: f.shape for m, f in feats.items()} == {m: (4, 32) for m in ("slo", "oct", "note")}
    logits = model.fuse(feats)
    assert logits.shape == (4,)
    logits.sum().backward()
    for name, p in model.named_parameters():
        if "pooler" in name:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    classifiers = build_classifiers(cfg, model)
    # the direction loss compares last layers: classifier and head must have the same shape
    for m in model.modalities:
        assert classifiers[m][-1].weight.shape == model.head_last.weight.shape


def test_any_timm_name_including_cnns():
    enc = create_image_encoder("test_resnet", pretrained=False, img_size=32, in_chans=1)
    assert enc(torch.randn(2, 1, 32, 32)).shape == (2, enc.out_dim)


def test_pretrained_image_weights_from_a_local_file(tmp_path):
    import timm

    ref = timm.create_model("test_vit", pretrained=False, num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    size = ref.pretrained_cfg["input_size"][-1]
    enc = create_image_encoder("test_vit", pretrained=True, img_size=size, weights=str(tmp_path / "w.pth"))
    for (k, a), b in zip(ref.state_dict().items(), enc.state_dict().values()):
        assert torch.equal(a, b), k


def test_pretrained_text_encoder_and_tokenizer_from_a_local_directory(tmp_path):
    tiny = create_text_encoder("tiny_bert")
    tiny.backbone.save_pretrained(tmp_path)
    load_tokenizer("tiny_bert").save_pretrained(tmp_path)
    enc = create_text_encoder(str(tmp_path), pretrained=True)
    tok = load_tokenizer(str(tmp_path))
    ids = tok(["elevated iop"], return_tensors="pt")
    for (k, a), b in zip(tiny.state_dict().items(), enc.state_dict().values()):
        assert torch.equal(a, b), k
    assert enc({"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}).shape == (1, 32)


def test_missing_pretrained_weights_give_a_clear_error():
    """In a fresh interpreter with HF_HUB_OFFLINE=1 (huggingface_hub reads it at import, so
    setting it here would come too late and every lookup would wait on network retries)."""
    code = """if True:
        import pytest
        from trainer.models.encoders import create_image_encoder
        from trainer.models.text import load_tokenizer
        with pytest.raises(ValueError, match="slo_weights=PATH"):
            create_image_encoder("vit_small_patch16_224.augreg_in21k", pretrained=True,
                                 img_size=224)
        with pytest.raises(ValueError, match="local directory"):
            load_tokenizer("bert-base-uncased-not-cached")
        print("refused")
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stderr[-2000:]
