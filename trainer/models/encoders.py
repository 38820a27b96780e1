"""Encoder registry: timm image backbones, an OCT slice-stack encoder, transformers text encoders.

`create_encoder(modality, cfg)` looks names up in plain dicts, so a config or a search space can
name a backbone. Every encoder maps its input to a (B, out_dim) embedding h_m.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.text import create_text_encoder

# Small randomly initialised timm models for tests and smoke runs (no download).
TINY_IMAGE_MODELS = {
    "tiny_vit": dict(model_name="vit_tiny_patch16_224", patch_size=8, embed_dim=32, depth=2,
                     num_heads=2, mlp_ratio=2.0),
}


def create_image_encoder(name: str, *, pretrained: bool, img_size: int, in_chans: int = 3,
                         weights: str = "") -> nn.Module:
    """A timm backbone returning pooled features (num_classes=0); `.out_dim` is its width.

    `name` is any timm model name (with optional pretrained tag, e.g. `.augreg_in21k`) or a key of
    TINY_IMAGE_MODELS. `weights` is an optional local checkpoint file used instead of the hub.
    """
    import timm

    kwargs: dict = dict(num_classes=0, in_chans=in_chans)
    if name in TINY_IMAGE_MODELS:
        spec = dict(TINY_IMAGE_MODELS[name])
        model = timm.create_model(spec.pop("model_name"), pretrained=False, img_size=img_size,
                                  **spec, **kwargs)
    else:
        if weights:
            kwargs["pretrained_cfg_overlay"] = dict(file=weights)
        try:
            model = timm.create_model(name, pretrained=pretrained or bool(weights),
                                      img_size=img_size, **kwargs)
        except TypeError:  # CNNs take no img_size
            model = timm.create_model(name, pretrained=pretrained or bool(weights), **kwargs)
        except (RuntimeError, OSError) as exc:
            raise ValueError(
                f"image encoder {name!r}: pretrained weights are not in the hub cache and could not "
                f"be downloaded ({type(exc).__name__}: {exc}); give a local file with "
                f"--set slo_weights=PATH / oct_weights=PATH, or --set pretrained=false") from None
    model.out_dim = model.num_features
    return model


class SliceStackEncoder(nn.Module):
    """OCT volume (B, K, S, S) -> each slice through a shared 2D backbone -> learned slice
    positions -> small transformer over the K slice embeddings -> mean pool."""

    def __init__(self, backbone: nn.Module, num_slices: int, layers: int, heads: int = 4):
        super().__init__()
        self.backbone = backbone
        dim = backbone.out_dim
        while dim % heads:
            heads -= 1
        self.slice_pos = nn.Parameter(torch.zeros(1, num_slices, dim))
        nn.init.trunc_normal_(self.slice_pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.slice_transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_dim = dim

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        b, k, s, _ = volume.shape
        emb = self.backbone(volume.reshape(b * k, 1, s, s)).reshape(b, k, -1)
        return self.slice_transformer(emb + self.slice_pos[:, :k]).mean(dim=1)


def create_encoder(modality: str, cfg) -> nn.Module:
    if modality == "slo":
        return create_image_encoder(cfg.slo_encoder, pretrained=cfg.pretrained,
                                    img_size=cfg.image_size, weights=cfg.slo_weights)
    if modality == "oct":
        backbone = create_image_encoder(cfg.oct_encoder, pretrained=cfg.pretrained,
                                        img_size=cfg.image_size, in_chans=1,
                                        weights=cfg.oct_weights)
        return SliceStackEncoder(backbone, cfg.oct_slices, cfg.oct_slice_layers)
    if modality == "note":
        return create_text_encoder(cfg.note_encoder, pretrained=cfg.pretrained)
    raise ValueError(f"unknown modality {modality!r}")
