"""The confirmation's reference is the model family's (search/record/reference.py, issue 28 item
3): plain fusion for the fusion methods, CLIP for the vision-language family; the candidates train
it under the label "baseline", the rule's messages, decision.json, the summary and the report name
it, and a study saved before the entry existed still reads as plain fusion. No Ray, no training."""
from __future__ import annotations

import pytest

from search.decide.confirm import BASELINE, PAPER, candidate_stats, candidates, choose
from search.record.reference import CLIP, FUSION, reference_of, saved_reference
from search.record.summary import print_decision, print_evidence
from search.runner import SearchConfig
from trainer.methods import available_methods


def scfg(mode: str, dataset: str = "fairvlmed", tmp=None) -> SearchConfig:
    return SearchConfig(dataset, "gender", mode=mode, preset="tiny", storage_path=str(tmp))


def runs(table: dict[str, list[float]]) -> list[dict]:
    """Confirmation runs: candidate -> validation ES-AUC per seed (AUC 0.8 each)."""
    return [{"candidate": c, "seed": s, "val": {"auc": 0.8, "es_auc": v}}
            for c, values in table.items() for s, v in enumerate(values, start=1)]


def test_every_mode_has_its_family_s_reference():
    vl = {"clip", "fairclip", "fairclip_dbpm", "dualfairvl"}
    assert set(available_methods("clip")) | set(available_methods("dualfairvl")) == vl
    for mode in available_methods():
        ref = reference_of(mode)
        assert ref.mode == ("clip" if mode in vl else "baseline"), mode
        assert ref.default_point == (mode in ("clip", "baseline")), mode
    assert reference_of("fairclip") == CLIP and reference_of("full") == FUSION
    with pytest.raises(ValueError, match="unknown mode 'nope'"):
        reference_of("nope")


def test_a_fairclip_study_is_confirmed_against_clip_and_says_so(tmp_path, capsys):
    s = scfg("fairclip", tmp=tmp_path)
    finals = [{"trial_id": "t1", "params": {**s.baseline, "fairclip_lambda": 1e-4}}]
    cands = candidates(s, finals)
    assert list(cands) == ["fairclip-t1", PAPER, BASELINE]
    assert cands[BASELINE]["mode"] == "clip" and cands[PAPER]["mode"] == "fairclip"
    assert cands[BASELINE]["lr"] == s.baseline["lr"]    # CLIP at the study's default learning rate

    # the rule: a candidate clearly better, and none better
    better = choose(runs({BASELINE: [0.60, 0.62, 0.61], "fairclip-t1": [0.70, 0.73, 0.71]}),
                    reference=reference_of("fairclip").name)
    assert better["label"] == "fairclip-t1"
    assert better["reason"].startswith("fairclip-t1: shown better than CLIP (")
    assert "against CLIP per candidate" in better["rule"] and "plain fusion" not in better["rule"]
    worse = choose(runs({BASELINE: [0.70, 0.72, 0.71], "fairclip-t1": [0.60, 0.61, 0.62]}),
                   reference="CLIP")
    assert worse["label"] == BASELINE and worse["reason"].startswith("CLIP: no candidate shown better")
    print_evidence(worse)
    out = capsys.readouterr().out
    assert "candidate - CLIP, validation ES-AUC" in out and "within-seed correlation CLIP" in out
    assert "plain fusion" not in out
    with pytest.raises(RuntimeError, match="every CLIP .candidate 'baseline'. run failed"):
        choose(runs({"fairclip-t1": [0.7, 0.7]}), reference="CLIP")

    # the summary of a decision.json with its reference and a paired test
    row = {"baseline": 0.7, "chosen": 0.75, "diff": 0.05, "diff_lo": 0.01, "diff_hi": 0.09}
    decision = {"reference": reference_of("fairclip").to_dict(),
                "test": {"n_test": 40, "n_resamples": 1000, "deployed": "fairclip-t1",
                         **{k: row for k in ("auc", "es_auc", "worst_group_auc")}}}
    print_decision(decision)
    out = capsys.readouterr().out
    assert "test split, once: chosen - CLIP, paired bootstrap over 40 samples" in out
    assert "chosen 0.7500  CLIP 0.7000" in out and "plain fusion" not in out


