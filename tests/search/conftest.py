"""One Ray for the whole tests/search session, one small generated dataset, one trainer cache."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    os.environ["MULTIFAIR_CACHE"] = str(path)   # before ray.init: Ray workers inherit it
    return path


@pytest.fixture(scope="session")
def ray_session(cache_dir):
    from search.run.embedded_ray import local_ray

    with local_ray(num_cpus=2):     # loopback only, as search --local
        yield


@pytest.fixture(scope="session")
def data_root(dataset, cache_dir):
    """The search session's generated FairVision (tests/conftest.py: "search")."""
    return str(dataset("search"))


@pytest.fixture(scope="session")
def search_config(data_root):
    """SearchConfig factory: tiny preset, generated data, sqlite store under `tmp_path`."""
    from search.runner import SearchConfig

    def make(tmp_path, **kw):
        fields = dict(dataset="fairvision", attribute="gender", preset="tiny", data_root=data_root,
                      num_samples=4, max_epochs=3, grace_period=1, reduction_factor=2,
                      max_concurrent=2, cpus_per_trial=1, max_failures=1,
                      storage_path=str(tmp_path / "results"), log_best_model=True, verbose=0,
                      tracking_uri="sqlite:///" + str(tmp_path / "mlflow.db"),
                      finalists=0, figures=False)   # the confirmation stage has its own test
        fields.update(kw)
        return SearchConfig(**fields)

    return make


@pytest.fixture(scope="session")
def decided(ray_session, search_config, tmp_path_factory):
    """One FairVision Pareto search through the confirmation, the paired test, figures and
    registration (3 trials x 2 epochs, 1 finalist, 2 seeds; champion "multifair-test"): shared by
    the deployment tests (decide/test_deploy.py) and the served champion's (decide/test_pyfunc_serve.py)."""
    from search.runner import run_search

    tmp = tmp_path_factory.mktemp("deploy")
    scfg = search_config(tmp, num_samples=3, max_epochs=2, grace_period=1, objective="pareto",
                         finalists=1, confirm_seeds=2, figures=True, register_name="multifair-test")
    return scfg, run_search(scfg)


def subprocess_env() -> dict:
    """Environment for running an entry script: the project importable as if installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="session")
def study(ray_session, search_config, tmp_path_factory):
    """One real search shared by the MLflow, relog and analysis tests: 5 trials x 3 epochs."""
    from search.runner import run_search

    scfg = search_config(tmp_path_factory.mktemp("study"), num_samples=5)
    return scfg, run_search(scfg)


def study_runs(uri: str):
    """(client, parent runs, child runs) of the multifair experiment in a store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.search_experiments(filter_string="name LIKE 'multifair-%'")[0]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    children = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    return client, parents, children


RAY_FIXTURES = {"ray_session", "study"}   # fixtures that start Ray (and a search)


def pytest_collection_modifyitems(config, items):
    """A test that starts Ray must be marked slow, or `make test-fast` would start it."""
    unmarked = [i.nodeid for i in items if RAY_FIXTURES & set(getattr(i, "fixturenames", ()))
                and i.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests start Ray without @pytest.mark.slow: " + ", ".join(unmarked))
