"""DualFairVL, as we READ it (arXiv 2508.18886 has no public code; docs/methods.md says which
parts are the abstract's and which are ours).

Frozen CLIP. Trainable: learnable context tokens for the class prompts ("X..X non-glaucoma.",
"X..X glaucoma.") and, separately, for the group prompts ("X..X female." ...); linear projections
of their text features to class anchors and group anchors (kept near orthogonal by a penalty in
the method); a hypernetwork (MLP) from the image's CLS feature (a first, frozen pass) to visual
prompt tokens inserted after the CLS token of a second pass; two cross-attention blocks (the
parallel target and sensitive branches) in which the image's patch tokens attend to the class
anchors and to the group anchors, their mean added to the image feature.

    model.encode(batch) -> {"slo": [f_target, f_sensitive]} (B, 2D), one tensor so the loop's
        feature plumbing (reliance, missing blocks) carries both branches
    model.fuse(features) -> the target branch's logit s_1 - s_0 over the two class anchors
    model.group_logits(features) -> (B, G) the sensitive branch against the group anchors
Notes play no part (the method sets modalities=slo).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ATTRIBUTES
from trainer.models.clip import ImageTower, TextTower, load_clip, load_clip_tokenizer, tokenized

CLASS_NAMES = ("non-glaucoma", "glaucoma")
PLACEHOLDER = "X"


def _heads(width: int) -> int:
    return next(h for h in (8, 4, 2, 1) if width % h == 0)


class PromptLearner(nn.Module):
    """Learnable context vectors shared by a set of prompts "X .. X <name>." (CoOp-style): the
    placeholder positions 1..n of the frozen token embeddings are replaced by the context."""

    def __init__(self, text: TextTower, tokenizer, names, n_ctx: int):
        super().__init__()
        prompts = [" ".join([PLACEHOLDER] * n_ctx) + f" {name}." for name in names]
        tokens = tokenized(tokenizer, prompts)
        self.register_buffer("input_ids", tokens["input_ids"], persistent=False)
        self.register_buffer("attention_mask", tokens["attention_mask"], persistent=False)
        with torch.no_grad():
            embeds = text.text_model.embeddings.token_embedding(tokens["input_ids"])
        self.register_buffer("embeds", embeds, persistent=False)
        self.ctx = nn.Parameter(torch.randn(n_ctx, embeds.shape[-1]) * 0.02)
        self.n_ctx = n_ctx

    def forward(self, text: TextTower) -> torch.Tensor:
        """(K, D) text features of the K prompts."""
        ctx = self.ctx.unsqueeze(0).expand(len(self.embeds), -1, -1).to(self.embeds.dtype)
        embeds = torch.cat([self.embeds[:, :1], ctx, self.embeds[:, 1 + self.n_ctx:]], dim=1)
        return text.from_embeddings(embeds, self.input_ids, self.attention_mask)


class PromptedImageEncoder(nn.Module):
    """Frozen CLIP image tower with instance-aware visual prompts: hypernetwork(CLS of a frozen
    first pass) -> n prompt tokens inserted after the CLS token of the second pass.
    Returns (projected CLS feature (B, D), projected patch tokens (B, P, D))."""

    def __init__(self, image: ImageTower, n_prompts: int, out_dim: int):
        super().__init__()
        self.image = image
        width = image.vision_model.config.hidden_size
        self.hypernet = nn.Sequential(nn.Linear(width, width // 2), nn.GELU(),
                                      nn.Linear(width // 2, n_prompts * width))
        self.n_prompts, self.width = n_prompts, width
        self.out_dim = out_dim     # the width of the model's features (both branches)

    def forward(self, slo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vision, pixels = self.image.vision_model, self.image.pixels(slo)
        with torch.no_grad():
            cls = vision(pixel_values=pixels).pooler_output
        prompts = self.hypernet(cls).reshape(len(cls), self.n_prompts, self.width)
        emb = vision.embeddings(pixels)
        h = vision.pre_layrnorm(torch.cat([emb[:, :1], prompts.to(emb.dtype), emb[:, 1:]], dim=1))
        h = vision.encoder(inputs_embeds=h).last_hidden_state
        project = lambda x: self.image.visual_projection(vision.post_layernorm(x))  # noqa: E731
        return project(h[:, 0]), project(h[:, 1 + self.n_prompts:])


class DualFairVLModel(nn.Module):
    score_needs = ("slo",)   # the score reads the image only: none without it (trainer.reliance)

    def __init__(self, clip, tokenizer, group_names, n_ctx: int, n_prompts: int):
        super().__init__()
        for p in clip.parameters():
            p.requires_grad_(False)
        dim = clip.config.projection_dim
        self.modalities = ("slo",)
        self.text = TextTower(clip)
        self.encoders = nn.ModuleDict({"slo": PromptedImageEncoder(ImageTower(clip), n_prompts,
                                                                   2 * dim)})
        self.logit_scale = clip.logit_scale
        self.class_prompts = PromptLearner(self.text, tokenizer, CLASS_NAMES, n_ctx)
        self.group_prompts = PromptLearner(self.text, tokenizer, group_names, n_ctx)
        self.class_proj, self.group_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        for proj in (self.class_proj, self.group_proj):     # start at CLIP's text features
            nn.init.eye_(proj.weight); nn.init.zeros_(proj.bias)
        self.target_attn = nn.MultiheadAttention(dim, _heads(dim), batch_first=True)
        self.sensitive_attn = nn.MultiheadAttention(dim, _heads(dim), batch_first=True)
        self.dim = dim

    def anchors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(class anchors (2, D), group anchors (G, D))."""
        return (self.class_proj(self.class_prompts(self.text)),
                self.group_proj(self.group_prompts(self.text)))

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        image, tokens = self.encoders["slo"](batch["slo"])
        class_anchors, group_anchors = self.anchors()
        branches = []
        for attn, anchors in ((self.target_attn, class_anchors),
                              (self.sensitive_attn, group_anchors)):
            kv = anchors.unsqueeze(0).expand(len(tokens), -1, -1).to(tokens.dtype)
            attended, _ = attn(tokens, kv, kv, need_weights=False)
            branches.append(image + attended.mean(dim=1))
        return {"slo": torch.cat(branches, dim=1)}

    def branches(self, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return features["slo"][:, :self.dim], features["slo"][:, self.dim:]

    def cosine_logits(self, feature: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        scale = self.logit_scale.float().exp()
        return scale * F.normalize(feature.float(), dim=-1) @ F.normalize(anchors.float(), dim=-1).T

    def fuse(self, features: dict, present: dict | None = None) -> torch.Tensor:
        s = self.cosine_logits(self.branches(features)[0], self.anchors()[0])
        return s[:, 1] - s[:, 0]

    def group_logits(self, features: dict) -> torch.Tensor:
        return self.cosine_logits(self.branches(features)[1], self.anchors()[1])

    def forward(self, batch: dict) -> torch.Tensor:
        return self.fuse(self.encode(batch))


def build_dualfairvl_model(cfg) -> DualFairVLModel:
    clip = load_clip(cfg.clip_model, cfg.pretrained, cfg.image_size)
    names = [name.replace("_", " ") for name in ATTRIBUTES[cfg.attribute].values()]
    return DualFairVLModel(clip, load_clip_tokenizer(cfg.clip_model), names,
                           cfg.vl_context_length, cfg.vl_visual_prompts)
