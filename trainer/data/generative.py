"""The generative model of the generated data, written once: constants, means and noise.

Two readers of the same model import it: the sampler (synthetic.py draws latents and renders
images from them) and the ideal reader (ideal.py evaluates the exact likelihood of those latents).
Writing the model twice let the two drift apart; a change here changes both (docs/data.md).

Per sample: demographics from the layout's PROFILES; glaucoma y; severity s = y * U(SEVERITY);
OCT quality q = OCT_QUALITY_RACE[race] * OCT_QUALITY_GENDER[gender];
  rnfl = rnfl_mean(s, q) * (1 + N(0, 1) * rnfl_noise(q))          (OCT: RNFL band thickness)
  cdr  = clip(cdr_mean(s) + N(0, SLO_CDR_NOISE), *CDR_RANGE)       (SLO: cup-to-disc ratio)
  note written for the flipped label with probability NOTE_LABEL_NOISE.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABELLED = ("slo", "oct", "note")        # modalities whose latent can carry the label
# Published proportions; unknown (-1) shares: a few in FairVision, realistic ones in FairVLMed.
PROFILES = {
    "fairvision": dict(female=0.570, race=(0.085, 0.149, 0.766), glaucoma=0.487, hispanic=0.045,
                       unknown={"ethnicity": 0.01, "language": 0.01, "maritalstatus": 0.015}),
    "fairvlmed": dict(female=0.563, race=(0.082, 0.149, 0.769), glaucoma=0.505, hispanic=0.048,
                      unknown={"ethnicity": 0.03, "language": 0.02, "maritalstatus": 0.05}),
}
LANGUAGE_P = (0.92, 0.04, 0.04)
MARITAL_P = (0.55, 0.25, 0.09, 0.09, 0.02)
SEVERITY = (0.4, 1.0)                    # severity of a glaucoma case ~ U(0.4, 1); 0 if healthy
# OCT signal quality by group (1 = full strength): the designed unfairness.
OCT_QUALITY_RACE = (0.6, 0.5, 1.0)      # Asian, Black, White
OCT_QUALITY_GENDER = (0.7, 1.0)         # female, male
OCT_THINNING = 0.5                      # RNFL thinning at severity 1 and full quality
RNFL_HEALTHY = 0.18                     # relative RNFL band thickness of a healthy eye
RNFL_NOISE = (0.06, 0.12)               # relative noise sd: base + extra * (1 - quality)
SLO_CDR_BASE, SLO_CDR_GAIN, SLO_CDR_NOISE = 0.35, 0.2, 0.15
CDR_RANGE = (0.1, 0.9)                  # the drawn cup-to-disc ratio is clipped to this range
NOTE_LABEL_NOISE = 0.15                 # share of notes written as if the label were flipped


def oct_quality(race, gender):
    """OCT signal quality q of a race x gender cell (codes, scalars or arrays)."""
    return np.asarray(OCT_QUALITY_RACE)[race] * np.asarray(OCT_QUALITY_GENDER)[gender]


def thinning(severity, quality):
    """The RNFL's relative thickness left at `severity` seen with OCT `quality` (1 = none lost)."""
    return 1 - OCT_THINNING * severity * quality


def rnfl_mean(severity, quality):
    return RNFL_HEALTHY * thinning(severity, quality)


def rnfl_noise(quality):
    """Relative sd of the RNFL thickness: noisier where the OCT signal is weak."""
    return RNFL_NOISE[0] + RNFL_NOISE[1] * (1 - quality)


def cdr_mean(severity):
    return SLO_CDR_BASE + SLO_CDR_GAIN * severity / 0.7


# -- the sensitive world (`synthesize --world sensitive`, docs/data.md) -------------------------
# A world where MultiFair's terms have something to fix. Same patients and disease model as above,
# three changes, each a plausible clinical story (docs/data.md gives it):
# 1. women are scarce (a referral clinic whose patients are mostly men);
# 2. a SHORTCUT in the fast modality: the OCT protocol. Men reach the glaucoma service by
#    referral, scanned with the glaucoma protocol (a bright extra band below the RPE) mostly when
#    glaucoma was already suspected; women mostly come through a screening programme that assigns
#    the protocol regardless of the eye. The band is learned in a few steps and predicts the label
#    for men only: for women it is noise with the same weight;
# 3. the slow modality carries what women need: a disc-centred fundus photograph (larger disc,
#    less cup-to-disc noise), group-uniform, but its cup is subtle against the bright band.
@dataclass(frozen=True)
class World:
    name: str
    female: float | None = None          # share of women (None: the layout's/site's)
    # P(glaucoma-protocol band | label, gender): ((female y=0, female y=1), (male y=0, male y=1))
    protocol: tuple | None = None
    cdr_noise: float = SLO_CDR_NOISE     # sd of the cup-to-disc ratio around its mean
    disc_radius: float = 0.1             # optic disc radius, fraction of the SLO image
    cup: float = 55                      # brightness of the cup over the disc (SLO)


WORLDS = {
    "default": World("default"),
    "sensitive": World("sensitive", female=0.25, protocol=((0.5, 0.5), (0.1, 0.9)),
                       cdr_noise=0.10, disc_radius=0.25, cup=120),
}


def resolve_world(world) -> World:
    if isinstance(world, World):
        return world
    if world not in WORLDS:
        raise ValueError(f"--world {world}: choose one of {', '.join(WORLDS)}")
    return WORLDS[world]


def protocol_p(world: World, label, gender):
    """P(glaucoma-protocol band) of each sample (codes, scalars or arrays)."""
    return np.asarray(world.protocol)[gender, label]


def world_profile(profile: dict, world) -> dict:
    """The site's PROFILES entry with the world's share of women (if it sets one)."""
    world = resolve_world(world)
    return profile if world.female is None else dict(profile, female=world.female)
