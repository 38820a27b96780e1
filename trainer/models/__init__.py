"""Models: encoder registry (timm, transformers), fusion model, modality classifiers, and the
vision-language family (a CLIP dual encoder, DualFairVL's prompt learner) beside them.

A training method names the model family it trains (`family` on its class); `create_model` and
`create_tokenizer` are the one place that family is turned into a model and a note tokenizer.
"""
from trainer.models.clip import build_clip_model, load_clip_tokenizer
from trainer.models.dualfairvl import build_dualfairvl_model
from trainer.models.fusion import MultimodalFusionModel, build_classifiers, build_model
from trainer.models.presence import complete
from trainer.models.text import load_tokenizer


def _fusion_tokenizer(cfg):
    return load_tokenizer(cfg.note_encoder)


def _clip_tokenizer(cfg):
    return load_clip_tokenizer(cfg.clip_model)


# family -> (model builder, note tokenizer builder); both take the TrainConfig
MODEL_FAMILIES = {
    "fusion": (build_model, _fusion_tokenizer),
    "clip": (build_clip_model, _clip_tokenizer),
    "dualfairvl": (build_dualfairvl_model, _clip_tokenizer),
}


def create_model(family: str, cfg):
    return MODEL_FAMILIES[family][0](cfg)


def create_tokenizer(family: str, cfg):
    return MODEL_FAMILIES[family][1](cfg)


__all__ = ["MultimodalFusionModel", "build_model", "build_classifiers", "load_tokenizer", "complete",
           "MODEL_FAMILIES", "create_model", "create_tokenizer"]
