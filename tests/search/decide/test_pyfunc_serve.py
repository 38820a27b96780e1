"""The champion deploys the MLflow way (issue 22, item 6): a whole search (FairVision: SLO + OCT,
the deployment tests' search; FairVLMed: fundus + note, run by its entry script) registers a
pyfunc model, and
`mlflow.pyfunc.load_model("models:/<name>@champion").predict(df)` and `mlflow models serve
--env-manager local` (a real HTTP POST /invocations on 127.0.0.1) score what a clinic has: images
as arrays or npz paths, the note as text, a modality absent. Every probability is checked
against the trainer's own scoring of the same samples (the checkpoint's weights, the trainer's
cache and inference path); an absent modality against the presence-mask contract
(docs/architecture.md: removing m = batch["present"][m] False). Bad requests to the served
model (a path outside the allowed folder, a link out of it, an empty row, a 2 x 2 image, NaN,
text as an image) each answer a 400 naming the row and column, without a stack trace. Slow: one
search per dataset, shared, and one server per model (about 3-4 minutes on 2 cores)."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.search.conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow
SCRIPTS = {"fairvision": "fairvision_gender.py", "fairvlmed": "fairclip_gender.py"}


def run_search(dataset: str, data_root: str, tmp: Path, *extra) -> dict:
    """The entry script, --local, tiny preset, through confirmation and registration."""
    name = f"mf-pyfunc-{dataset}"
    uri = "sqlite:///" + str(tmp / "mlflow.db")
    args = ["--local", "--num-cpus", "2", "--preset", "tiny", "--data-root", data_root,
            "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2", "--max-concurrent", "2",
            "--cpus-per-trial", "1", "--finalists", "1", "--confirm-seeds", "2", "--no-figures",
            "--storage-path", str(tmp / "results"), "--tracking-uri", uri, "--register-name", name,
            *extra]
    out = subprocess.run([sys.executable, str(REPO / "search" / SCRIPTS[dataset]), *args],
                         env=subprocess_env(), capture_output=True, text=True, timeout=900, cwd=tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {**registered(uri, name, data_root, tmp), "log": out.stdout}


def registered(uri: str, name: str, data_root: str, tmp: Path) -> dict:
    """The champion `name` of the store `uri`, downloaded under `tmp`, with its trainer config."""
    import mlflow

    from trainer.checkpoint import read_manifest
    from trainer.config import config_from_dict

    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion",
                                                     dst_path=str(tmp / "model")))
    cfg = config_from_dict({**read_manifest(local / "artifacts" / "checkpoint")["config"],
                            "data_root": data_root, "pretrained": False})
    site = tmp / "site"   # the test's own files the model may read, beside the data root
    site.mkdir()
    return {"uri": uri, "name": name, "model": f"models:/{name}@champion", "local": local, "cfg": cfg,
            "data_root": data_root, "tmp": tmp, "site": site}


@pytest.fixture(scope="module")
def fv(decided, data_root, tmp_path_factory):
    """The FairVision champion of the deployment tests' search (tests/search/conftest.py)."""
    scfg, _ = decided
    return registered(scfg.tracking_uri, "multifair-test", data_root, tmp_path_factory.mktemp("pyfunc-fv"))


@pytest.fixture(scope="module")
def vl(cache_dir, dataset, tmp_path_factory):
    return run_search("fairvlmed", str(dataset("vl")), tmp_path_factory.mktemp("pyfunc-vl"),
                      "--set", "batch_size=8")


def trainer_probabilities(run: dict, absent: dict[str, list[int]] | None = None) -> np.ndarray:
    """The trainer's own scoring of the whole test split: the logged checkpoint's weights
    (trainer.loop.load_model), the trainer's cache (build_datasets) and eval transforms;
    `absent`: {modality: test rows} marked absent through batch["present"] (the contract)."""
    import torch

    from trainer.data import build_datasets
    from trainer.data.transforms import batch_transform
    from trainer.loop import load_model

    model = load_model(run["local"] / "artifacts" / "checkpoint")
    ds = build_datasets(run["cfg"])["test"]
    batch = ds.get_batch(np.arange(len(ds)))
    present = {m: torch.ones(len(ds), dtype=torch.bool) for m in run["cfg"].resolved_modalities()}
    for m, rows in (absent or {}).items():
        present[m][rows] = False
    batch["present"] = present
    with torch.no_grad():
        return model(batch_transform(batch, train=False)).sigmoid().numpy()


def allowed_roots(run: dict) -> list[str]:
    """The folders the model may read paths from: the run's data root and its site folder."""
    return [run["data_root"], str(run["site"])]


