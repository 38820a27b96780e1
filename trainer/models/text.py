"""Text encoders and tokenizers from transformers (any BERT-family hub name or local directory).

`tiny_bert` builds a small randomly initialised BERT and a WordPiece tokenizer from the vocabulary
shipped in trainer/models/assets/: no download, for tests and smoke runs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TINY_VOCAB = Path(__file__).with_name("assets") / "tiny_vocab.txt"


def load_tokenizer(name: str):
    """A fast tokenizer for `name` (hub name, local directory, or `tiny_bert`)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    if name == "tiny_bert":
        tokens = TINY_VOCAB.read_text().split("\n")
        vocab = {t: i for i, t in enumerate(t for t in tokens if t)}
        tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
        tok.name_or_path = "tiny_bert"
        return tok
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise ValueError(
            f"tokenizer {name!r} is neither a local directory nor in the Hugging Face cache "
            f"(offline machines: download it once, or pass a local path): {exc}") from None


class TextEncoder(nn.Module):
    """Transformer encoder -> [CLS] embedding. Input: {"input_ids", "attention_mask"}."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.out_dim = backbone.config.hidden_size

    def forward(self, note: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.backbone(input_ids=note["input_ids"], attention_mask=note["attention_mask"])
        return out.last_hidden_state[:, 0]


def create_text_encoder(name: str, pretrained: bool = True) -> TextEncoder:
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if name == "tiny_bert":
        vocab_size = sum(1 for _ in TINY_VOCAB.open())
        config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=512)
        return TextEncoder(BertModel(config, add_pooling_layer=False))
    try:
        if pretrained:
            return TextEncoder(AutoModel.from_pretrained(name, add_pooling_layer=False))
        return TextEncoder(AutoModel.from_config(AutoConfig.from_pretrained(name)))
    except (OSError, TypeError) as exc:
        raise ValueError(f"text encoder {name!r} could not be loaded (hub cache or local "
                         f"directory expected): {exc}") from None
