"""The vision-language family: a CLIP dual encoder (transformers' CLIPModel) beside the fusion
model, with the same surface the loop, the evaluation and the robustness blocks use.

    model.encode(batch) -> {"slo": image embedding (B, D), "note": text embedding (B, D)}
    model.fuse(features) -> one logit per sample: the ZERO-SHOT score. With s_k = exp(t) *
        cos(image, prompt_k) for the prompts "A photo of non-glaucoma" / "A photo of glaucoma"
        (FairCLIP's evaluate_CLIP.py), softmax(s)[1] = sigmoid(s_1 - s_0), so the logit is
        s_1 - s_0 and every sigmoid-based scorer of the project reads the zero-shot probability.
The note never enters the prediction (only training pairs it with its image), so a missing note
at test changes nothing, and `encoders` / `out_dim` let the modality classifiers, the optimiser's
per-encoder groups and the presence masks work unchanged.

Weights: `cfg.clip_model`, a hub name (from the cache) or a local directory, through
CLIPModel / CLIPTokenizerFast; `tiny_clip` (the tiny preset) is a small random CLIPModel whose
text tower reads the project's offline WordPiece tokenizer (trainer/models/assets), pooled at
its [SEP] token, as CLIP pools at its end-of-text token.
Text as FairCLIP cuts it: at most 180 characters, cut on a word boundary, then 77 tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from trainer.models.fusion import encode_rows
from trainer.models.text import load_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ("A photo of non-glaucoma", "A photo of glaucoma")    # FairCLIP's zero-shot classes
NOTE_CHARS = 180                                                 # FairCLIP's cut of the summary
CONTEXT_LENGTH = 77
TINY_CLIP = "tiny_clip"


def cut_note(text: str, limit: int = NOTE_CHARS) -> str:
    """`text` cut to at most `limit` characters on a word boundary (a single longer word is cut
    inside it)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit + 1]
    return head[:head.rfind(" ")] if " " in head else text[:limit]


class NoteCutTokenizer:
    """A tokenizer that cuts every text as FairCLIP does before tokenizing. Its name carries the
    cut, so the data cache keeps cut and uncut tokens apart."""

    def __init__(self, tokenizer, limit: int = NOTE_CHARS):
        self.tokenizer, self.limit = tokenizer, limit
        self.name_or_path = f"{tokenizer.name_or_path}+cut{limit}"

    def __call__(self, texts, **kw):
        texts = [cut_note(t, self.limit) for t in ([texts] if isinstance(texts, str) else texts)]
        return self.tokenizer(texts, **kw)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def save_pretrained(self, path) -> None:
        """The wrapped tokenizer's files plus the cut (note_cut.json): load_saved_tokenizer reads
        both back (the served model, offline)."""
        import json
        from pathlib import Path

        self.tokenizer.save_pretrained(str(path))
        (Path(path) / CUT_FILE).write_text(json.dumps({"limit": self.limit}))


CUT_FILE = "note_cut.json"


def load_saved_tokenizer(path):
    """A tokenizer saved with save_pretrained: a NoteCutTokenizer where the folder holds the cut,
    else the plain tokenizer (the fusion models' BERT)."""
    import json
    from pathlib import Path

    inner = load_tokenizer(str(path))
    cut = Path(path) / CUT_FILE
    return NoteCutTokenizer(inner, json.loads(cut.read_text())["limit"]) if cut.exists() else inner


def load_clip_tokenizer(name: str) -> NoteCutTokenizer:
    if name == TINY_CLIP:
        return NoteCutTokenizer(load_tokenizer("tiny_bert"))
    from transformers import CLIPTokenizerFast
    try:
        return NoteCutTokenizer(CLIPTokenizerFast.from_pretrained(name))
    except OSError as exc:
        raise ValueError(f"clip_model {name!r}: its tokenizer is neither a local directory nor "
                         f"in the Hugging Face cache: {exc}") from None


def tiny_clip_config(image_size: int):
    """A small random CLIP (two layers of width 32 per tower) reading the tiny WordPiece ids."""
    from transformers import CLIPConfig

    tok = load_tokenizer("tiny_bert")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=CONTEXT_LENGTH,
                eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)


def load_clip(name: str, pretrained: bool, image_size: int):
    """transformers' CLIPModel: `tiny_clip`, or a hub name / local directory (weights from the
    cache; `pretrained=False`: its architecture, random weights)."""
    from transformers import CLIPConfig, CLIPModel

    if name == TINY_CLIP:
        return CLIPModel(tiny_clip_config(image_size))
    try:
        if pretrained:
            return CLIPModel.from_pretrained(name)
        return CLIPModel(CLIPConfig.from_pretrained(name))
    except OSError as exc:
        raise ValueError(f"clip_model {name!r} could not be loaded (hub cache or local directory "
                         f"expected; offline machines: download it once): {exc}") from None


