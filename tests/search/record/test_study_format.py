"""The study format and its migration (search/record/migrate.py), and the side commands' one
command line (search/__main__.py).

Tune pickles the trainable, the callbacks, the searcher and the scheduler by module path. Studies
saved before the search/{run,decide,record} layout name the flat modules (search.trainable,
search.tracking, search.objectives, search.mo_asha, search.progress, search.storage: read from
one with pickletools); studies saved by the layout's first version carry no format number. Both
resume: `--resume` rewrites the module names once and writes the current format."""
import json
import pickle
import pickletools
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.search.conftest import REPO, study_runs, subprocess_env


def test_import_search_stays_light_and_old_names_are_gone():
    code = ("import sys, search, importlib.util; assert 'ray' not in sys.modules and 'torch' not in sys.modules; "
            "print(importlib.util.find_spec('search.trainable'), importlib.util.find_spec('search.run.trainable') is not None)")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["None", "True"], out.stderr[-2000:]


def test_a_pickle_with_old_names_migrates_to_the_new_classes():
    from search.record.migrate import rename_modules, renames_since
    from search.record.trial_callback import MLflowTrialCallback
    from search.run.progress import ProgressCallback

    for protocol in (0, 2, 5):   # GLOBAL (text) and STACK_GLOBAL (strings) opcodes, with frames
        blob = to_old_names(pickle.dumps([ProgressCallback, MLflowTrialCallback], protocol=protocol))
        assert b"search.progress" in blob and b"search.run." not in blob and b"search.record." not in blob
        with pytest.raises(ModuleNotFoundError, match="search.progress"):
            pickle.loads(blob)   # no alias keeps the old name importable
        migrated = rename_modules(blob, renames_since(0))
        assert pickle.loads(migrated) == [ProgressCallback, MLflowTrialCallback]
        assert rename_modules(migrated, renames_since(0)) == migrated   # idempotent
    composed = renames_since(0)   # flat -> stage layout -> layers -> rooms (format 4): composed, one step
    assert len(composed) == 26 + 4 + 2 and composed["search.space"] == "search.record.space"
    assert composed["search.run.space"] == "search.record.space" and composed["search.trainable"] == "search.run.trainable"
    assert composed["search.tracking"] == "search.record.tracking"   # StudyTracker stayed
    moved = "search.record.trial_callback:MLflowTrialCallback"
    assert composed["search.tracking:MLflowTrialCallback"] == composed["search.record.tracking:MLflowTrialCallback"] == moved
    assert renames_since(2) == {k: v for k, v in composed.items() if k.count(".") == 2}
    assert renames_since(3) == {"search.record.tracking:MLflowTrialCallback": moved}


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("version", [0, 3])
def test_a_callback_pickled_in_the_trackers_module_migrates(monkeypatch, version, protocol):
    """Format 3 and before pickled MLflowTrialCallback and its StudyTracker from one module
    (search.record.tracking; search.tracking before the stage layout), the module's name often
    one memo entry for both classes: the migration moves the callback's reference only."""
    from search.record import tracking
    from search.record.migrate import rename_modules, renames_since
    from search.record.tracking import StudyTracker
    from search.record.trial_callback import MLflowTrialCallback

    callback = MLflowTrialCallback(StudyTracker("sqlite:////tmp/x.db", "e", "/s"), 3, {"mode": "full"}, {})
    with monkeypatch.context() as m:   # what format 3 wrote: the callback a class of search.record.tracking
        m.setattr(MLflowTrialCallback, "__module__", "search.record.tracking")
        m.setattr(tracking, "MLflowTrialCallback", MLflowTrialCallback, raising=False)
        blob = pickle.dumps([callback, StudyTracker], protocol=protocol)
    if version == 0:
        blob = to_old_names(blob)
    assert b"trial_callback" not in blob
    with pytest.raises((AttributeError, ModuleNotFoundError), match="MLflowTrialCallback|search.tracking"):
        pickle.loads(blob)
    migrated = rename_modules(blob, renames_since(version))
    restored, tracker_class = pickle.loads(migrated)
    assert type(restored) is MLflowTrialCallback and tracker_class is StudyTracker
    assert type(restored.tracker) is StudyTracker and restored.tracker.study_dir == "/s"
    assert (restored.max_epochs, restored.trial_tags) == (3, {"mode": "full"})
    assert rename_modules(migrated, renames_since(version)) == migrated   # idempotent


