"""The known answer: ideal-reader evidence of the generated data, and the ceiling it implies.

For every generated sample the generator (synthetic.py) knows the latents its images were rendered
from. The IDEAL READER of a modality is the Bayes-optimal classifier of glaucoma given that
modality's latent, computed exactly from the generative model (generative.py, the same module the
sampler draws from); its posterior log-odds is the
sample's "evidence". Readings chosen (docs/data.md):

- A reader sees what the image encodes, not the latent's causes: OCT shows the RNFL band
  thickness `rnfl`, SLO the cup-to-disc ratio `cdr`, the note whether it was written as positive
  (`pos`, label flipped with NOTE_LABEL_NOISE). Rendering adds nuisance (speckle, disc size, pixel
  noise, phrase noise) that a perfect reader is assumed to see through, so the evidence is an
  UPPER bound on what a model can learn from the pixels/tokens.
- The group is NOT revealed (models get no demographic input): the OCT likelihood is a mixture
  over the 6 race x gender cells with the generator's proportions, since the OCT quality q (signal
  amplitude and noise) depends on the group. SLO and note are group-independent.
- Severity s ~ U(0.4, 1) for glaucoma (0 if healthy) is shared by OCT and SLO, so the combined
  evidence is the JOINT likelihood  p(rnfl, cdr, pos | y=1) = Int mix_g p(rnfl|s,g) p(cdr|s) p(s) ds
  * p(pos|1), not the sum of per-modality log-odds. The s-integral uses 96-node Gauss-Legendre.
- cdr is clipped to [0.1, 0.9]: a clipped value has the tail probability as its likelihood.
- A modality that is not `informative` (rendered from a decoy label) has likelihood ratio 1.

Side file `<out>/ideal_reader.csv` (beside the data, never inside an npz): one row per sample,
keyed by npz `filename` and `split`, with glaucoma, the five attribute codes, `evidence_<m>` per
written modality and `evidence_all`; with --missing also `evidence_available` (each sample's
joint reader over the modalities it has) and `present_<m>`.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm, rankdata

from trainer.config import ATTRIBUTES, canonical_attribute
from trainer.data import generative as gen
from trainer.data.acquisition import site_profile
from trainer.jsonout import dumps

SIDE_FILE = "ideal_reader.csv"
SITE_FILE = "site.json"     # beside a generated site's data (not the default): what was changed
WORLD_FILE = "world.json"   # beside a generated world's data (not the default): its parameters
ATTRS = ("gender", "race", "ethnicity", "language", "maritalstatus")
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(96)
_LO, _HI = gen.SEVERITY
SEVERITY = _LO + (_HI - _LO) / 2 * (_NODES + 1)     # nodes on [0.4, 1]
LOG_W = np.log(_WEIGHTS * ((_HI - _LO) / 2) / (_HI - _LO))   # Gauss weights * (b-a)/2 * 1/(b-a)


def _oct_loglik(rnfl: np.ndarray, prof: dict, severity: np.ndarray, protocol=None,
                world=None, y: int = 0) -> np.ndarray:
    """log p(rnfl | s) for each sample (rows) and severity (columns), the group mixed out with
    the site's proportions `prof`. With `protocol` (bool (n,), sensitive world): log p(rnfl,
    protocol | s, y), the protocol's probability depending on the label and the gender."""
    r = rnfl[:, None]
    parts = []
    for race, p_race in enumerate(prof["race"]):
        for gender, p_gender in enumerate((prof["female"], 1 - prof["female"])):
            q = gen.oct_quality(race, gender)
            mean = gen.rnfl_mean(severity[None, :], q)
            sd = mean * gen.rnfl_noise(q)
            part = math.log(p_race * p_gender) + norm.logpdf(r, mean, sd)
            if protocol is not None:
                p_band = gen.protocol_p(world, y, gender)
                part = part + np.log(np.where(protocol, p_band, 1 - p_band))[:, None]
            parts.append(part)
    return logsumexp(np.stack(parts), axis=0)


