"""trainer/ must run without Ray, Optuna or MLflow (e.g. on a bare GPU machine)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys
for name in ("ray", "mlflow", "optuna"):
    sys.modules[name] = None          # any import of them now raises ImportError
import trainer.__main__, trainer.loop, trainer.data.synthetic, trainer.metrics, trainer.modulation
import runpy
sys.argv = ["bench_trainer.py", "--help"]
try:
    runpy.run_path("benchmarks/bench_trainer.py", run_name="__main__")
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("isolated-ok")
"""


def test_trainer_imports_no_ray_mlflow_or_optuna():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "isolated-ok" in out.stdout
