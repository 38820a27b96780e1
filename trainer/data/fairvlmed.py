"""Harvard-FairVLMed (FairCLIP): <root>/{Training,Validation,Test|Testing}/data_XXXXX.npz.

Quirks handled: lowercase train/val/test folders, "Testing" for the test folder, `gender` (not
male) and `ethnicity` (not hispanic), -1 unknowns in ethnicity/language/maritalstatus, the note
source (npz `note`, npz `note_extra`, or data_summary.csv's `gpt4_summary`, matched by filename).
"""
from __future__ import annotations

from trainer.data.common import Layout

LAYOUT = Layout(
    name="fairvlmed",
    subdir="",
    split_folders={"train": ("Training", "train"), "val": ("Validation", "val"),
                   "test": ("Test", "Testing", "test")},
    attribute_keys={"gender": ("gender", "male"), "race": ("race",),
                    "ethnicity": ("ethnicity", "hispanic"), "language": ("language",),
                    "maritalstatus": ("maritalstatus",)},
    csv_names=("data_summary.csv",),
)