def _slo_loglik(cdr: np.ndarray, severity: np.ndarray, noise=gen.SLO_CDR_NOISE) -> np.ndarray:
    """log p(cdr | s) with the clipping at CDR_RANGE (0.1, 0.9) as tail masses; `noise`: the
    world's cup-to-disc sd."""
    lo, hi = gen.CDR_RANGE
    c, mean = cdr[:, None], gen.cdr_mean(severity[None, :])
    z = lambda x: (x - mean) / noise  # noqa: E731
    out = norm.logpdf(c, mean, noise) * np.ones_like(mean)
    out = np.where(c >= hi, norm.logsf(z(hi)), out)
    return np.where(c <= lo, norm.logcdf(z(lo)), out)


def _note_loglik(pos: np.ndarray, y: int) -> np.ndarray:
    agree = pos == bool(y)
    return np.log(np.where(agree, 1 - gen.NOTE_LABEL_NOISE, gen.NOTE_LABEL_NOISE))[:, None]


def evidence(layout: str, meta: dict, positive=None, modalities=("slo", "oct"),
             site="default", absent=None, world="default") -> dict:
    """Posterior log-odds of glaucoma per modality in `modalities` and combined ("all"), for a
    reader who knows the site's population (its group mix: acquisition.SITES) but not the
    patient's group. With `absent` ({modality: bool (n,)}, generated --missing) also
    "available": each sample read from the modalities it has (none: the prior). In a world with
    the OCT protocol shortcut (generative.WORLDS["sensitive"]) the OCT reader reads the band too,
    and "no_shortcut" is the joint reader that ignores it (reads the RNFL only)."""
    world = gen.resolve_world(world)
    informative = set(np.asarray(meta.get("informative", gen.LABELLED)).tolist())
    prof = gen.world_profile(site_profile(layout, site), world)
    protocol = meta.get("protocol")
    prior = prof["glaucoma"]
    zero = np.zeros((len(meta["glaucoma"]), 1))
    terms = {}   # modality -> (loglik at s-nodes given y=1, loglik given y=0 [s=0])
    for m in modalities:
        if m not in informative:
            terms[m] = (zero, zero)
        elif m == "oct":
            terms[m] = (_oct_loglik(meta["rnfl"], prof, SEVERITY, protocol, world, 1),
                        _oct_loglik(meta["rnfl"], prof, np.zeros(1), protocol, world, 0))
            if protocol is not None:
                terms["oct_rnfl"] = (_oct_loglik(meta["rnfl"], prof, SEVERITY),
                                     _oct_loglik(meta["rnfl"], prof, np.zeros(1)))
        elif m == "slo":
            noise = world.cdr_noise
            terms[m] = (_slo_loglik(meta["cdr"], SEVERITY, noise),
                        _slo_loglik(meta["cdr"], np.zeros(1), noise))
        else:
            terms[m] = (_note_loglik(positive, 1), _note_loglik(positive, 0))
    log_prior = math.log(prior / (1 - prior))

    def log_odds(mods):
        ll1 = sum((terms[m][0] for m in mods), zero)
        ll0 = sum((terms[m][1] for m in mods), zero)
        ll1 = logsumexp(ll1 + LOG_W[None, :] if ll1.shape[1] > 1 else ll1, axis=1)
        return log_prior + ll1 - ll0[:, 0]

    out = {m: log_odds([m]) for m in modalities}
    out["all"] = log_odds(list(modalities))
    if "oct_rnfl" in terms:
        out["no_shortcut"] = log_odds([m if m != "oct" else "oct_rnfl" for m in modalities])
    if absent is not None:
        n = len(meta["glaucoma"])
        has = np.stack([~absent.get(m, np.zeros(n, bool)) for m in modalities], axis=1)
        out["available"] = np.empty(n)
        for pattern in np.unique(has, axis=0):   # at most 2^modalities joint readers
            rows = (has == pattern).all(axis=1)
            mods = [m for m, p in zip(modalities, pattern) if p]
            out["available"][rows] = log_odds(mods)[rows]
    return out


