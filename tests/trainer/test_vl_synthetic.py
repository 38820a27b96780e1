"""The generator's vision-language options: `--bad-pairs` plants a known share of TRAINING
image-note mismatches (listed beside the data) and changes nothing else; `--note-diagnosis`
writes the zero-shot prompts' words at a gender-dependent rate; the text the VL family reads is
the summary where present, the note otherwise, cut at 180 characters."""
import csv

import numpy as np
import pytest

from trainer.data.cache import csv_notes
from trainer.data.plants import PLANT_FILE
from trainer.data.synthetic import DIAGNOSIS_RATE, synthesize

N = dict(n_train=60, n_val=20, n_test=20, seed=7)


def _notes(root, folder):
    files = sorted((root / folder).glob("data_*.npz"))
    return {f.name: str(np.load(f)["note"]) for f in files}, \
        {f.name: (np.load(f)["slo_fundus"], int(np.load(f)["glaucoma"])) for f in files}


def test_bad_pairs_plant_other_eye_notes_in_training_only(tmp_path):
    clean = synthesize("fairvlmed", tmp_path / "clean", **N)
    planted = synthesize("fairvlmed", tmp_path / "planted", bad_pairs=0.1, **N)
    with open(planted / PLANT_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and not (clean / PLANT_FILE).exists()
    before, images = _notes(clean, "Training")
    after, images_after = _notes(planted, "Training")
    swapped = {r["filename"]: r["donor"] for r in rows}
    for name in before:
        np.testing.assert_array_equal(images[name][0], images_after[name][0])   # same images
        assert after[name] == (before[swapped[name]] if name in swapped else before[name])
    for name, donor in swapped.items():   # the donor examined the other eye
        assert ("Exam OD" in before[name]) != ("Exam OD" in before[donor])
    summaries = csv_notes(planted / "data_summary.csv",
                          sorted((planted / "Training").glob("data_*.npz")))
    clean_summaries = dict(zip(sorted(before), csv_notes(
        clean / "data_summary.csv", sorted((clean / "Training").glob("data_*.npz")))))
    for name, summary in zip(sorted(after), summaries):
        assert summary == clean_summaries[swapped.get(name, name)]
    for folder in ("Validation", "Test"):   # validation and test stay clean
        assert _notes(clean, folder)[0] == _notes(planted, folder)[0]


def test_note_diagnosis_rate_depends_on_gender(tmp_path):
    root = synthesize("fairvlmed", tmp_path / "dx", note_diagnosis=True, n_train=600,
                      n_val=20, n_test=20, seed=3)
    says = {0: [], 1: []}
    for f in sorted((root / "Training").glob("data_*.npz")):
        z = np.load(f)
        note = str(z["note"])
        says[int(z["gender"])].append(note.startswith(("glaucoma. ", "non-glaucoma. ")))
        if note.startswith("glaucoma. "):           # a positive-written note
            assert "Impression: " in note
    for code, rate in enumerate(DIAGNOSIS_RATE):
        share = np.mean(says[code])
        assert share == pytest.approx(rate, abs=3 * np.sqrt(rate * (1 - rate) / len(says[code])))


def test_summary_or_note_source_falls_back_to_the_note(tmp_path):
    from tests.trainer.test_vl_fit import write_foreign_fairvlmed
    from trainer.config import make_config
    from trainer.data import build_datasets
    from trainer.models.clip import load_clip_tokenizer

    root = write_foreign_fairvlmed(tmp_path / "vl", n=(8, 8, 8))
    cfg = make_config("fairvlmed", "gender", preset="tiny", mode="clip", data_root=str(root),
                      cache_dir=str(tmp_path / "cache"))
    tok = load_clip_tokenizer("tiny_clip")
    train = build_datasets(cfg, tokenizer=tok)["train"]
    ids = train.get_batch(np.arange(len(train)))["note"]["input_ids"].numpy()
    rows = {r["filename"]: r for r in csv.DictReader(open(root / "data_summary.csv"))}
    for k, name in enumerate(train.files):
        row = rows[str(name)]
        text = row["gpt4_summary"] if row["gpt4_summary"].strip() else row["note"]
        expected = tok([text], padding="max_length", truncation=True, max_length=77,
                       return_tensors="np")["input_ids"][0]
        np.testing.assert_array_equal(ids[k], expected)