def test_migrate_study_rewrites_once_and_refuses_a_newer_format(tmp_path):
    from search.record import study
    from search.record.migrate import MigrationError, migrate_study
    from search.run.progress import ProgressCallback

    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"search": {"name": "s"}, "setup": {}}))   # no number
    (folder / "tuner.pkl").write_bytes(to_old_names(pickle.dumps({"cb": ProgressCallback})))
    state = {"trial_data": [[json.dumps({"trial_id": "a"}),
                             json.dumps({"cb": to_old_names(pickle.dumps(ProgressCallback)).hex()})]]}
    (folder / "experiment_state-2026.json").write_text(json.dumps(state))
    assert migrate_study(str(tmp_path), "s") == 0
    assert pickle.loads((folder / "tuner.pkl").read_bytes()) == {"cb": ProgressCallback}
    entry = json.loads(json.loads((folder / "experiment_state-2026.json").read_text())["trial_data"][0][1])
    assert pickle.loads(bytes.fromhex(entry["cb"])) is ProgressCallback
    assert study.read_study(str(folder))["format"] == study.FORMAT
    assert migrate_study(str(tmp_path), "s") is None   # current: nothing rewritten
    (folder / "study.json").write_text(json.dumps({"format": study.FORMAT + 1, "search": {}, "setup": {}}))
    with pytest.raises(MigrationError, match=f"format {study.FORMAT + 1} was written by a newer"):
        migrate_study(str(tmp_path), "s")


