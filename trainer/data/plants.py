"""Planted image-text mismatches of generated FairVLMed (`synthesize --bad-pairs`): the list's file
name, beside the data, and its reader. No trainer imports: the generator writes it, the bad-pair
miner (trainer/methods/vl.py) scores itself against it."""
from __future__ import annotations

import csv
from pathlib import Path

PLANT_FILE = "planted_bad_pairs.csv"   # columns: filename, donor


def planted_files(data_root: str | Path) -> set[str] | None:
    """The planted training files' names, or None when the data carry no plant list."""
    path = Path(data_root) / PLANT_FILE
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        return {row["filename"] for row in csv.DictReader(fh)}