def evidence_rows(layout, meta, texts, modalities, split_rows, split, site="default",
                  absent=None, world="default") -> list[dict]:
    """Side-file rows of one split (filename from the written CSV rows, same order); with
    `absent` ({modality: bool}, from --missing) also `evidence_available` and `present_<m>`
    (1/0) per modality."""
    positive = texts["positive"] if texts is not None else None
    ev = evidence(layout, meta, positive, tuple(modalities), site, absent, world)
    rows = []
    for i, row in enumerate(split_rows):
        rec = {"filename": row["filename"], "split": split, "glaucoma": int(meta["glaucoma"][i])}
        rec.update({a: int(meta[a][i]) for a in ATTRS})
        rec.update({f"evidence_{k}": f"{v[i]:.10g}" for k, v in ev.items()})
        if absent is not None:
            rec.update({f"present_{m}": int(not (m in absent and absent[m][i]))
                        for m in modalities})
        rows.append(rec)
    return rows


def read_side_file(data_root, split: str | None = None) -> list[dict]:
    path = Path(data_root) / SIDE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"ceiling: no {SIDE_FILE} in {data_root} (generated data only; "
                                f"regenerate with `python -m trainer synthesize`)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise ValueError(f"ceiling: split {split!r} has no rows in {path}")
    return rows


def ceiling(data_root, attribute: str, split: str = "test") -> dict:
    """Per-group AUC, AUC and ES-AUC of each ideal reader ({modality: metrics, "all": ...})."""
    from trainer.metrics import evaluate_fairness

    attribute = canonical_attribute(attribute)
    rows = read_side_file(data_root, split)
    y = np.array([int(r["glaucoma"]) for r in rows])
    g = np.array([int(r[attribute]) for r in rows])
    out = {"split": split, "attribute": attribute, "n": len(rows), "site": site_of(data_root),
           "readers": {}}
    if (Path(data_root) / WORLD_FILE).is_file():    # another world than the default
        out["world"] = json.loads((Path(data_root) / WORLD_FILE).read_text())["name"]
    for key in (k for k in rows[0] if k.startswith("evidence_")):
        ev = np.array([float(r[key]) for r in rows])
        score = rankdata(ev) / (len(ev) + 1)   # same order, no saturation of sigmoid(log-odds)
        m = evaluate_fairness(y, score, g, group_names=ATTRIBUTES[attribute])
        out["readers"][key.removeprefix("evidence_")] = {
            k: m[k] for k in ("auc", "es_auc", "group_auc", "group_count")}
    return out


def site_of(data_root) -> str:
    """The generated site of a data root: SITE_FILE's name, else "default"."""
    path = Path(data_root) / SITE_FILE
    return json.loads(path.read_text())["site"] if path.is_file() else "default"


def format_ceiling(result: dict) -> str:
    lines = [f"ideal-reader ceiling on {result['split']} (n={result['n']}), "
             f"attribute {result['attribute']}, site {result.get('site', 'default')}"
             + (f", world {result['world']}" if "world" in result else "")]
    for name, m in result["readers"].items():
        groups = ", ".join(f"{g} {a:.3f}" for g, a in m["group_auc"].items())
        lines.append(f"  {name:>11}: AUC {m['auc']:.3f}  ES-AUC {m['es_auc']:.3f}  ({groups})")
    return "\n".join(lines)


def run_ceiling(args) -> int:
    """`python -m trainer ceiling`: print the table and write JSON (--out, default beside data);
    with --shift-root, the other site's ceiling too (printed after, JSON key "shift")."""
    result = ceiling(args.data_root, args.attribute, args.split)
    print(format_ceiling(result))
    if getattr(args, "shift_root", None):
        result["shift"] = ceiling(args.shift_root, args.attribute, args.split)
        print(format_ceiling(result["shift"]))
    default = Path(args.data_root) / f"ceiling_{result['attribute']}_{args.split}.json"
    out = Path(args.out or default)
    out.write_text(dumps(result, indent=2))   # strict JSON: undefined AUC -> null
    print(f"wrote {out}")
    return 0
