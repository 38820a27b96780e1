"""Generated stand-ins for Harvard-FairVision and Harvard-FairVLMed, in the released layout.

Same folders, keys, dtypes and encodings as the real data (shared/docs/datasets.md), the
datasets' demographic and label proportions, and DESIGNED STRUCTURE (docs/data.md):
- OCT: strong, easy signal (RNFL-like top band thinner with glaucoma), whose amplitude is lower
  and noisier for Black and Asian patients and for female patients -> a plain model is unfair;
- SLO: weaker, slower signal (cup-to-disc ratio of a small optic disc, with noise), group-uniform;
- note: medium signal via clinical phrases (IOP, CDR, VF defect, plan) with label noise,
  group-uniform.
Deterministic by seed: the same arguments give byte-identical files.

Acquisition (acquisition.py, docs/data.md): `--missing slo=0.3,oct=0.1 [--missing-by race]`
leaves modalities out of some samples (the npz key absent; a note also blank in the CSV), and
`--site shifted` renders another hospital's scanner (contrast, noise, resolution) and population
(group mix). Without these flags nothing extra is drawn: the files are byte-identical to before.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from dataclasses import dataclass

from trainer.config import DEFAULT_MODALITIES
from trainer.data import acquisition, ideal
from trainer.data.acquisition import SITES, Scanner
from trainer.data.common import SPLITS
from trainer.data.plants import PLANT_FILE
from trainer.data.generative import (CDR_RANGE, LABELLED, LANGUAGE_P, MARITAL_P, NOTE_LABEL_NOISE,
                                     PROFILES, SEVERITY, WORLDS, World, cdr_mean, oct_quality,
                                     protocol_p, resolve_world, rnfl_mean, rnfl_noise, thinning,
                                     world_profile)

USE = {"train": "training", "val": "validation", "test": "test"}
RACE_NAMES = ("Asian", "Black or African American", "White or Caucasian")
SIZES = {  # (SLO shape, OCT shape): small default, --full-size
    ("fairvision", False): ((64, 64), (16, 64, 64)),
    ("fairvision", True): ((200, 200), (200, 200, 200)),
    ("fairvlmed", False): ((80, 64), (16, 64, 64)),
    ("fairvlmed", True): ((664, 512), (200, 200, 200)),
}


def synthesize_metadata(layout: str, n: int, seed: int = 0,
                        informative=LABELLED, site="default",
                        world="default") -> dict[str, np.ndarray]:
    """Demographics, labels and latent severities for n samples (no images), drawn from the
    generative model (trainer/data/generative.py).

    A modality left out of `informative` is rendered from a DECOY label and severity drawn
    independently of the true label (same marginal distribution, no label information): a
    known-answer test of which modality a model relies on. The default draws nothing extra, so
    existing datasets stay byte-identical. `site` changes the group mix only (acquisition.SITES):
    the same draws, so the disease model is the same at every site. `world` (generative.WORLDS):
    "sensitive" changes the share of women, the cup-to-disc noise and draws the OCT protocol
    last (meta["protocol"]); the default draws nothing extra.
    """
    world = resolve_world(world)
    p = world_profile(acquisition.site_profile(layout, site), world)
    rng = np.random.default_rng(seed)
    meta = {
        "gender": (rng.random(n) >= p["female"]).astype(np.int64),
        "race": rng.choice(3, n, p=p["race"]),
        "ethnicity": (rng.random(n) < p["hispanic"]).astype(np.int64),
        "language": rng.choice(3, n, p=LANGUAGE_P),
        "maritalstatus": rng.choice(5, n, p=MARITAL_P),
        "glaucoma": (rng.random(n) < p["glaucoma"]).astype(np.int64),
        "age": np.clip(rng.normal(62, 14, n), 20, 95).round(1),
    }
    for attr, share in p["unknown"].items():
        meta[attr] = np.where(rng.random(n) < share, -1, meta[attr])
    meta["severity"] = meta["glaucoma"] * rng.uniform(*SEVERITY, n)
    q = meta["oct_quality"] = oct_quality(meta["race"], meta["gender"])
    meta["eye"] = rng.integers(0, 2, n)  # 0 right (OD), 1 left (OS)
    meta["rnfl"] = rnfl_mean(meta["severity"], q) * (1 + rng.normal(0, 1, n) * rnfl_noise(q))
    cdr_noise = rng.normal(0, world.cdr_noise, n)
    meta["cdr"] = np.clip(cdr_mean(meta["severity"]) + cdr_noise, *CDR_RANGE)
    for m in LABELLED:
        if m in informative:
            continue
        decoy = (rng.random(n) < p["glaucoma"]).astype(np.int64)
        sev = decoy * rng.uniform(*SEVERITY, n)
        if m == "oct":   # same noise draw, decoy severity
            meta["rnfl"] = meta["rnfl"] / thinning(meta["severity"], q) * thinning(sev, q)
            meta["oct_label"] = decoy
        elif m == "slo":
            meta["cdr"] = np.clip(cdr_mean(sev) + cdr_noise, *CDR_RANGE)
        else:
            meta["note_label"] = decoy
    meta["informative"] = np.array(sorted(set(informative) & set(LABELLED)))
    if world.protocol is not None:   # drawn last: every other draw is the default world's
        label = meta.get("oct_label", meta["glaucoma"])
        meta["protocol"] = rng.random(n) < protocol_p(world, label, meta["gender"])
    return meta


def render_oct(rng, shape, rnfl: float, scanner: Scanner | None = None,
               protocol: bool = False) -> np.ndarray:
    """uint8 (D, H, W) volume: B-scans with a bright top band of relative thickness ~rnfl.
    A `scanner` renders each B-scan at its resolution with its speckle, scales the contrast
    and resamples back to (H, W). `protocol` (sensitive world): the glaucoma protocol's bright
    band below the RPE."""
    if scanner is None:
        return _to_uint8(_oct_float(rng, shape, rnfl, 0.25, protocol))
    d, h, w = shape
    low = (d, *_scaled((h, w), scanner.resolution))
    img = acquisition.apply_contrast(_oct_float(rng, low, rnfl, 0.25 * scanner.noise, protocol),
                                     scanner.contrast)
    return _to_uint8(acquisition.resample(img, (h, w)))


def _scaled(hw, resolution: float) -> tuple[int, int]:
    return tuple(max(8, int(round(x * resolution))) for x in hw)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).astype(np.uint8)


PROTOCOL_BAND = (0.55, 0.62, 120)   # the glaucoma protocol's band: rows below top, brightness


def _oct_float(rng, shape, rnfl: float, speckle: float, protocol: bool = False) -> np.ndarray:
    d, h, w = shape
    rows = np.arange(h, dtype=np.float32).reshape(1, h, 1) / h
    cols = np.arange(w, dtype=np.float32).reshape(1, 1, w) / w
    depth = np.arange(d, dtype=np.float32).reshape(d, 1, 1) / d
    top = 0.25 + 0.05 * np.sin(np.pi * cols + rng.uniform(0, np.pi))
    band = rnfl * (1 + 0.1 * np.sin(2 * np.pi * depth + rng.uniform(0, np.pi)))
    edge = 1.5 / h
    inside = lambda lo, hi: _soft(rows - lo, edge) * _soft(hi - rows, edge)  # noqa: E731
    img = 30 + 170 * inside(top, top + band) + 80 * inside(top + band, top + 0.42) \
        + 200 * inside(top + 0.42, top + 0.46)
    if protocol:
        lo, hi, bright = PROTOCOL_BAND
        img = img + bright * inside(top + lo, top + hi)
    return img * (1 + speckle * rng.standard_normal((d, h, w), dtype=np.float32))


def _soft(x, width):
    return np.clip(x / width + 0.5, 0.0, 1.0)


def render_slo(rng, shape, cdr: float, eye: int, scanner: Scanner | None = None,
               disc: float = 0.1, cup: float = 55) -> np.ndarray:
    """uint8 (H, W) fundus: vignetted background, vessels, a small bright disc with a cup.
    A `scanner`: rendered at its resolution with its noise, contrast scaled, resampled back.
    `disc`: the disc's radius, a fraction of the image (sensitive world: a disc-centred photo)."""
    if scanner is None:
        return _to_uint8(_slo_float(rng, shape, cdr, eye, 8, disc, cup))
    img = _slo_float(rng, _scaled(shape, scanner.resolution), cdr, eye, 8 * scanner.noise, disc,
                     cup)
    img = acquisition.apply_contrast(img, scanner.contrast)
    return _to_uint8(acquisition.resample(img, shape))


