"""The study format's versions, and the one-time migration `--resume` runs on an older study.

Tune pickles the trainable, the callbacks, the searcher and the scheduler by module path (a
study's `tuner.pkl` and the cloudpickled values inside `experiment_state-*.json`). When a module
moves, a saved study names a module that no longer exists, and `Tuner.restore` fails on import.
Instead of keeping the old names importable forever (an import hook), each move bumps FORMAT and
adds its renames here; resuming an older study rewrites the module names in its pickles ONCE, in
place, and writes the new format into `study.json`.

Formats:
  0  flat search/ modules (`search.trainable`, `search.tracking`, ...), before 2026-12-06
  1  search/{run,decide,record}/ layout; `study.json` carried no format number
  2  `study.json` carries `"format"`; the module names of format 1
  3  the layers point one way: space and expected_max in record/, remote in run/, sweep on top
  4  MLflowTrialCallback in its own module (record/trial_callback.py); StudyTracker stays in
     record/tracking.py
Format 0 and 1 studies both lack the number, so both take every rename (a rename of a name the
pickle does not hold changes nothing). A rename is of a whole module (`search.run.space`) or of
one class that left its module (`search.record.tracking:MLflowTrialCallback`, the module and the
class's name joined by a colon): only that class's references move, its old module's other
classes stay.

Cost: one read and one write of `tuner.pkl` and of each experiment state of the study's Tune
folders (the search and its `-confirm` stage): about 1 MB for a 100-trial study, once.
"""
from __future__ import annotations

import json
import pickletools
import re

import pyarrow.fs

from search.record import study
from search.record.study import FORMAT, study_format

_STAGES = {   # format 0 -> 1: the modules that moved into a stage folder
    "run": ("trainable", "tuning", "space", "objectives", "progress", "resume", "embedded_ray",
            "reaper", "mo_asha", "warm_start", "cluster_size", "storage", "sweep", "dataprep"),
    "decide": ("confirm", "paired", "registry", "mlmodel", "remote"),
    "record": ("study", "tracking", "relog", "figures", "report", "summary", "analysis"),
}
FLAT_TO_STAGE = {f"search.{m}": f"search.{stage}.{m}" for stage, mods in _STAGES.items() for m in mods}
MOVED_DOWN = {"search.run.space": "search.record.space", "search.decide.expected_max": "search.record.expected_max",
              "search.decide.remote": "search.run.remote", "search.run.sweep": "search.sweep"}
ROOMS = {"search.record.tracking:MLflowTrialCallback": "search.record.trial_callback:MLflowTrialCallback"}
RENAMES = {1: FLAT_TO_STAGE, 2: {}, 3: MOVED_DOWN, 4: ROOMS}   # format reached -> renames that reach it


class MigrationError(ValueError):
    """A study saved by a newer version of the code than this one."""


def renames_since(version: int) -> dict[str, str]:
    """Every rename from `version` to FORMAT, composed (a -> b then b -> c gives a -> c): module
    renames, and class renames (`module:Class`) under every older name of their module."""
    out: dict[str, str] = {}
    for step in range(max(version, 0) + 1, FORMAT + 1):
        for old, new in RENAMES[step].items():
            if ":" in old:   # one class left its module: also under the module's older names
                module, cls = old.split(":")
                out.update({f"{k}:{cls}": new for k, v in list(out.items()) if v == module})
            else:
                out = {k: (new + v[len(old):] if v == old or v.startswith(old + ":") else v)
                       for k, v in out.items()}
            out.setdefault(old, new)
    return out


# -- one pickle -------------------------------------------------------------------------------
def _renamed(name: str, renames: dict[str, str]) -> str | None:
    for old, new in renames.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


_STRINGS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE")
_MEMO_PUTS = ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")
_MEMO_GETS = ("GET", "BINGET", "LONG_BINGET")


def _moved_class(module, name, classes: dict[str, str]) -> str | None:
    """The new module of class `name` of `module` when it left it, else None."""
    new = classes.get(f"{module}:{name}") if isinstance(module, str) and isinstance(name, str) else None
    return new.split(":")[0] if new is not None else None


def _binunicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw   # BINUNICODE: every protocol >= 1


