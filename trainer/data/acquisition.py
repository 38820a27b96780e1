"""How a generated site acquires its data: which modalities a patient has, and (shifted site) its
scanner and its population. The disease (label, severity, latents) is generative.py's and the
same at every site; docs/data.md gives the figures.

Missing modalities (`synthesize --missing slo=0.3,oct=0.1 [--missing-by race|gender]`):
each sample lacks modality m with probability rate_m (independently across modalities, so a
share rate_slo * rate_oct lacks both and is dropped by the loader with a counted warning). With
`--missing-by A`, group g of attribute A has rate_m * MISSING_FACTORS[A][g] / mean, where mean is
the factors' average under the site's group proportions: the population's mean rate is the one
asked for. The draws use their own generator (seed, split, MISSING_STREAM), so the images and
labels are those of the same dataset without --missing; only keys are left out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from trainer.data.generative import PROFILES

# Relative rate of lacking a modality, by group code, before normalising to the mean rate.
# As in real clinics: imaging (OCT above all) is less often available to Black and Asian patients
# and to women (access, referral), so their samples lack a modality more often.
MISSING_FACTORS = {"race": (1.5, 2.0, 0.8),        # Asian, Black, White
                   "gender": (1.25, 0.75)}         # female, male
MISSING_STREAM = 22   # third word of the missingness generator's seed: its own stream


def parse_missing(spec: str, modalities) -> dict[str, float]:
    """`slo=0.3,oct=0.1` -> {"slo": 0.3, "oct": 0.1}; a bad item raises ValueError naming the
    flag and the value."""
    out = {}
    for item in (s.strip() for s in (spec or "").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"--missing {item}: expected modality=rate, e.g. slo=0.3,oct=0.1")
        if name not in modalities:
            raise ValueError(f"--missing {item}: unknown modality {name!r}; choose from "
                             f"{', '.join(modalities)} (the modalities written)")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"--missing {item}: rate {value!r} is not a number") from None
        if not 0 <= rate < 1:
            raise ValueError(f"--missing {item}: rate {rate:g} outside [0, 1) (1 would leave "
                             f"{name!r} absent in every sample)")
        out[name] = rate
    return out


def group_rates(rate: float, by: str | None, profile: dict) -> np.ndarray:
    """The rate of each group code of `by` (one value when by is None), mean rate kept."""
    if by is None:
        return np.array([rate])
    factors = np.asarray(MISSING_FACTORS[by], float)
    share = np.asarray(profile["race"]) if by == "race" else \
        np.array([profile["female"], 1 - profile["female"]])
    return rate * factors / float(share @ factors)


def check_rates(missing: dict, by: str | None, profile: dict) -> None:
    """Refuse a group rate >= 1 (that group would lack the modality in every sample)."""
    for m, rate in missing.items():
        rates = group_rates(rate, by, profile)
        if rates.max() >= 1:
            g = int(rates.argmax())
            raise ValueError(f"--missing {m}={rate:g} with --missing-by {by}: group code {g} "
                             f"would have rate {rates[g]:.2f} >= 1 (every such sample without "
                             f"{m!r}); lower the rate below {rate / rates[g]:.3f}")


def draw_absent(seed: int, split_index: int, meta: dict, missing: dict, by: str | None,
                profile: dict) -> dict[str, np.ndarray]:
    """{modality: bool (n,)}: True where the sample lacks it (independent Bernoulli draws)."""
    if not missing:
        return {}
    rng = np.random.default_rng([seed, split_index, MISSING_STREAM])
    n = len(meta["glaucoma"])
    out = {}
    for m, rate in missing.items():    # in the spec's order: deterministic for a given spec
        rates = group_rates(rate, by, profile)
        p = rates[meta[by]] if by else np.full(n, rates[0])
        out[m] = rng.random(n) < p
    return out


# ----------------------------------------------------------------------------- the scanner

@dataclass(frozen=True)
class Scanner:
    """Acquisition of a site: `contrast` scales intensities about the image's mean, `noise`
    multiplies the pixel noise (OCT speckle, SLO additive), images are rendered at `resolution`
    times the layout's size and resampled back (bilinear) to it."""
    contrast: float = 1.0
    noise: float = 1.0
    resolution: float = 1.0