@pytest.mark.parametrize("command", ["decide", "analyze", "sweep", "relog", "register", "score", "storage", "dataprep"])
def test_side_commands_run_from_one_command_line(command):
    """`python -m search <command> --help` runs that stage module's own command line."""
    out = subprocess.run([sys.executable, "-m", "search", command, "--help"], env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("usage: ") and " -h" in out.stdout, out.stderr[-2000:]
    if command != "decide":   # decide's prog is fixed in its own module
        assert out.stdout.startswith(f"usage: python -m search {command} "), out.stdout[:200]


def test_an_unknown_side_command_is_refused_with_the_list():
    out = subprocess.run([sys.executable, "-m", "search", "analyse"], env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "unknown command 'analyse'" in out.stderr and "analyze" in out.stderr


@pytest.mark.slow
# format 3, the one studies saved by the last release have; format 0's rewrite (every flat name)
# is checked without a search by test_migrate_study_rewrites_once_... and the pickle tests above
@pytest.mark.parametrize("old_format", [3])
def test_study_pickled_with_old_module_names_resumes(ray_session, search_config, data_root, tmp_path, old_format):
    """An interrupted Pareto study (the entry script, Ctrl-C: exit 130; MO-ASHA, the Optuna
    searcher, the MLflow callback), its tuner.pkl and experiment state rewritten to the old module
    names, resumes: finished trials are not trained again, the others continue, and the restored
    (old-named) MLflow callback logs every trial, one run each under one FINISHED parent. Format 0: the
    flat modules, no number; format 3: the MLflow callback still in search.record.tracking."""
    from search.runner import run_search

    shutil.copy(REPO / "search" / "fairvision_gender.py", tmp_path)
    args = ["--local", "--num-cpus", "2", "--preset", "tiny", "--cpus-per-trial", "1", "--finalists", "0",
            "--no-figures", "--objective", "pareto", "--num-samples", "5", "--max-epochs", "3",
            "--max-concurrent", "1", "--data-root", data_root, "--storage-path", str(tmp_path / "results"),
            "--tracking-uri", "sqlite:///" + str(tmp_path / "mlflow.db")]
    proc = subprocess.Popen([sys.executable, "fairvision_gender.py", *args], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    study_dir = tmp_path / "results" / "fairvision-gender-full"
    deadline = time.time() + 300
    while time.time() < deadline and not any(epochs[-1:] == [3] for epochs in epochs_of(study_dir).values()):
        time.sleep(0.2)   # one trial finished, the next started: three of five left to interrupt
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "INTERRUPTED" in out, out[-3000:]
    before = epochs_of(study_dir)
    assert any(epochs[-1:] == [3] for epochs in before.values()), before   # a finished trial to keep

    meta = {k: v for k, v in json.loads((study_dir / "study.json").read_text()).items() if k != "format"}
    (study_dir / "study.json").write_text(json.dumps({**meta, **({"format": 3} if old_format == 3 else {})}))
    if old_format == 0:
        old = rewrite_study_to_old_names(study_dir)
        assert {"search.trainable", "search.tracking", "search.mo_asha", "search.progress"} <= old, old
    else:
        rewrite_study_to_old_names(study_dir, {"search.record.trial_callback": "search.record.tracking"})
        assert b"MLflowTrialCallback" in (study_dir / "tuner.pkl").read_bytes()
    assert b"trial_callback" not in (study_dir / "tuner.pkl").read_bytes()

    scfg = search_config(tmp_path, objective="pareto", num_samples=5, max_epochs=3, max_concurrent=1, resume=True)
    outcome = run_search(scfg)
    assert not outcome.interrupted and len(outcome.results) == 5
    after = epochs_of(study_dir)
    assert all(after[name][:len(epochs)] == epochs for name, epochs in before.items()), (before, after)
    assert all(after[name] == epochs for name, epochs in before.items() if epochs[-1:] == [3]), \
        "a finished trial ran again"
    from search.record.study import FORMAT

    assert json.loads((study_dir / "study.json").read_text())["format"] == FORMAT
    assert not _old_names_in((study_dir / "tuner.pkl").read_bytes()), "the migration left an old name"
    assert b"search.record.trial_callback" in (study_dir / "tuner.pkl").read_bytes()
    _, parents, children = study_runs(scfg.tracking_uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(n.removeprefix("trial_") for n in after)


def epochs_of(study_dir: Path) -> dict[str, list[int]]:
    return {p.parent.name: [json.loads(line)["training_iteration"] for line in p.read_text().splitlines()]
            for p in study_dir.glob("trial_*/result.json")}


# --- what the old code wrote: the same pickles with the old module names ---

def _new_to_old() -> dict[str, str]:
    from search.record.migrate import FLAT_TO_STAGE

    # the flat layout held the callback in search.tracking, with the tracker
    return {**{new: old for old, new in FLAT_TO_STAGE.items()}, "search.record.trial_callback": "search.tracking"}


def to_old_names(data: bytes, names: dict[str, str] | None = None) -> bytes:
    """`data` (one pickle) as the flat layout's code wrote it: every module name search.<stage>.<m>
    written as search.<m> (or as `names` maps them). Its own opcode walk (not the migration's), so
    the two check each other."""
    names, out = names or _new_to_old(), bytearray()
    ops = list(pickletools.genops(data))
    for (op, arg, pos), nxt in zip(ops, [p for _, _, p in ops[1:]] + [len(data)]):
        if op.name == "FRAME":
            continue
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8") and arg in names:
            raw = names[arg].encode()
            out += b"\x8c" + bytes([len(raw)]) + raw   # SHORT_BINUNICODE
        elif op.name == "GLOBAL" and arg.split(" ")[0] in names:
            module, name = arg.split(" ", 1)
            out += b"c" + f"{names[module]}\n{name}\n".encode()
        else:
            out += data[pos:nxt]
    out += b"" if ops[-1][0].name == "STOP" else data[ops[-1][2]:]
    return bytes(out)


def _old_names_in(data: bytes) -> set[str]:
    old = set(_new_to_old().values())
    return {n.decode() for n in re.findall(rb"search\.[a-z_]+", data)} & old


def rewrite_study_to_old_names(study_dir: Path, names: dict[str, str] | None = None) -> set[str]:
    """tuner.pkl and the experiment state's cloudpickled values rewritten as the old code wrote
    them; returns the old module names they now hold (none of the new ones remain)."""
    seen: set[str] = set()

    def blob(data: bytes) -> bytes:
        new = to_old_names(data, names)
        assert names or not re.search(rb"search\.(run|decide|record)\.", new), "a new module name is left"
        seen.update(_old_names_in(new))
        return new

    def walk(x):
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, str) and re.fullmatch(r"(?:[0-9a-f]{2}){8,}", x) and x.startswith("80"):
            return blob(bytes.fromhex(x)).hex()    # a cloudpickle (protocol 2+ starts with 0x80)
        if isinstance(x, str) and x[:1] in "{[":
            try:
                return json.dumps(walk(json.loads(x)), indent=2)
            except ValueError:
                return x
        return x

    tuner = study_dir / "tuner.pkl"
    tuner.write_bytes(blob(tuner.read_bytes()))
    for state in study_dir.glob("experiment_state-*.json"):
        state.write_text(json.dumps(walk(json.loads(state.read_text()))))
    return seen


def test_a_hex_id_that_looks_like_a_pickle_is_left_as_it_is():
    """An experiment state holds cloudpickled values as hex AND plain hex ids (MLflow run ids:
    32 hex digits, 1 in 256 start with "80"); seen in the suite: a run id "8002d0..." read as a
    pickle stopped a resume. Ids stay as they are; the pickle beside them is migrated."""
    from search.record.migrate import _walk, renames_since
    from search.run.progress import ProgressCallback

    old = to_old_names(pickle.dumps(ProgressCallback, protocol=5)).hex()
    state = {"run_id": "8002d0" + "7" * 26, "other": "80" + "0f" * 15, "trial": {"callback": old}}
    out = _walk(json.loads(json.dumps(state)), renames_since(0))
    assert out["run_id"] == state["run_id"] and out["other"] == state["other"]
    assert pickle.loads(bytes.fromhex(out["trial"]["callback"])) is ProgressCallback