def champion(run: dict):
    """mlflow.pyfunc.load_model("models:/<name>@champion") from the run's store, allowed to
    read the run's folders (model_config allowed_root)."""
    import mlflow

    mlflow.set_tracking_uri(run["uri"])
    return mlflow.pyfunc.load_model(run["model"], model_config={"allowed_root": allowed_roots(run)})


def split_files(run: dict) -> list[Path]:
    """The test split's npz files, in the trainer's order (every sample's gender is known)."""
    from trainer.data import LAYOUTS

    files = sorted(LAYOUTS[run["cfg"].dataset].split_dir(run["data_root"], "test").glob("data_*.npz"))
    assert files, run["data_root"]
    return files


def read_npz(path: Path, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z[key]


def without_key(path: Path, key: str, out: Path) -> Path:
    """A copy of a released-format npz without `key`: a patient without that modality."""
    with np.load(path, allow_pickle=False) as z:
        np.savez(out, **{k: z[k] for k in z.files if k != key})
    return out


# -- FairVision: SLO + OCT -------------------------------------------------------------------
def fairvision_frame(run: dict):
    """Rows 0-1 arrays, rows 2-3 npz paths, row 4 arrays without the OCT (None), row 5 an npz
    path whose file lacks the OCT key: (DataFrame, test rows without OCT)."""
    import pandas as pd

    files = split_files(run)
    rows = [{"slo": read_npz(f, "slo_fundus"), "oct": read_npz(f, "oct_bscans")} for f in files[:2]]
    rows += [{"slo": str(f), "oct": str(f)} for f in files[2:4]]
    rows.append({"slo": read_npz(files[4], "slo_fundus"), "oct": None})
    no_oct = without_key(files[5], "oct_bscans", run["site"] / "no_oct.npz")
    rows.append({"slo": str(no_oct), "oct": str(no_oct)})
    return pd.DataFrame(rows), [4, 5]


def test_fairvision_pyfunc_predicts_arrays_paths_and_a_missing_oct_as_the_trainer_scores(fv):
    import torch
    from safetensors.torch import load_file

    model = champion(fv)
    sig = model.metadata.signature
    assert [(c.name, c.required) for c in sig.inputs.inputs] == [("slo", False), ("oct", False)]
    assert sig.outputs.input_names() == ["probability", "modalities_used"]
    names = {p.name for p in fv["local"].rglob("*")}
    assert not any(n.endswith((".pkl", ".pth", ".pt")) for n in names), names   # nothing pickled
    weights = load_file(str(fv["local"] / "artifacts" / "checkpoint" / "best_model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in weights.values() if t.is_floating_point())
    assert (fv["local"] / "code" / "trainer" / "data" / "transforms.py").is_file()

    # load-time settings reach the model (MLflow passes only keys the logged model declares)
    assert model.model_config == {"device": "cpu", "batch_size": None, "allowed_root": allowed_roots(fv)}
    df, no_oct = fairvision_frame(fv)
    got = model.predict(df)
    assert got["modalities_used"].tolist() == ["slo,oct"] * 4 + ["slo"] * 2
    complete = trainer_probabilities(fv)
    np.testing.assert_allclose(got["probability"][:4], complete[:4], rtol=1e-5, atol=1e-6)
    assert got["probability"][0] != got["probability"][1]        # not one constant answer
    missing = trainer_probabilities(fv, {"oct": no_oct})
    np.testing.assert_allclose(got["probability"][4:], missing[4:6], rtol=1e-5, atol=1e-6)
    # the logged example: synthetic (32 x 32 images, the smallest the model takes, not the
    # data's size), two rows, the second without its OCT
    example = json.loads((fv["local"] / "input_example.json").read_text())
    assert len(example["data"]) == 2 and example["data"][1][1] is None
    assert np.asarray(example["data"][0][0]).shape == (32, 32)
    assert np.asarray(example["data"][0][0]).shape != read_npz(split_files(fv)[0], "slo_fundus").shape


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(run: dict, log: Path):
    """`mlflow models serve --env-manager local` of the champion on a free loopback port, from
    a folder without the project and with no PYTHONPATH (the trainer comes from the model's
    code_paths), MULTIFAIR_ALLOWED_ROOT the run's folders; /ping waited for; yields its URL;
    then the server's process group stopped and checked gone."""
    import psutil

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": run["uri"], "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           "MULTIFAIR_ALLOWED_ROOT": os.pathsep.join(allowed_roots(run)),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    env.pop("PYTHONPATH", None)
    cwd = run["tmp"] / "serve"
    cwd.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", run["model"],
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                                env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no /ping answer in 180 s: " + log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        group = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == proc.pid]
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(group, timeout=30)
        for p in alive:
            p.kill()
        assert not alive, f"server processes outlived SIGTERM: {[p.pid for p in alive]}"


def post(url: str, body: dict) -> tuple[int, dict]:
    """One POST /invocations: (HTTP status, the JSON answer)."""
    req = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, {"text": text}


def predictions(url: str, body: dict) -> list[dict]:
    status, answer = post(url, body)
    assert status == 200, f"HTTP {status}: {str(answer)[:2000]}"
    return answer["predictions"]


@pytest.fixture(scope="module")
def fv_server(fv):
    """The FairVision champion served once for the module's HTTP tests."""
    with served(fv, fv["tmp"] / "serve.log") as url:
        yield url


def _pgid(pid: int):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def records(df) -> list[dict]:
    """A DataFrame as JSON records: arrays as nested lists, absent as null."""
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}
            for row in df.to_dict(orient="records")]


def test_served_fairvision_answers_an_http_request_with_arrays_paths_and_a_missing_oct(fv, fv_server):
    df, _ = fairvision_frame(fv)
    answer = predictions(fv_server, {"dataframe_records": records(df)})
    local = champion(fv).predict(df)
    assert [a["modalities_used"] for a in answer] == local["modalities_used"].tolist()
    np.testing.assert_allclose([a["probability"] for a in answer], local["probability"], rtol=1e-6)


def test_loaded_model_runs_its_own_trainer_copy_without_the_project_on_the_path(fv):
    """A fresh interpreter in an empty folder with no PYTHONPATH: `trainer` is the model's
    code/trainer (code_paths), not the caller's checkout; the logged example predicts."""
    code = ("import json, mlflow; m = mlflow.pyfunc.load_model(%r); "
            "import trainer; print(json.dumps([trainer.__file__, "
            "m.predict(m.input_example)['modalities_used'].tolist()]))" % fv["model"])
    env = {**os.environ, "MLFLOW_TRACKING_URI": fv["uri"], "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("PYTHONPATH", None)
    empty = fv["tmp"] / "empty"
    empty.mkdir(exist_ok=True)
    out = subprocess.run([sys.executable, "-c", code],
                         env=env, cwd=empty, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where, used = json.loads(out.stdout.strip().splitlines()[-1])
    assert f"{os.sep}code{os.sep}trainer{os.sep}" in where and not where.startswith(str(REPO)), where
    assert used == ["slo,oct", "slo"]


def test_scoring_command_scores_patients_without_an_oct_and_names_what_each_used(fv, tmp_path, capsys):
    """search.decide.registry's scoring command on a copy of the test split where two patients' npz
    lack the OCT key: the CSV says slo for them, slo,oct for the rest; the scores equal the
    trainer's own (contract for the absent OCT); on the full split the AUC is the logged one."""
    import mlflow

    from search.decide.registry import main
    from trainer.data import LAYOUTS
    from trainer.metrics import roc_auc_score

    files = split_files(fv)
    root = tmp_path / "site"
    split = root / LAYOUTS["fairvision"].split_dir(fv["data_root"], "test").relative_to(
        LAYOUTS["fairvision"].base_dir(fv["data_root"]))
    split.mkdir(parents=True)
    lacking = [1, 3]
    for i, f in enumerate(files):
        if i in lacking:
            without_key(f, "oct_bscans", split / f.name)
        else:
            shutil.copy2(f, split / f.name)
    mlflow.set_tracking_uri(fv["uri"])
    out = tmp_path / "scores.csv"
    assert main(["--model", fv["model"], "--tracking-uri", fv["uri"], "--data-root", str(root),
                 "--split", "test", "--out", str(out)]) == 0
    assert f"modalities used: slo,oct {len(files) - 2}, slo 2" in capsys.readouterr().out
    rows = read_csv(out)
    assert [r["file"] for r in rows] == [f.name for f in files]
    assert [r["modalities_used"] for r in rows] == ["slo" if i in lacking else "slo,oct"
                                                    for i in range(len(files))]
    expected = trainer_probabilities(fv, {"oct": lacking})
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected, rtol=1e-5, atol=1e-6)
    # the complete split: the AUC the decision logged for the champion (sklearn on the file)
    assert main(["--model", fv["model"], "--tracking-uri", fv["uri"], "--data-root", fv["data_root"],
                 "--split", "test", "--out", str(out)]) == 0
    rows = read_csv(out)
    version = mlflow.MlflowClient(fv["uri"]).get_model_version_by_alias(fv["name"], "champion")
    assert roc_auc_score([int(r["label"]) for r in rows], [float(r["probability"]) for r in rows]) \
        == pytest.approx(float(version.tags["test.auc"]), abs=1e-6)
    # --without oct: every patient scored on the SLO alone, as the trainer with the OCT removed
    assert main(["--model", fv["model"], "--tracking-uri", fv["uri"], "--data-root", fv["data_root"],
                 "--split", "test", "--out", str(out), "--without", "oct"]) == 0
    rows = read_csv(out)
    assert {r["modalities_used"] for r in rows} == {"slo"}
    np.testing.assert_allclose([float(r["probability"]) for r in rows],
                               trainer_probabilities(fv, {"oct": list(range(len(files)))}), rtol=1e-5, atol=1e-6)


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bad_input_is_one_clear_line(fv):
    model = champion(fv)
    with pytest.raises(Exception, match=r"row 0 has none of the model's modalities \(slo, oct\)"):
        model.predict({"slo": [None], "oct": [None]})
    with pytest.raises(Exception, match=r"row 0, column 'oct': text that is not an .npz or .npy path"):
        model.predict({"slo": [None], "oct": ["/tmp/scan.png"]})
    with pytest.raises(Exception, match=r"row 0, column 'slo'.*constant"):
        model.predict({"slo": [np.zeros((8, 8))], "oct": [None]})


def test_served_refusals_are_a_400_naming_row_and_column_and_open_nothing_outside(fv, fv_server,
                                                                                tmp_path):
    """Each bad request answers HTTP 400 with MLflow's JSON error (INVALID_PARAMETER_VALUE) whose
    message ends with the model's line, and no stack trace. The files outside the allowed
    folders are FIFOs: opening one for reading would block the server until the client's
    timeout, so a prompt 400 shows that the server never opened it."""
    files = split_files(fv)
    slo = read_npz(files[0], "slo_fundus").tolist()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "secret.npy")
    os.mkfifo(outside / "secret.npz")
    (fv["site"] / "link.npz").symlink_to(outside / "secret.npz")
    not_inside = "the path is not inside the folder this model may read"
    cases = [
        ({"slo": str(outside / "secret.npy")}, f"row 0, column 'slo': {not_inside}"),
        ({"slo": str(outside / "absent.npz")}, f"row 0, column 'slo': {not_inside}"),
        ({"slo": str(fv["site"] / os.path.relpath(outside / "secret.npz", fv["site"]))},   # ../..
         f"row 0, column 'slo': {not_inside}"),
        ({"slo": str(fv["site"] / "link.npz")}, f"row 0, column 'slo': {not_inside}"),
        ({}, "row 0 has none of the model's modalities (slo, oct)"),
        ({"slo": [[0, 1], [2, 3]]}, "row 0, column 'slo': key 'slo_fundus' is 2 x 2 pixels, under "
                                    "the minimum 32 x 32"),
        ({"slo": [[float("nan")] * 64] * 64}, "row 0, column 'slo': key 'slo_fundus' has 4096 of 4096 "
                                              "values NaN or infinite"),
        ({"slo": "hello"}, "row 0, column 'slo': text that is not an .npz or .npy path"),
        ({"oct": slo}, "row 0, column 'oct': key 'oct_bscans' has shape (64, 64) (rank 2)"),
    ]
    for row, expected in cases:
        body = {"dataframe_records": [{"slo": str(files[0]), "oct": str(files[0])}, row]}
        expected = expected.replace("row 0", "row 1")   # the second row of the request is named
        started = time.time()
        status, answer = post(fv_server, body)
        assert time.time() - started < 60, row   # a FIFO opened would hang until the timeout
        assert status == 400 and answer.get("error_code") == "INVALID_PARAMETER_VALUE", (status, answer)
        assert expected in answer["message"], (expected, answer)
        assert answer["message"].endswith("nothing was scored (a request is scored whole: fix or "
                                          "remove that row)"), answer["message"]
        text = json.dumps(answer)
        assert "stack_trace" not in answer and "Traceback" not in text, text[:2000]
    # the case: one empty row alone (it answered 200 with no prediction); MLflow's
    # schema step hands the model 0 rows and 0 columns, so the message names the columns
    for rows in ([{}], [{"SLO": str(files[0])}]):
        status, answer = post(fv_server, {"dataframe_records": rows})
        assert status == 400 and answer["message"].endswith(
            "input: none of the model's columns (slo, oct) is in the request: every row needs "
            "one"), (status, answer)
        assert "stack_trace" not in answer
    # the same good row alone is scored: the refusals were about the bad rows
    assert len(predictions(fv_server, {"dataframe_records": [{"slo": str(files[0]), "oct": str(files[0])}]})) == 1


# -- FairVLMed: fundus + clinical note ------------------------------------------------------------
def fairvlmed_frame(run: dict):
    """Rows 0-1 fundus arrays + note text, rows 2-3 npz paths + text, row 4 without the note
    (None), row 5 a blank note: (DataFrame, test rows without the note)."""
    import pandas as pd

    files = split_files(run)
    note = lambda f: str(read_npz(f, "note").reshape(-1)[0])   # noqa: E731  (note_source "note")
    rows = [{"slo": read_npz(f, "slo_fundus"), "note": note(f)} for f in files[:2]]
    rows += [{"slo": str(f), "note": note(f)} for f in files[2:4]]
    rows.append({"slo": read_npz(files[4], "slo_fundus"), "note": None})
    rows.append({"slo": str(files[5]), "note": "  "})
    return pd.DataFrame(rows), [4, 5]


def test_fairvlmed_pyfunc_takes_note_text_and_a_missing_note_as_the_trainer_scores(vl):
    assert vl["cfg"].note_source == "note"
    model = champion(vl)
    sig = model.metadata.signature
    assert [(c.name, c.required) for c in sig.inputs.inputs] == [("slo", False), ("note", False)]
    assert (vl["local"] / "artifacts" / "tokenizer").is_dir()   # the model's own tokenizer
    df, no_note = fairvlmed_frame(vl)
    got = model.predict(df)
    assert got["modalities_used"].tolist() == ["slo,note"] * 4 + ["slo"] * 2
    np.testing.assert_allclose(got["probability"][:4], trainer_probabilities(vl)[:4], rtol=1e-5, atol=1e-6)
    missing = trainer_probabilities(vl, {"note": no_note})
    np.testing.assert_allclose(got["probability"][4:], missing[4:6], rtol=1e-5, atol=1e-6)
    # a text the generator wrote for another patient changes the score: the note is read
    other = df.copy()
    other.loc[0, "note"] = df.loc[2, "note"]
    assert model.predict(other)["probability"][0] != got["probability"][0]


def test_the_fairvlmed_champion_is_the_deployed_run_in_bf16_safetensors_and_scores_as_logged(vl, tmp_path):
    """The registered version is the run the decision deployed; the model folder holds the bf16
    safetensors file and no pickle; the registry's scoring command reproduces the logged test AUC
    of the deployed model from it (decision.json)."""
    import mlflow
    import torch
    from mlflow import MlflowClient
    from safetensors.torch import load_file   # the kept file as stored: bf16, no pickle

    from search.decide.registry import main as score_main
    from trainer.metrics import roc_auc_score

    decision = json.loads(next((vl["tmp"] / "results").glob("*/decision.json")).read_text())
    version = MlflowClient(vl["uri"]).get_model_version_by_alias(vl["name"], "champion")
    assert decision["registered"]["uri"] == vl["model"]
    assert version.run_id == decision["deployed_run"]["run_id"]
    assert "python_function" in mlflow.models.get_model_info(vl["model"]).flavors
    assert {"MLmodel", "artifacts", "code"} <= {p.name for p in vl["local"].iterdir()}
    local = vl["local"] / "artifacts" / "checkpoint"
    assert {p.name for p in local.iterdir()} == {"best_model.safetensors", "checkpoint.json"}
    assert not any(p.name.endswith((".pth", ".pkl", ".pt")) for p in vl["local"].rglob("*"))
    floats = [t for t in load_file(str(local / "best_model.safetensors")).values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.bfloat16 for t in floats)

    out = tmp_path / "predictions.csv"
    mlflow.set_tracking_uri(vl["uri"])
    assert score_main(["--model", vl["model"], "--tracking-uri", vl["uri"], "--data-root",
                       vl["data_root"], "--split", "test", "--out", str(out)]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    test = decision["test"]
    logged = test["auc"]["chosen" if test["deployed"] != "baseline" else "baseline"]
    assert roc_auc_score([int(r[1]) for r in rows], [float(r[3]) for r in rows]) == \
        pytest.approx(logged, abs=1e-6)


def test_served_fairvlmed_answers_an_http_request_with_note_text_and_a_missing_note(vl):
    df, _ = fairvlmed_frame(vl)
    with served(vl, vl["tmp"] / "serve.log") as url:
        answer = predictions(url, {"dataframe_records": records(df)})
    local = champion(vl).predict(df)
    assert [a["modalities_used"] for a in answer] == ["slo,note"] * 4 + ["slo"] * 2
    np.testing.assert_allclose([a["probability"] for a in answer], local["probability"], rtol=1e-6)