@dataclass(frozen=True)
class Site:
    name: str
    scanner: Scanner | None        # None: the default rendering, unchanged bytes
    female: float | None = None    # group mix overrides (None: the layout's published mix)
    race: tuple | None = None


SITES = {
    "default": Site("default", None),
    # Another hospital: an older, lower-contrast, noisier scanner at half the resolution, and a
    # population with many more Black and Asian patients and more men.
    "shifted": Site("shifted", Scanner(contrast=0.6, noise=2.0, resolution=0.5), female=0.48,
                    race=(0.20, 0.35, 0.45)),
}
_SCANNER_KEYS = ("contrast", "noise", "resolution")


def resolve_site(site) -> Site:
    """A Site from its name (SITES) or itself."""
    if isinstance(site, Site):
        return site
    if site not in SITES:
        raise ValueError(f"--site {site}: choose one of {', '.join(SITES)}")
    return SITES[site]


def with_overrides(site, spec: str) -> Site:
    """`--shift contrast=0.5,noise=3,resolution=0.25,female=0.5,race=0.3/0.3/0.4` on top of
    `site` (named "custom"); a bad item raises ValueError naming the flag and the value."""
    base = resolve_site(site)
    scanner, mix = asdict(base.scanner) if base.scanner else {}, {}
    for item in (s.strip() for s in (spec or "").split(",") if s.strip()):
        key, _sep, value = (x.strip() for x in item.partition("="))
        try:
            numbers = [float(v) for v in value.split("/")]
        except ValueError:
            raise ValueError(f"--shift {item}: {value!r} is not a number") from None
        if key in _SCANNER_KEYS and len(numbers) == 1 and numbers[0] > 0 and \
                (key != "resolution" or numbers[0] <= 1):
            scanner[key] = numbers[0]
        elif key == "female" and len(numbers) == 1 and 0 < numbers[0] < 1:
            mix["female"] = numbers[0]
        elif key == "race" and len(numbers) == 3 and min(numbers) > 0 and \
                abs(sum(numbers) - 1) < 0.01:
            mix["race"] = tuple(v / sum(numbers) for v in numbers)
        else:
            raise ValueError(f"--shift {item}: expected contrast, noise (> 0), resolution (0, 1], "
                             f"female (0, 1) or race=A/B/W (3 shares summing to 1)")
    if not spec or not spec.strip():
        return base
    return Site("custom", Scanner(**scanner) if scanner else base.scanner,
                mix.get("female", base.female), mix.get("race", base.race))


def site_profile(layout: str, site) -> dict:
    """The layout's PROFILES entry with the site's group mix."""
    s = resolve_site(site)
    prof = dict(PROFILES[layout])
    if s.female is not None:
        prof["female"] = s.female
    if s.race is not None:
        prof["race"] = s.race
    return prof


def describe_site(site) -> dict:
    """The site's parameters, for its side file site.json and the docs."""
    s = resolve_site(site)
    return {"site": s.name, "scanner": asdict(s.scanner) if s.scanner else None,
            "female": s.female, "race": list(s.race) if s.race else None}


def resample(image: np.ndarray, shape) -> np.ndarray:
    """float image(s) (..., h, w) -> (..., H, W), bilinear (antialiased when shrinking)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(image, np.float32))
    lead = t.shape[:-2]
    t = t.reshape(-1, 1, *t.shape[-2:])
    out = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.reshape(*lead, *shape).numpy()


def apply_contrast(image: np.ndarray, contrast: float) -> np.ndarray:
    """Intensities scaled by `contrast` about the image's mean (float in, float out)."""
    mean = image.mean()
    return mean + contrast * (image - mean)