def _slo_float(rng, shape, cdr: float, eye: int, noise: float, disc: float = 0.1,
               cup: float = 55) -> np.ndarray:
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    s = float(min(h, w))
    cx = w * (0.35 if eye else 0.65) + rng.normal(0, 0.02 * w)
    cy = h * 0.5 + rng.normal(0, 0.02 * h)
    r = np.hypot(x - cx, y - cy)
    r_disc = disc * s * (1 + rng.normal(0, 0.06))
    img = 60 + 50 * np.exp(-((x - w / 2) ** 2 + (y - h / 2) ** 2) / (0.5 * s * s))
    for theta in rng.uniform(0, 2 * np.pi, 4):
        along = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
        across = np.abs((x - cx) * np.sin(theta) - (y - cy) * np.cos(theta))
        img -= 25 * np.exp(-(across / (0.012 * s + 0.5)) ** 2) * (along > 0)
    img += 70 * _soft(r_disc - r, 1.5) + cup * _soft(cdr * r_disc - r, 1.5)
    img += rng.normal(0, noise, (h, w))   # in place: float32, as the images always were
    return img


# Clinical-note phrases, mostly words of trainer/models/assets/tiny_vocab.txt.
HISTORY = ("", "History of hypertension. ", "History of diabetes. ", "Family history of glaucoma. ",
           "Myopia. ", "Cataract, phakic. ", "Pseudophakia OU. ")
