"""Are the installed packages exactly pyproject.toml's pins? Run where the project was installed
(the image build, cluster/kuberay/Dockerfile; any venv): prints one line per package that differs
and exits 1, or one line saying how many pins hold.

    python cluster/installed_pins.py [pyproject.toml] [EXTRA ...]     # default extras: search
"""
from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def pins(pyproject: Path, extras: list[str]) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = project["dependencies"] + [s for e in extras for s in project["optional-dependencies"][e]]
    out = {}
    for spec in specs:
        m = PIN.match(spec)
        if not m:
            raise SystemExit(f"{pyproject}: {spec!r} is not pinned with ==")
        out[m.group(1)] = m.group(3)
    return out


def mismatches(wanted: dict[str, str]) -> list[str]:
    out = []
    for name, version in wanted.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            out.append(f"{name}: pinned {version}, installed {have or 'nothing'}")
    return out


def main(argv: list[str]) -> int:
    pyproject = Path(argv[0]) if argv else Path("pyproject.toml")
    wanted = pins(pyproject, argv[1:] or ["search"])
    bad = mismatches(wanted)
    for line in bad:
        print(line)
    if not bad:
        print(f"{len(wanted)} pins of {pyproject} installed")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