def rename_modules(data: bytes, renames: dict[str, str]) -> bytes:
    """`data` (one pickle, any protocol) with every module name in `renames` rewritten, opcode by
    opcode: the strings STACK_GLOBAL reads and GLOBAL's module. FRAME opcodes are dropped (they
    are optional; their lengths would change); memo indices are untouched.

    A class that left its module (a `module:Class` rename) is found at its STACK_GLOBAL, whose
    two strings (the module's often a memo reference shared with the module's other classes) are
    popped and pushed again with the new module, so the memo and the other classes keep theirs."""
    modules = {k: v for k, v in renames.items() if ":" not in k}
    classes = {k: v for k, v in renames.items() if ":" in k}
    out, memo, pushed = bytearray(), {}, []   # pushed: the strings (or None) pushed, newest last
    ops = list(pickletools.genops(data))
    ends = [pos for _, _, pos in ops[1:]] + [len(data)]
    for (op, arg, pos), end in zip(ops, ends):
        if op.name == "FRAME":
            continue
        if op.name in _MEMO_PUTS:   # stores the stack's top, pushes nothing
            memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
            out += data[pos:end]
            continue
        module, name = pushed[-2:] if len(pushed) >= 2 else (None, None)   # STACK_GLOBAL's operands
        moved = _moved_class(module, name, classes) if op.name == "STACK_GLOBAL" else None
        pushed.append(arg if op.name in _STRINGS else memo.get(arg) if op.name in _MEMO_GETS else None)
        new = _renamed(arg, modules) if op.name in _STRINGS[:3] else None
        if new is not None:
            out += _binunicode(new)
        elif moved is not None:   # POP POP, the new module and the name, STACK_GLOBAL
            out += b"00" + _binunicode(moved) + _binunicode(name) + b"\x93"
        elif op.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            new = _moved_class(module, name, classes) or _renamed(module, modules) or module
            out += b"c" + f"{new}\n{name}\n".encode()
        else:
            out += data[pos:end]
    return bytes(out)


_PICKLE_HEX = re.compile(r"(?:[0-9a-f]{2}){8,}")
_PROTOCOLS = ("02", "03", "04", "05")   # PROTO's argument: cloudpickle writes 2 or more


def _walk(value, renames):
    """An experiment state's JSON with the module names inside its cloudpickled values (hex
    strings, protocol 2+: they start with 0x80) and nested JSON strings rewritten."""
    if isinstance(value, dict):
        return {k: _walk(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, renames) for v in value]
    if isinstance(value, str) and value[:2] == "80" and value[2:4] in _PROTOCOLS and _PICKLE_HEX.fullmatch(value):
        try:   # a hex id that merely looks like one (an MLflow run id starting "8002...") stays as it is
            return rename_modules(bytes.fromhex(value), renames).hex()
        except (ValueError, IndexError, KeyError):   # not a pickle (genops, the operand stack)
            return value
    if isinstance(value, str) and value[:1] in "{[":
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        return json.dumps(_walk(inner, renames), indent=2)
    return value


# -- a study --------------------------------------------------------------------------------
def _rewrite(fs, path: str, transform) -> None:
    with fs.open_input_stream(path) as f:
        data = f.read()
    new = transform(data)
    if new != data:
        with fs.open_output_stream(path) as f:
            f.write(new)


def migrate_tune_folder(fs, path: str, renames: dict[str, str]) -> int:
    """Rename modules in a Tune folder's tuner.pkl and experiment states; the files rewritten."""
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    files = [i for i in listing if i.type == pyarrow.fs.FileType.File and
             (i.base_name == "tuner.pkl" or (i.base_name.startswith("experiment_state-")
                                             and i.base_name.endswith(".json")))]
    for info in files:
        if info.base_name == "tuner.pkl":
            _rewrite(fs, info.path, lambda d: rename_modules(d, renames))
        else:
            _rewrite(fs, info.path, lambda d: json.dumps(_walk(json.loads(d), renames)).encode())
    return len(files)


def migrate_study(storage_path: str, name: str) -> int | None:
    """Bring the study `<storage-path>/<name>` (and its `-confirm` stage) to FORMAT before Tune
    restores it; returns the format it had (None: already current). A study from a newer code
    version is refused: this code cannot know its module names."""
    study_dir = study.stage_path(storage_path, name)
    meta = study.read_study(study_dir)
    version = study_format(meta)
    if version == FORMAT:
        return None
    if version > FORMAT:
        raise MigrationError(f"{study_dir}: study format {version} was written by a newer "
                             f"multifair-tune (this one reads up to {FORMAT}): update the code")
    renames = renames_since(version)
    for stage in (name, f"{name}-{study.CONFIRM}"):
        fs, path = study.study_fs(study.stage_path(storage_path, stage))
        migrate_tune_folder(fs, path, renames)
    study.write_json(study_dir, study.STUDY_FILE, {**meta, "format": FORMAT})   # last: a crash re-runs it
    return version