VF_POS = ("Humphrey VF: inferior arcuate defect, reliable.", "VF: nasal step, reliable.",
          "VF: arcuate scotoma OU.", "VF progression, mean deviation {md:.1f}.")
VF_NEG = ("Humphrey VF: normal visual field, reliable.", "VF: no defects.",
          "VF unreliable, repeat.", "VF stable, mean deviation {md:.1f}.")
DISC_POS = ("Rim thinning and notch.", "Disc hemorrhage.", "RNFL thinning on OCT.",
            "Pallor of rim.")
DISC_NEG = ("Rim normal.", "Optic nerve normal.", "RNFL normal on OCT.", "Disc clear.")
PLAN_POS = ("Plan: start latanoprost, follow up 6 weeks.", "Plan: start timolol, recheck IOP.",
            "Plan: refer for SLT.", "Plan: continue dorzolamide and brimonidine, return 3 months.")
PLAN_NEG = ("Plan: monitor, return 12 months.", "Plan: repeat VF in 12 months.",
            "Plan: no treatment, follow up 1 year.", "Plan: glaucoma suspect, monitor.")
IMPRESSION = {True: ("primary open angle glaucoma", "moderate glaucoma", "advanced glaucoma"),
              False: ("glaucoma suspect", "normal exam", "ocular hypertension")}
PHRASE_NOISE = 0.25       # share of individual phrases drawn from the other label's list
DEMOGRAPHIC_WORDS = {
    "gender": ("female", "male"), "race": ("asian", "black", "white"),
    "ethnicity": ("non hispanic", "hispanic"), "language": ("english", "spanish", "other"),
    "maritalstatus": ("married", "single", "divorced", "widowed", "legally separated")}


