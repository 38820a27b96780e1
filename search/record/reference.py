"""The reference a study's candidates must be shown better than: its model family's (issue 28).

The fusion methods (MultiFair's modes and the fusion comparisons) are compared with plain fusion
(`--mode baseline`); the vision-language family (clip, fairclip, fairclip_dbpm, dualfairvl:
trainer/methods, `family`) with CLIP fine-tuned (`--mode clip`), the reference of the paper's
tables and of FairCLIP; plain fusion is not fit on a vision-language study's inputs the same
way (its own encoders and tokenizer, FairCLIP's batch and learning rate). The confirmation
trains the reference under the candidate label "baseline" (confirm.BASELINE), so decision.json's
keys and a saved study's table read as before.

When the searched mode IS its family's reference (`--mode clip`, `--mode baseline`) the
reference is that mode at its default point (the paper's or the method's default
hyperparameters): the rule then asks whether tuning it helped, and a candidate at that same point
(the paper's point, a finalist on it) is the reference itself, not a second candidate.

One owner: the confirmation's candidates, the rule's messages, decision.json's "reference", the
summary, the report and the analysis command all read it from here."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Reference:
    mode: str                   # the `--mode` the confirmation trains as "baseline"
    name: str                   # what messages, the summary and the report call it
    default_point: bool = False  # the searched mode itself, at its default point

    def to_dict(self) -> dict:
        return asdict(self)


FUSION = Reference("baseline", "plain fusion")
CLIP = Reference("clip", "CLIP")
BY_FAMILY = {"fusion": FUSION, "clip": CLIP, "dualfairvl": CLIP}   # trainer method `family`


def reference_of(mode: str) -> Reference:
    """The reference a `--mode` study is confirmed against (see the module docstring)."""
    from trainer.methods import method_class

    family = getattr(method_class(mode), "family", "fusion")   # unknown mode: one line naming it
    if family not in BY_FAMILY:
        raise ValueError(f"mode {mode!r}: its model family {family!r} has no reference; add one to "
                         "BY_FAMILY in search/record/reference.py")
    ref = BY_FAMILY[family]
    if mode == ref.mode:
        return Reference(ref.mode, f"{ref.name} at its default point", default_point=True)
    return ref


def saved_reference(decision: dict | None) -> Reference:
    """The reference a saved decision was made against: its "reference" entry; a study saved
    before the entry existed compared with the mode its "baseline" candidate trained (every
    such study: plain fusion)."""
    saved = (decision or {}).get("reference")
    if saved:
        return Reference(**saved)
    cands = ((decision or {}).get("confirmation") or {}).get("candidates") or {}
    mode = (cands.get("baseline") or {}).get("mode", FUSION.mode)
    return next((r for r in BY_FAMILY.values() if r.mode == mode), FUSION)
