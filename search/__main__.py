"""python -m search COMMAND [args]: the service's side commands on one command line (each
COMMAND's own --help lists its flags). The entry scripts (search/fairvision_gender.py, ...) run
searches; these read, decide on and re-log what searches left."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {   # command -> (module whose main(argv) runs it, what it does)
    "decide": ("search.decide.__main__", "the deployment rule on any results table (CSV)"),
    "analyze": ("search.record.analysis", "importances, sensitivity and what a study deployed (a report)"),
    "sweep": ("search.sweep", "the paper's one-at-a-time sweeps around a study's best"),
    "relog": ("search.record.relog", "re-log a study folder to an MLflow store"),
    "register": ("search.decide.champion", "register a finished study's champion (the decision's; never a second pick)"),
    "score": ("search.decide.registry", "score data with a registered model (predictions to a local file)"),
    "storage": ("search.run.storage", "delete the exact-resume state of a study's ended trials"),
    "dataprep": ("search.run.dataprep", "prepare a dataset's shards once, on the cluster"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "usage: python -m search COMMAND [args]   (COMMAND --help for its flags)\n\ncommands:\n" + \
        "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv[0] = f"python -m search {command}"   # argparse's prog in usage lines and errors
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