def _pick(rng, positive: bool, pos, neg) -> str:
    flip = rng.random() < PHRASE_NOISE
    options = pos if positive != flip else neg
    return options[rng.integers(len(options))]


def _one_note(rng, meta, i) -> tuple[str, str, bool]:
    """(note, short summary, written-as-positive) for sample i: medium label signal, independent
    of the group."""
    pos = bool(meta.get("note_label", meta["glaucoma"])[i]) != (rng.random() < NOTE_LABEL_NOISE)
    iop = int(round(rng.normal(24, 4) if pos else rng.normal(16, 3)))
    cdr = float(np.clip(rng.normal(0.7, 0.1) if pos else rng.normal(0.4, 0.12), 0.1, 0.95))
    md = rng.normal(-7, 3) if pos else rng.normal(-1, 1.5)
    sex = DEMOGRAPHIC_WORDS["gender"][meta["gender"][i]]
    eye = ("OD", "OS")[meta["eye"][i]]
    vf = _pick(rng, pos, VF_POS, VF_NEG).format(md=md)
    plan = _pick(rng, pos, PLAN_POS, PLAN_NEG)
    impression = IMPRESSION[pos][rng.integers(3)]
    note = (f"{meta['age'][i]:.0f} yo {sex}. {HISTORY[rng.integers(len(HISTORY))]}"
            f"Exam {eye}: IOP {iop} mmHg, CDR {cdr:.1f}. {_pick(rng, pos, DISC_POS, DISC_NEG)} "
            f"{vf} Impression: {impression}. {plan}")
    summary = f"{meta['age'][i]:.0f} yo {sex}, {impression}; IOP {iop} mmHg, CDR {cdr:.1f}. {vf}"
    return note, summary[:179], pos


def _demographics(meta, i) -> str:
    words = []
    for attr, names in DEMOGRAPHIC_WORDS.items():
        code = int(meta[attr][i])
        words.append(f"{attr}: {names[code] if code >= 0 else 'not reported'}")
    return f"Age {meta['age'][i]:.0f}, " + ", ".join(words) + ". "


def note_texts(rng, meta, layout: str) -> dict[str, list[str]]:
    """note, note_extra (demographics prepended) and gpt4_summary (< 180 chars) per sample."""
    notes, summaries, pos = zip(*(_one_note(rng, meta, i) for i in range(len(meta["glaucoma"]))))
    extra = [_demographics(meta, i) + n for i, n in enumerate(notes)]
    return {"note": list(notes), "note_extra": extra, "gpt4_summary": list(summaries),
            "positive": np.array(pos, dtype=bool)}


def _folders(split_style: str, test_folder: str) -> dict[str, str]:
    if split_style == "lowercase":
        return {"train": "train", "val": "val", "test": "test"}
    if split_style != "standard":
        raise ValueError(f"split_style={split_style!r}: choose standard or lowercase")
    if test_folder not in ("Test", "Testing"):
        raise ValueError(f"test_folder={test_folder!r}: choose Test or Testing")
    return {"train": "Training", "val": "Validation", "test": test_folder}


def _record(layout, meta, i, race_encoding) -> dict[str, np.ndarray]:
    """Scalar keys of one npz, encoded as released (0-d arrays; race int or string)."""
    race = int(meta["race"][i])
    rec = {"glaucoma": np.array(int(meta["glaucoma"][i])),
           "race": np.array(RACE_NAMES[race]) if race_encoding == "str" else np.array(race),
           "language": np.array(int(meta["language"][i])),
           "maritalstatus": np.array(int(meta["maritalstatus"][i]))}
    if layout == "fairvision":
        rec["male"] = np.array(int(meta["gender"][i]))
        rec["hispanic"] = np.array(int(meta["ethnicity"][i]))
    else:
        rec["gender"] = np.array(int(meta["gender"][i]))
        rec["ethnicity"] = np.array(int(meta["ethnicity"][i]))
        rec["age"] = np.array(float(meta["age"][i]))
    return rec