class ImageTower(nn.Module):
    """SLO (ImageNet-normalised by the data layer) -> CLIP's normalisation -> vision model ->
    visual projection. The renormalisation is exact: x_clip = (x * std_in + mean_in - mean) / std."""

    def __init__(self, clip):
        super().__init__()
        self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection
        self.out_dim = clip.config.projection_dim
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(CLIP_STD)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def pixels(self, slo: torch.Tensor) -> torch.Tensor:
        return slo * self.scale.to(slo.dtype) + self.shift.to(slo.dtype)

    def forward(self, slo: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values=self.pixels(slo))
        return self.visual_projection(out.pooler_output)


class TextTower(nn.Module):
    """Tokenised note {"input_ids", "attention_mask"} -> text model (pooled at end of text) ->
    text projection. `from_embeddings` runs the same tower on token embeddings (prompt learning)."""

    def __init__(self, clip):
        super().__init__()
        self.text_model, self.text_projection = clip.text_model, clip.text_projection
        self.out_dim = clip.config.projection_dim

    def forward(self, note: dict) -> torch.Tensor:
        out = self.text_model(input_ids=note["input_ids"], attention_mask=note["attention_mask"])
        return self.text_projection(out.pooler_output)

    def from_embeddings(self, embeds: torch.Tensor, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
        """The projected text feature of token embeddings `embeds` (B, L, W) standing where
        `input_ids` stand (whose end-of-text positions pool, as the text model pools)."""
        from transformers.masking_utils import create_causal_mask

        text = self.text_model
        h = text.embeddings(inputs_embeds=embeds)
        mask = create_causal_mask(config=text.config, inputs_embeds=h,
                                  attention_mask=attention_mask, past_key_values=None)
        h = text.encoder(inputs_embeds=h, attention_mask=mask, is_causal=True).last_hidden_state
        h = text.final_layer_norm(h)
        return self.text_projection(h[torch.arange(len(h), device=h.device),
                                      end_of_text(input_ids, text.eos_token_id)])


def end_of_text(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The position each row pools at, as CLIPTextModel chooses it (legacy configs with eos id 2:
    the highest id; otherwise the first end-of-text id)."""
    if eos_token_id == 2:
        return input_ids.to(torch.int).argmax(dim=-1)
    return (input_ids.to(torch.int) == eos_token_id).int().argmax(dim=-1)


def tokenized(tokenizer, texts) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding="max_length", truncation=True,
                    max_length=CONTEXT_LENGTH, return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}


class CLIPDualEncoder(nn.Module):
    """CLIP as the loop sees a model: encoders {"slo": image tower, "note": text tower}, the
    learned temperature, and the two zero-shot prompts (token buffers, so a checkpoint holds
    what the model scores with)."""
    score_needs = ("slo",)   # the score reads the image only: none without it (trainer.reliance)

    def __init__(self, clip, tokenizer):
        super().__init__()
        self.modalities = ("slo", "note")
        self.encoders = nn.ModuleDict({"slo": ImageTower(clip), "note": TextTower(clip)})
        self.logit_scale = clip.logit_scale
        prompts = tokenized(tokenizer, PROMPTS)
        self.register_buffer("prompt_ids", prompts["input_ids"])
        self.register_buffer("prompt_mask", prompts["attention_mask"])

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        present = batch.get("present") or {}
        return {m: encode_rows(self.encoders[m], batch[m], present.get(m))
                for m in self.modalities if m in batch}

    def prompt_features(self) -> torch.Tensor:
        """(2, D) unit text features of the two zero-shot prompts."""
        note = {"input_ids": self.prompt_ids, "attention_mask": self.prompt_mask}
        return F.normalize(self.encoders["note"](note).float(), dim=-1)

    def similarity(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """exp(t) * cosine, (B_image, B_text): CLIP's logits_per_image."""
        scale = self.logit_scale.float().exp()
        return scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T

    def fuse(self, features: dict, present: dict | None = None) -> torch.Tensor:
        """The zero-shot logit s_1 - s_0 (the note, and so `present`, plays no part)."""
        scale = self.logit_scale.float().exp()
        s = scale * F.normalize(features["slo"].float(), dim=-1) @ self.prompt_features().T
        return s[:, 1] - s[:, 0]

    def forward(self, batch: dict) -> torch.Tensor:
        return self.fuse(self.encode({k: v for k, v in batch.items() if k != "note"}))


def build_clip_model(cfg) -> CLIPDualEncoder:
    clip = load_clip(cfg.clip_model, cfg.pretrained, cfg.image_size)
    return CLIPDualEncoder(clip, load_clip_tokenizer(cfg.clip_model))
