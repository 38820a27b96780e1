"""The search's command line, generated from SearchConfig's fields (search/config.py), accepts
every flag the hand-written parser of search/runner.py accepted (listed below, once, as that
parser declared them), with the same default, type and choices; `--help` shows every field's
help; and every flag the docs pass to an entry script exists."""
from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from search.config import SearchConfig, flag_of, parse_args, parser
from search.run.objectives import OBJECTIVES
from tests.search.conftest import REPO, subprocess_env
from trainer.methods import available_methods

# flag -> (dest, default, type, action) of the hand-written parser (git show 701e612:search/runner.py);
# type None: a string; action None: store
OLD_FLAGS = {
    "--data-root": ("data_root", "", None, None),
    "--prepare-on-cluster": ("prepare_on_cluster", False, None, "store_true"),
    "--preset": ("preset", "paper", None, None),
    "--mode": ("mode", "full", None, None),
    "--num-samples": ("num_samples", 16, int, None),
    "--max-epochs": ("max_epochs", 10, int, None),
    "--grace-period": ("grace_period", 2, int, None),
    "--reduction-factor": ("reduction_factor", 3, int, None),
    "--scheduler": ("scheduler", "asha", None, None),
    "--max-concurrent": ("max_concurrent", 0, int, None),
    "--cpus-per-trial": ("cpus_per_trial", 1.0, float, None),
    "--gpus-per-trial": ("gpus_per_trial", 0.0, float, None),
    "--max-failures": ("max_failures", 2, int, None),
    "--checkpoint-every": ("checkpoint_every", 5, int, None),
    "--objective": ("objective", "es_auc", None, None),
    "--objectives": ("objectives", "", None, None),
    "--min-missing-es-auc": ("min_missing_es_auc", "", None, None),
    "--shift-root": ("shift_root", "", None, None),
    "--min-auc-drop": ("min_auc_drop", None, float, None),
    "--finalists": ("finalists", 3, int, None),
    "--warm-start": ("warm_start", "", None, None),
    "--confirm-seeds": ("confirm_seeds", 3, int, None),
    "--confirm-budget": ("confirm_budget", 0, int, None),
    "--confirm-folds": ("confirm_folds", 0, int, None),
    "--alpha": ("alpha", 0.05, float, None),
    "--min-gain": ("min_gain", 0.0, float, None),
    "--register-name": ("register_name", "", None, None),
    "--no-figures": ("figures", True, None, "store_false"),
    "--tracking-uri": ("tracking_uri", "", None, None),
    "--no-tracking": ("no_tracking", False, None, "store_true"),
    "--experiment": ("experiment", "", None, None),
    # the old parser's default was this path resolved; SearchConfig resolves it either way (below)
    "--storage-path": ("storage_path", "multifair-results", None, None),
    "--name": ("name", "", None, None),
    "--resume": ("resume", False, None, "store_true"),
    "--seed": ("seed", 0, int, None),
    "--local": ("local", False, None, "store_true"),
    "--num-cpus": ("num_cpus", 0, int, None),
    "--num-gpus": ("num_gpus", -1, int, None),
    "--no-final-test": ("final_test", True, None, "store_false"),
    "--set": ("sets", [], None, "append"),
}
OLD_CHOICES = {"--preset": ["paper", "tiny"], "--mode": list(available_methods()),
               "--scheduler": ["asha", "asha_es_auc", "none"], "--objective": list(OBJECTIVES)}
ACTIONS = {"store_true": argparse._StoreTrueAction, "store_false": argparse._StoreFalseAction,
           "append": argparse._AppendAction, None: argparse._StoreAction}


def actions() -> dict[str, argparse.Action]:
    return {flag: a for a in parser("fairvision", "gender")._actions for flag in a.option_strings}


@pytest.mark.parametrize("flag", OLD_FLAGS)
def test_every_old_flag_keeps_its_default_type_and_choices(flag):
    dest, default, kind, action = OLD_FLAGS[flag]
    a = actions()[flag]
    assert (a.dest, a.default, a.type, type(a)) == (dest, default, kind, ACTIONS[action])
    assert list(a.choices or []) == OLD_CHOICES.get(flag, [])


def test_the_generated_parser_has_no_other_flag_and_parses_like_the_old_one(tmp_path):
    assert set(actions()) == set(OLD_FLAGS) | {"-h", "--help"}
    defaults = parse_args("fairvision", "gender", None, [])
    assert defaults.storage_path == str(Path("multifair-results").resolve())   # the old default, resolved
    argv = ["--mode", "ogm_ge", "--num-samples", "5", "--cpus-per-trial", "0.5", "--no-figures",
            "--no-final-test", "--local", "--set", "lr=0.001", "--set", "batch_size=8", "--min-auc-drop",
            "0.02", "--objective", "constrained", "--storage-path", str(tmp_path), "--num-gpus", "0"]
    scfg = parse_args("fairvision", "gender", None, argv)
    assert (scfg.mode, scfg.num_samples, scfg.cpus_per_trial, scfg.figures, scfg.final_test, scfg.local) == \
        ("ogm_ge", 5, 0.5, False, False, True)
    assert (scfg.sets, scfg.min_auc_drop, scfg.storage_path, scfg.num_gpus) == \
        (["lr=0.001", "batch_size=8"], 0.02, str(tmp_path), 0)
    assert parse_args("fairvision", "gender", None, []).sets == []   # append never grows the default
    with pytest.raises(SystemExit):
        parse_args("fairvision", "gender", None, ["--scheduler", "hyperband"])


