"""Fusion model composed from a dict of encoders (any number M >= 2 of modalities).

h_m = encoder_m(x_m) -> projection to a shared width -> tokens [CLS, z_1..z_M] (+ modality
embeddings) -> TransformerEncoder -> CLS token -> MLP head -> one logit. Modality classifiers c_m
are small MLPs on h_m whose last layer has the same shape as the head's last layer, so their
gradients can be compared by cosine similarity (the direction loss L_gm).
"""
from __future__ import annotations

import torch
from torch import nn


def mlp_head(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                         nn.Dropout(dropout), nn.Linear(hidden, 1))


class MultimodalFusionModel(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], proj_dim: int, heads: int, layers: int,
                 head_hidden: int, dropout: float):
        super().__init__()
        self.modalities = tuple(encoders)
        self.encoders = nn.ModuleDict(encoders)
        self.projections = nn.ModuleDict(
            {m: nn.Linear(enc.out_dim, proj_dim) for m, enc in encoders.items()})
        self.modality_embed = nn.Parameter(torch.zeros(len(encoders), proj_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, proj_dim))
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(proj_dim, heads, proj_dim * 4, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = mlp_head(proj_dim, head_hidden, dropout)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack([self.projections[m](features[m]) for m in self.modalities], dim=1)
        tokens = tokens + self.modality_embed
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        fused = self.fusion(torch.cat([cls, tokens], dim=1))[:, 0]
        return self.head(fused).squeeze(-1)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.fuse(self.encode(batch))

    @property
    def head_last(self) -> nn.Linear:
        return self.head[-1]


def build_model(cfg) -> MultimodalFusionModel:
    from trainer.models.encoders import create_encoder

    encoders = {m: create_encoder(m, cfg) for m in cfg.resolved_modalities()}
    return MultimodalFusionModel(encoders, cfg.proj_dim, cfg.fusion_heads, cfg.fusion_layers,
                                 cfg.head_hidden, cfg.dropout)


def build_classifiers(cfg, model: MultimodalFusionModel) -> nn.ModuleDict:
    return nn.ModuleDict({m: mlp_head(model.encoders[m].out_dim, cfg.head_hidden, cfg.dropout)
                          for m in model.modalities})