def _fairvlmed_extras(rng, meta, i) -> dict[str, np.ndarray]:
    sev = meta["severity"][i]
    md = rng.normal(-1.0 - 8.0 * sev, 2.0)
    tds = rng.normal(md, 2.5, 52).astype(np.float32)
    return {"md": np.array(np.float32(md)), "tds": tds}


@dataclass(frozen=True)
class _Plan:
    """What every split of one generated dataset shares."""
    layout: str
    mods: tuple
    full_size: bool
    race_encoding: str
    site: acquisition.Site = SITES["default"]
    missing: tuple = ()            # ((modality, rate), ...) in the spec's order
    missing_by: str | None = None
    world: World = WORLDS["default"]

    @property
    def scanner(self) -> Scanner | None:
        return self.site.scanner


def _write_split(plan: _Plan, folder: Path, split, ids, meta, texts, rng, absent) -> list[dict]:
    """The split's npz files (a modality in `absent` left out where True) and its CSV rows."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    slo_shape, oct_shape = SIZES[(plan.layout, plan.full_size)]
    lacks = lambda m, i: m in absent and absent[m][i]  # noqa: E731
    rows = []
    for i, sid in enumerate(ids):
        name = f"data_{sid:05d}.npz"
        rec = _record(plan.layout, meta, i, plan.race_encoding)
        if plan.layout == "fairvlmed":
            rec.update(_fairvlmed_extras(rng, meta, i))
        if "slo" in plan.mods:   # rendered even when left out: the other samples' draws stay
            rec["slo_fundus"] = render_slo(rng, slo_shape, meta["cdr"][i], int(meta["eye"][i]),
                                           plan.scanner, plan.world.disc_radius, plan.world.cup)
        if "oct" in plan.mods:
            protocol = bool(meta["protocol"][i]) if "protocol" in meta else False
            rec["oct_bscans"] = render_oct(rng, oct_shape, meta["rnfl"][i], plan.scanner,
                                           protocol)
        if "note" in plan.mods:
            rec["note"] = np.array(texts["note"][i])
            rec["note_extra"] = np.array(texts["note_extra"][i])
        for m in plan.mods:
            if lacks(m, i):
                for key in KEYS_OF[m]:
                    rec.pop(key)
        np.savez_compressed(folder / name, **rec)
        if plan.layout == "fairvision" and "slo_fundus" in rec:
            Image.fromarray(rec["slo_fundus"]).save(folder / f"slo_{sid:05d}.jpg", quality=90)
        row = _csv_row(plan.layout, name, split, meta, i, texts, plan.race_encoding)
        if lacks("note", i):   # the note is missing everywhere it is kept
            row.update(note="", gpt4_summary="")
        rows.append(row)
    return rows


KEYS_OF = {"slo": ("slo_fundus",), "oct": ("oct_bscans",), "note": ("note", "note_extra")}


def _csv_row(layout, name, split, meta, i, texts, race_encoding) -> dict:
    race = int(meta["race"][i])
    row = {"filename": name, "use": USE[split], "age": f"{meta['age'][i]:.1f}",
           "glaucoma": int(meta["glaucoma"][i]),
           "race": RACE_NAMES[race] if race_encoding == "str" else race,
           ("male" if layout == "fairvision" else "gender"): int(meta["gender"][i]),
           ("hispanic" if layout == "fairvision" else "ethnicity"): int(meta["ethnicity"][i]),
           "language": int(meta["language"][i]), "maritalstatus": int(meta["maritalstatus"][i])}
    if texts:
        row.update(note=texts["note"][i], gpt4_summary=texts["gpt4_summary"][i])
    return row


def _write_csv(path: Path, rows: list[dict], columns=None) -> None:
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def synthesize(layout: str, out, n_train: int = 240, n_val: int = 80, n_test: int = 120,
               full_size: bool = False, seed: int = 0, modalities=None,
               split_style: str = "standard", race_encoding: str = "int",
               test_folder: str = "Test", informative=LABELLED, missing="",
               missing_by: str | None = None, site="default", shift: str = "",
               bad_pairs: float = 0.0, note_diagnosis: bool = False, world="default") -> Path:
    """Write a generated dataset in the released layout under `out`; returns `out`.

    `missing`: "slo=0.3,oct=0.1" (or a dict) of the share of samples without each modality,
    by group of `missing_by` ("race", "gender") as acquisition.MISSING_FACTORS says; `site`:
    "default" or "shifted" (acquisition.SITES), `shift` overrides of its parameters
    ("contrast=0.5,race=0.3/0.3/0.4"). Beside the data (never inside an npz) it writes
    `out/ideal_reader.csv`: each sample's ideal-reader evidence per modality and combined
    (trainer/data/ideal.py, docs/data.md), plus `present_<m>` columns when `missing` is given.
    `bad_pairs`: the share of TRAINING samples whose texts are another training patient's (a
    planted image-text mismatch; listed in `out/planted_bad_pairs.csv`). `note_diagnosis`: the
    texts start with the zero-shot prompts' words, "glaucoma." or "non-glaucoma." (as the note
    was written), at a rate that depends on gender (DIAGNOSIS_RATE): a known, group-linked text
    signal for the vision-language family.
    `world`: "default" or "sensitive" (generative.WORLDS: a shortcut in OCT for men, scarce
    women, a disc-centred SLO; docs/data.md), recorded in `out/world.json` when not default."""
    plan = _plan(layout, modalities, race_encoding, informative, full_size, missing, missing_by,
                 acquisition.with_overrides(site, shift))
    plan = dataclasses.replace(plan, world=resolve_world(world))
    out = Path(out)
    base = out / "Glaucoma" if layout == "fairvision" else out
    folders = _folders(split_style, test_folder)
    counts, rows, first_id = {"train": n_train, "val": n_val, "test": n_test}, [], 1
    evidence = []
    for k, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, k])
        meta = synthesize_metadata(layout, counts[split], seed=int(rng.integers(2**31)),
                                   informative=tuple(informative), site=plan.site,
                                   world=plan.world)
        absent = _absent(plan, seed, k, split, meta)
        texts = note_texts(rng, meta, layout) if "note" in plan.mods or layout == "fairvlmed" \
            else None
        ids = range(first_id, first_id + counts[split])
        if note_diagnosis:   # nothing drawn otherwise
            add_diagnosis(texts, meta, np.random.default_rng([seed, k, 4_242]))
        if bad_pairs and split == "train":   # nothing drawn otherwise: the same bytes as before
            planted = plant_bad_pairs(texts, bad_pairs, seed, [f"data_{i:05d}.npz" for i in ids],
                                      meta["eye"])
        split_rows = _write_split(plan, base / folders[split], split, ids, meta, texts, rng,
                                  absent)
        evidence += ideal.evidence_rows(layout, meta, texts, plan.mods, split_rows, split,
                                        site=plan.site, absent=absent if plan.missing else None,
                                        world=plan.world)
        rows += split_rows
        first_id += counts[split]
    _write_csvs(layout, base, rows)
    _write_csv(out / ideal.SIDE_FILE, evidence)
    if bad_pairs:
        _write_csv(base / PLANT_FILE, planted, ["filename", "donor"])
    if plan.site != SITES["default"]:   # the default site writes nothing new: same bytes
        (out / ideal.SITE_FILE).write_text(json.dumps(acquisition.describe_site(plan.site),
                                                      indent=1))
    if plan.world != WORLDS["default"]:  # likewise: only another world writes its side file
        (out / ideal.WORLD_FILE).write_text(json.dumps(dataclasses.asdict(plan.world), indent=1))
    return out


DIAGNOSIS_RATE = (0.5, 0.9)   # female, male: share of texts that name the diagnosis (--note-diagnosis)


def add_diagnosis(texts: dict, meta: dict, rng) -> None:
    """Prefix "glaucoma. " / "non-glaucoma. " (the note's written-as label) to a gender-dependent
    share of the texts, in place; summaries stay under 180 characters."""
    rate = np.asarray(DIAGNOSIS_RATE)[np.maximum(meta["gender"], 0)]
    says = rng.random(len(rate)) < rate
    for i in np.flatnonzero(says):
        word = "glaucoma. " if texts["positive"][i] else "non-glaucoma. "
        for k in ("note", "note_extra"):
            texts[k][i] = word + texts[k][i]
        texts["gpt4_summary"][i] = (word + texts["gpt4_summary"][i])[:179]


def plant_bad_pairs(texts: dict, share: float, seed: int, names: list[str],
                    eye: np.ndarray) -> list[dict]:
    """Give a share of the samples the texts (note, note_extra, summary; and the ideal reader's
    note evidence) of another sample examined on the OTHER eye, in place, so the note ("Exam
    OD"/"OS") contradicts what the image shows (the optic disc's side); returns [{"filename",
    "donor"}] of the planted."""
    if texts is None or not 0 < share < 1:
        raise ValueError(f"--bad-pairs {share}: needs a share in (0, 1) and notes (FairVLMed, "
                         f"or --modalities with note)")
    rng = np.random.default_rng([seed, 7_777])
    n = len(names)
    planted = np.sort(rng.choice(n, int(round(share * n)), replace=False))
    donors = np.array([rng.choice(np.flatnonzero(eye != eye[i])) for i in planted], dtype=int)
    originals = {k: list(texts[k]) for k in ("note", "note_extra", "gpt4_summary")}
    positive = texts["positive"].copy()
    for i, j in zip(planted, donors):
        for k, column in originals.items():
            texts[k][i] = column[j]
        texts["positive"][i] = positive[j]
    return [{"filename": names[i], "donor": names[j]} for i, j in zip(planted, donors)]


def _plan(layout, modalities, race_encoding, informative, full_size, missing, missing_by,
          site) -> _Plan:
    """Arguments checked (ValueError naming the argument or flag and value) and gathered."""
    if layout not in PROFILES:
        raise ValueError(f"layout={layout!r}: choose one of {sorted(PROFILES)}")
    if race_encoding not in ("int", "str"):
        raise ValueError(f"race_encoding={race_encoding!r}: choose int or str")
    mods = tuple(modalities) if modalities else DEFAULT_MODALITIES[layout]
    if any(m not in ("slo", "oct", "note") for m in mods):
        raise ValueError(f"modalities={mods!r}: choose from slo, oct, note")
    bad = set(informative) - set(LABELLED)
    if bad:
        raise ValueError(f"informative={tuple(informative)!r}: choose from {', '.join(LABELLED)}")
    rates = dict(missing) if isinstance(missing, dict) else \
        acquisition.parse_missing(missing, mods)
    for m, rate in rates.items():   # a dict from Python: the same checks as the flag's text
        acquisition.parse_missing(f"{m}={rate}", mods)
    if missing_by is not None:
        if missing_by not in acquisition.MISSING_FACTORS:
            raise ValueError(f"--missing-by {missing_by}: choose one of "
                             f"{', '.join(acquisition.MISSING_FACTORS)}")
        if not rates:
            raise ValueError(f"--missing-by {missing_by}: needs --missing (e.g. --missing oct=0.2)")
        acquisition.check_rates(rates, missing_by, acquisition.site_profile(layout, site))
    return _Plan(layout, mods, full_size, race_encoding, site, tuple(rates.items()), missing_by)


def _absent(plan: _Plan, seed: int, k: int, split: str, meta: dict) -> dict[str, np.ndarray]:
    """Which samples of the split lack each modality; refused when one would lack it in every
    sample (the loader could not use the split)."""
    missing = dict(plan.missing)
    absent = acquisition.draw_absent(seed, k, meta, missing, plan.missing_by,
                                     world_profile(acquisition.site_profile(plan.layout,
                                                                            plan.site), plan.world))
    for m, lack in absent.items():
        if lack.all():
            raise ValueError(f"--missing {m}={missing[m]:g}: leaves {m!r} absent in every sample "
                             f"of split {split!r} ({len(lack)} samples); lower the rate or "
                             f"generate more samples")
    return absent


def _write_csvs(layout, base: Path, rows: list[dict]) -> None:
    if layout == "fairvision":
        _write_csv(base / "data_summary_glaucoma.csv", rows)
        return
    _write_csv(base / "data_summary.csv", rows)
    _write_csv(base / "gpt-4_summarized_notes.csv",
               [{"filename": r["filename"], "summarized_notes": r["gpt4_summary"]} for r in rows])
    _write_csv(base / "original_notes.csv", rows, ["filename", "note"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=sorted(PROFILES))
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--n-train", type=int, default=240)
    parser.add_argument("--n-val", type=int, default=80)
    parser.add_argument("--n-test", type=int, default=120)
    parser.add_argument("--full-size", action="store_true",
                        help="200x200 SLO (FairVLMed 664x512) and 200x200x200 OCT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modalities", default="",
                        help="comma list from slo,oct,note (default: the layout's two)")
    parser.add_argument("--split-style", default="standard", choices=("standard", "lowercase"))
    parser.add_argument("--race-encoding", default="int", choices=("int", "str"))
    parser.add_argument("--test-folder", default="Test", choices=("Test", "Testing"))
    parser.add_argument("--informative", default=",".join(LABELLED),
                        help="comma list of the modalities that carry the label; the others are "
                             "rendered from a decoy label (known-answer tests)")
    parser.add_argument("--missing", default="", metavar="MOD=RATE,...",
                        help="share of samples without each modality, e.g. slo=0.3,oct=0.1 "
                             "(the npz key left out; docs/data.md)")
    parser.add_argument("--missing-by", choices=sorted(acquisition.MISSING_FACTORS),
                        help="the --missing rates vary by this group (documented factors, "
                             "mean rate kept)")
    parser.add_argument("--site", default="default", choices=sorted(SITES),
                        help="shifted: another hospital's scanner (contrast, noise, resolution) "
                             "and group mix; same disease (docs/data.md)")
    parser.add_argument("--shift", default="", metavar="KEY=VALUE,...",
                        help="override the site's contrast, noise, resolution, female, "
                             "race=A/B/W, e.g. resolution=0.25,race=0.3/0.3/0.4")
    parser.add_argument("--note-diagnosis", action="store_true",
                        help="texts name the diagnosis in the zero-shot prompts' words, more "
                             "often for men than women (DIAGNOSIS_RATE; docs/data.md)")
    parser.add_argument("--bad-pairs", type=float, default=0.0, metavar="SHARE",
                        help="give this share of TRAINING samples another patient's note "
                             "(listed in planted_bad_pairs.csv beside the data)")
    parser.add_argument("--world", default="default", choices=sorted(WORLDS),
                        help="sensitive: an OCT shortcut for men, scarce women, a disc-centred "
                             "SLO: a world where MultiFair's settings matter (docs/data.md)")


def run(args: argparse.Namespace) -> int:
    mods = tuple(m for m in args.modalities.split(",") if m) or None
    out = synthesize(args.layout, args.out, n_train=args.n_train, n_val=args.n_val,
                     n_test=args.n_test, full_size=args.full_size, seed=args.seed,
                     modalities=mods, split_style=args.split_style,
                     race_encoding=args.race_encoding, test_folder=args.test_folder,
                     informative=tuple(m for m in args.informative.split(",") if m),
                     missing=args.missing, missing_by=args.missing_by, site=args.site,
                     shift=args.shift, bad_pairs=args.bad_pairs,
                     note_diagnosis=args.note_diagnosis, world=args.world)
    print(f"wrote {args.layout} ({args.n_train}/{args.n_val}/{args.n_test}) to {out}")
    return 0