def test_help_shows_every_fields_help(capsys):
    with pytest.raises(SystemExit):
        parse_args("fairvision", "gender", None, ["--help"])
    shown = "".join(capsys.readouterr().out.split())   # argparse wraps lines, at hyphens too
    fields = [f for f in dataclasses.fields(SearchConfig) if flag_of(f) is not None]
    assert len(fields) == len(OLD_FLAGS)
    for f in fields:
        assert f.metadata["help"], f"{f.name} has no help"
        assert flag_of(f) in shown and "".join(f.metadata["help"].split()) in shown, f.name
    assert all(f.metadata["help"] for f in dataclasses.fields(SearchConfig))   # the code-only ones too


def test_a_tuple_field_becomes_a_flag_of_that_many_values():
    from search.config import _argument, setting

    @dataclasses.dataclass
    class Sizes:
        sizes: tuple[int, int, int] = setting((1, 2, 3), "three sizes")
        floor: float | None = setting(None, "a floor")

    p = argparse.ArgumentParser()
    for f in dataclasses.fields(Sizes):
        p.add_argument(flag_of(f), **_argument(f, {"sizes": tuple[int, int, int], "floor": float | None}[f.name]))
    assert vars(p.parse_args(["--sizes", "4", "5", "6", "--floor", "0.5"])) == {"sizes": (4, 5, 6), "floor": 0.5}
    assert vars(p.parse_args([])) == {"sizes": (1, 2, 3), "floor": None}


def doc_flags() -> dict[str, set[str]]:
    """Flags the README and docs pass to an entry script (`fairvision_gender.py ... --x`), with
    the lines a trailing backslash continues."""
    found: dict[str, set[str]] = {}
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for m in re.finditer(r"fair(?:vision|clip)_(?:gender|race)\.py([^`\n|;&]*)", text):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(1)):
                found.setdefault(flag, set()).add(path.name)
    return found


def test_every_flag_the_docs_pass_to_an_entry_script_exists():
    flags = doc_flags()
    assert {"--local", "--preset", "--data-root", "--objective"} <= set(flags)   # the finder finds them
    assert {f: sorted(docs) for f, docs in flags.items() if f not in actions()} == {}


def test_importing_the_runner_leaves_mlflow_for_the_prepare_thread():
    """run_search opens the tracking store (importing mlflow, ~1.5 s) in a thread while Ray starts:
    importing search.runner must not load it first."""
    code = "import sys, search.runner; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["False"], out.stderr[-2000:]


@pytest.mark.parametrize("argv, flag", [
    (["--max-epochs", "1"], "--max-epochs 1"),
    (["--objective", "constrained"], "--min-auc-drop"),
    (["--confirm-seeds", "0"], "--confirm-seeds 0"),
    (["--confirm-seeds", "1"], "--confirm-seeds 1: give at least 2"),
    (["--alpha", "1.5"], "--alpha 1.5"),
    (["--num-samples", "0"], "--num-samples 0"),
    (["--confirm-folds", "1"], "--confirm-folds 1: give 0"),
])
def test_bad_flags_are_refused_in_one_line(argv, flag, capsys, tmp_path):
    from search.runner import main

    assert main("fairvision", "race", argv=argv + ["--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and flag in err
    assert not list(tmp_path.iterdir())


def test_entry_script_paper_point_gives_way_to_the_method_s_own():
    """`search/fairvision_gender.py --mode ogm_ge` (the script passes MultiFair's paper point):
    the search starts from OGM-GE's default, the only hyperparameter it searches; MultiFair's
    modes keep the script's point."""
    from search.runner import SearchConfig
    from search.record.space import baseline_point

    paper = dict(rho=1.2, lambda_gm=0.15, tau=0.04, delta=0.3, lambda_f=0.5)
    other = SearchConfig("fairvision", "gender", baseline=paper, mode="ogm_ge")
    assert other.baseline == baseline_point("fairvision", "gender", "ogm_ge", "paper")
    assert set(other.baseline) == {"ogm_alpha"}
    assert SearchConfig("fairvision", "gender", baseline=paper, mode="full").baseline == paper
    assert set(SearchConfig("fairvision", "gender", baseline=paper, mode="baseline").baseline) == {"lr"}

