"""The note tokenizer a dataset is cached with: the one its model will read with."""
from __future__ import annotations


def note_tokenizer(cfg, tokenizer=None):
    """The note tokenizer of cfg's model family (fusion: note_encoder's; the vision-language
    modes: their CLIP's), unless one is given: every caller (the loop, the search's preparation
    and trials, the cluster's shards) tokenizes as the model will read."""
    if tokenizer is None and "note" in cfg.resolved_modalities():
        from trainer.methods import method_class
        from trainer.models import create_tokenizer

        tokenizer = create_tokenizer(method_class(cfg.mode).family, cfg)
    return tokenizer