def test_a_clip_search_compares_tuned_clip_with_clip_at_its_default_point(tmp_path):
    """Nothing else to compare with: the reference is clip at the paper's point; the paper's point
    and a finalist on it are the reference itself, not candidates."""
    s = scfg("clip", tmp=tmp_path)
    ref = reference_of("clip")
    assert ref.mode == "clip" and ref.name == "CLIP at its default point"
    finals = [{"trial_id": "t1", "params": {"lr": s.baseline["lr"] * 3}},
              {"trial_id": "t0", "params": dict(s.baseline)}]      # the default point, evaluated first
    cands = candidates(s, finals)
    assert list(cands) == ["clip-t1", BASELINE]
    assert cands[BASELINE] == {**s.baseline, "mode": "clip"}
    d = choose(runs({BASELINE: [0.60, 0.62, 0.61], "clip-t1": [0.70, 0.73, 0.71]}), reference=ref.name)
    assert d["reason"].startswith("clip-t1: shown better than CLIP at its default point (")
    # only the default point among the finalists: the reference alone, nothing to compare
    alone = candidates(s, finals[1:])
    assert list(alone) == [BASELINE]
    none = choose(runs({BASELINE: [0.60, 0.62]}), reference=ref.name)
    assert none["label"] == BASELINE and none["reason"] == "CLIP at its default point: no candidate to compare"


def test_fusion_studies_keep_plain_fusion_and_the_paper_s_point(tmp_path):
    s = scfg("full", "fairvision", tmp_path)
    cands = candidates(s, [{"trial_id": "t1", "params": {**s.baseline, "rho": s.baseline["rho"] / 2}}])
    assert list(cands) == ["full-t1", PAPER, BASELINE] and cands[BASELINE]["mode"] == "baseline"


def test_a_saved_decision_names_its_reference_and_an_older_one_reads_as_plain_fusion(capsys):
    assert saved_reference({"reference": CLIP.to_dict()}) == CLIP
    assert saved_reference({"confirmation": {"candidates": {BASELINE: {"mode": "clip"}}}}) == CLIP
    # a decision.json saved before the entry (and before the rule recorded its baseline's name):
    # the mode its "baseline" candidate trained, plain fusion
    table = runs({BASELINE: [0.70, 0.72, 0.71], "full-t1": [0.60, 0.61, 0.62]})
    choice = choose(table)
    del choice["evidence"]["baseline_name"]
    old = {"confirmation": {"candidates": {BASELINE: {"mode": "baseline", "rho": 0.5},
                                           "full-t1": {"mode": "full", "rho": 0.2}},
                            "stats": candidate_stats(table), "choice": choice}}
    assert saved_reference(old) == FUSION and saved_reference(None) == FUSION
    row = {"baseline": 0.7, "chosen": 0.75, "diff": 0.05, "diff_lo": 0.01, "diff_hi": 0.09}
    print_decision({**old, "test": {"n_test": 40, "n_resamples": 1000, "deployed": BASELINE,
                                    **{k: row for k in ("auc", "es_auc", "worst_group_auc")}}})
    out = capsys.readouterr().out
    assert "best candidate (not deployed) - plain fusion, paired" in out
    assert "candidate - plain fusion, validation ES-AUC" in out and "CLIP" not in out


def test_a_resumed_confirmation_keeps_the_candidates_it_started_with(tmp_path):
    """study_candidates: planned once and saved in the study folder; a --resume reads the plan,
    and a confirmation started before the plan was saved (before this rule) resumes against plain
    fusion with the paper's point, as its code planned it."""
    from search.decide.confirm import CANDIDATES_FILE, study_candidates

    s = scfg("fairclip", tmp=tmp_path / "new")
    finals = [{"trial_id": "t1", "params": {**s.baseline, "fairclip_lambda": 1e-4}}]
    cands, ref = study_candidates(s, finals)
    assert ref == CLIP and cands == candidates(s, finals)
    saved = (tmp_path / "new" / s.name / CANDIDATES_FILE)
    assert saved.is_file()
    # the resume reads the plan, whatever the finalists now are
    assert study_candidates(s, []) == (cands, CLIP)

    # a study whose confirmation stage exists (Tune's tuner.pkl) without a saved plan
    old = scfg("fairclip", tmp=tmp_path / "old")
    (tmp_path / "old" / f"{old.name}-confirm").mkdir(parents=True)
    (tmp_path / "old" / f"{old.name}-confirm" / "tuner.pkl").write_bytes(b"")
    cands, ref = study_candidates(old, finals)
    assert ref == FUSION and cands[BASELINE]["mode"] == "baseline" and list(cands) == ["fairclip-t1", PAPER, BASELINE]
