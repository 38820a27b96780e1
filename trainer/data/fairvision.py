"""Harvard-FairVision, glaucoma part: <root>/Glaucoma/{Training,Validation,Test}/data_XXXXX.npz.

Quirks handled: lowercase train/val/test folders (the lab's own scripts), a data root that points
at Glaucoma/ itself, race as int or string, `male` (not gender) and `hispanic` (not ethnicity).
Age lives only in data_summary_glaucoma.csv. A `note` key, when present (generated three-modality
data), is read like FairVLMed's.
"""
from __future__ import annotations

from trainer.data.common import Layout

LAYOUT = Layout(
    name="fairvision",
    subdir="Glaucoma",
    split_folders={"train": ("Training", "train"), "val": ("Validation", "val"),
                   "test": ("Test", "test", "Testing")},
    attribute_keys={"gender": ("male", "gender"), "race": ("race",),
                    "ethnicity": ("hispanic", "ethnicity"), "language": ("language",),
                    "maritalstatus": ("maritalstatus",)},
    csv_names=("data_summary_glaucoma.csv", "data_summary.csv"),
)
