"""Fusion model composed from a dict of encoders (any number M >= 2 of modalities).

h_m = encoder_m(x_m) -> projection to a shared width -> tokens [CLS, z_1..z_M] (+ modality
embeddings) -> TransformerEncoder -> CLS token -> MLP head -> one logit. Modality classifiers c_m
are small MLPs on h_m whose last layer has the same shape as the head's last layer, so their
gradients can be compared by cosine similarity (the direction loss L_gm).

Missing modalities (issue 22): batch["present"] = {modality: bool (B,)}. `encode` runs encoder m
on the present rows only (an encoder never sees a placeholder image, so its statistics and
gradients come from real inputs) and gives absent rows zero features; `fuse` masks absent
modality tokens out of attention (src_key_padding_mask; the CLS token always attends), so an
absent modality's features never reach the prediction: fusing real features with present[m]
False gives exactly what a sample without m gets. `present=None` (or no "present" key) means
every modality is present, and a complete batch takes the unmasked path (same numbers as before
presence existed).
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
        """{modality: (B, d) features}; rows absent in batch["present"] are zeros and their
        inputs never pass through the encoder."""
        present = batch.get("present") or {}
        return {m: self._encode_present(m, batch[m], present.get(m)) for m in self.modalities}

    def _encode_present(self, m: str, x, present: torch.Tensor | None) -> torch.Tensor:
        return encode_rows(self.encoders[m], x, present)

    def fuse(self, features: dict[str, torch.Tensor],
             present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        tokens = torch.stack([self.projections[m](features[m]) for m in self.modalities], dim=1)
        tokens = tokens + self.modality_embed
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        fused = self.fusion(torch.cat([cls, tokens], dim=1),
                            src_key_padding_mask=self.padding_mask(present, tokens))[:, 0]
        return self.head(fused).squeeze(-1)

    def padding_mask(self, present: dict | None, tokens: torch.Tensor) -> torch.Tensor | None:
        """(B, 1 + M) bool, True = not attended: the absent modality tokens; never the CLS."""
        if present is None:
            return None
        b = tokens.shape[0]
        absent = [torch.zeros(b, dtype=torch.bool, device=tokens.device)]   # CLS always attends
        for m in self.modalities:
            p = present.get(m)
            absent.append(torch.zeros_like(absent[0]) if p is None
                          else ~p.reshape(-1).to(tokens.device, torch.bool))
        return torch.stack(absent, dim=1)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.fuse(self.encode(batch), batch.get("present"))

    @property
    def head_last(self) -> nn.Linear:
        return self.head[-1]


def encode_rows(encoder: nn.Module, x, present: torch.Tensor | None) -> torch.Tensor:
    """encoder(x) on the rows of x that are `present` (None: all), zeros for the others."""
    if present is None:
        return encoder(x)
    device = next(iter(x.values())).device if isinstance(x, dict) else x.device
    present = present.reshape(-1).to(device, torch.bool)
    rows = present.nonzero().squeeze(1)     # a device sync on CUDA: incomplete batches only
    n = present.numel()                     # (complete ones drop "present": complete())
    if len(rows) == n:
        return encoder(x)
    if len(rows) == 0:
        return torch.zeros(n, encoder.out_dim, device=device)
    h = encoder(_rows(x, rows))
    return h.new_zeros(n, h.shape[1]).index_copy(0, rows, h)


def _rows(x, rows: torch.Tensor):
    """The rows `rows` of an input: a tensor, or a dict of tensors (a tokenised note)."""
    if isinstance(x, dict):
        return {k: _rows(v, rows) for k, v in x.items()}
    return x.index_select(0, rows)


def build_model(cfg) -> MultimodalFusionModel:
    from trainer.models.encoders import create_encoder

    encoders = {m: create_encoder(m, cfg) for m in cfg.resolved_modalities()}
    return MultimodalFusionModel(encoders, cfg.proj_dim, cfg.fusion_heads, cfg.fusion_layers,
                                 cfg.head_hidden, cfg.dropout)


def build_classifiers(cfg, model: MultimodalFusionModel) -> nn.ModuleDict:
    return nn.ModuleDict({m: mlp_head(model.encoders[m].out_dim, cfg.head_hidden, cfg.dropout)
                          for m in model.modalities})
