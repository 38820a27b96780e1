"""How long the search's command lines take to start: this tree against a baseline commit, each
command run in a fresh interpreter, the two trees interleaved, median of --repeats.

    python benchmarks/import_time.py --baseline 701e612 [--repeats 5] [--out FILE.json]

Commands: `import search.runner`; parse the flags into a SearchConfig (what an entry script does
before it searches); an entry script's --help; `python -m search sweep --help` and
`python -m search relog --help` (side commands). The baseline's search/ and trainer/ are taken
with `git archive` into a temporary folder and put first on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import search.runner": ["-c", "import search.runner"],
    "parse flags -> SearchConfig": ["-c", "from search.runner import parse_args; parse_args('fairvision', 'gender', None, [])"],
    "fairvision_gender.py --help": ["search/fairvision_gender.py", "--help"],
    "python -m search sweep --help": ["-m", "search", "sweep", "--help"],
    "python -m search relog --help": ["-m", "search", "relog", "--help"],
}


def seconds(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="commit to compare against")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", a.baseline, "search", "trainer"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {"baseline": Path(tmp), "this tree": ROOT}
        times = {name: {tree: [] for tree in trees} for name in COMMANDS}
        for _ in range(a.repeats):
            for name, args in COMMANDS.items():
                for tree, path in trees.items():   # interleaved: both trees see the same machine load
                    times[name][tree].append(seconds(path, args))
    load = os.getloadavg()[0]
    print(f"median of {a.repeats} fresh interpreters, s (1-min load average at the end {load:.1f}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'command':34s} {'baseline':>9s} {'this tree':>10s}")
    for name, by_tree in times.items():
        print(f"{name:34s} {statistics.median(by_tree['baseline']):9.2f} {statistics.median(by_tree['this tree']):10.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"baseline": a.baseline, "repeats": a.repeats, "load_average": load,
                                           "seconds": times}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
