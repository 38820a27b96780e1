"""Models: encoder registry (timm, transformers), fusion model, modality classifiers."""
from trainer.models.fusion import MultimodalFusionModel, build_classifiers, build_model
from trainer.models.presence import complete
from trainer.models.text import load_tokenizer

__all__ = ["MultimodalFusionModel", "build_model", "build_classifiers", "load_tokenizer", "complete"]
