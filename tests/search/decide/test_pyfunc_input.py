"""The served champion's input checks without a server (search/decide/pyfunc_model.py): which
paths it may read, which images it refuses, and that a refusal is the MLflow error the scoring
server answers with HTTP 400 naming the row and column. The model part loads a one-epoch tiny
fit through MLflow's own PythonModelContext (no logging, no server): about 15 s on 2 cores.
tests/search/decide/test_pyfunc_serve.py sends the same cases through a real `mlflow models serve`."""
import os

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from search.decide.pyfunc_model import (ALLOWED_ROOT_ENV, MIN_IMAGE_SIDE, MultiFairPyfunc,
                                        PathPolicy, check_image, read_image)

OUTSIDE = "the path is not inside the folder this model may read"


def refused(call, *args) -> str:
    """The message of the refusal `call(*args)` raises; it must be a 400, not a 500."""
    with pytest.raises(MlflowException) as caught:
        call(*args)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert caught.value.get_http_status_code() == 400
    return caught.value.message


@pytest.fixture
def folders(tmp_path):
    """An allowed folder with an npz and an npy inside; a private folder beside it with an npz;
    links inside the allowed folder: one to the private npz, one to a folder outside."""
    allowed, private = tmp_path / "allowed", tmp_path / "private"
    allowed.mkdir(), private.mkdir()
    rng = np.random.default_rng(0)
    slo = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    np.savez(allowed / "p1.npz", slo_fundus=slo)
    np.save(allowed / "p1.npy", slo)
    np.savez(private / "secret.npz", slo_fundus=slo)
    (allowed / "link.npz").symlink_to(private / "secret.npz")
    (allowed / "out").symlink_to(private, target_is_directory=True)
    (allowed / "loop.npz").symlink_to(allowed / "loop.npz")
    return allowed, private, slo


def test_paths_are_read_only_inside_the_allowed_folder(folders):
    allowed, private, slo = folders
    policy = PathPolicy([allowed])
    np.testing.assert_array_equal(read_image(str(allowed / "p1.npz"), "slo", "row 0", policy), slo)
    np.testing.assert_array_equal(read_image(str(allowed / "sub" / ".." / "p1.npy"), "slo", "row 0", policy), slo)
    assert read_image(str(allowed / "p1.npz"), "oct", "row 0", policy) is None   # key absent
    escapes = [private / "secret.npz",                          # outside
               allowed / ".." / "private" / "secret.npz",      # `..` out of it
               allowed / "link.npz",                           # a link to a file outside
               allowed / "out" / "secret.npz",                 # through a linked folder
               private / "missing.npz", "/etc/hostname.npy",   # absent files: the same line
               allowed / "loop.npz", "/data/\0.npz"]            # a link loop, a NUL byte
    messages = {refused(read_image, str(p), "slo", "row 4, column 'slo'", policy) for p in escapes}
    assert messages == {f"row 4, column 'slo': {OUTSIDE}"}   # never says whether it exists
    # inside the folder, an absent file is a read error (existence there is the operator's data)
    assert refused(read_image, str(allowed / "p2.npz"), "slo", "row 1, column 'slo'", policy) \
        == "row 1, column 'slo': cannot open npz (key: <archive>): FileNotFoundError"
    assert refused(read_image, str(allowed / "p2.npy"), "slo", "row 1, column 'slo'", policy) \
        == "row 1, column 'slo': cannot read the file (FileNotFoundError)"


def test_no_allowed_folder_refuses_every_path_and_settings_pick_the_folder(folders, monkeypatch):
    allowed, private, _ = folders
    monkeypatch.delenv(ALLOWED_ROOT_ENV, raising=False)
    message = refused(read_image, str(allowed / "p1.npz"), "slo", "row 0, column 'slo'",
                      PathPolicy.from_settings({}))
    assert message.startswith("row 0, column 'slo': this model reads no image paths")
    monkeypatch.setenv(ALLOWED_ROOT_ENV, os.pathsep.join([str(private), str(allowed)]))
    assert PathPolicy.from_settings(None).roots == (private.resolve(), allowed.resolve())
    assert PathPolicy.from_settings({"allowed_root": None}).roots == (private.resolve(), allowed.resolve())
    # model_config wins over the environment, a folder or a list
    assert PathPolicy.from_settings({"allowed_root": str(allowed)}).roots == (allowed.resolve(),)
    assert PathPolicy.from_settings({"allowed_root": [str(private)]}).roots == (private.resolve(),)


def test_text_that_is_not_a_path_is_refused_before_any_file_is_touched(folders):
    policy = PathPolicy([folders[0]])
    for text in ("hello", "/data/p1.png", "[[1, 2], [3, 4]]"):
        assert "text that is not an .npz or .npy path" in refused(read_image, text, "slo", "row 0", policy)


@pytest.mark.parametrize("image, fault", [
    (np.arange(4.0).reshape(2, 2), "is 2 x 2 pixels, under the minimum 32 x 32"),
    (np.arange(31 * 64.0).reshape(31, 64), "is 31 x 64 pixels, under the minimum"),
    (np.arange(64 * 64 * 4.0).reshape(64, 64, 4), "expected (H, W) grey or (H, W, 3) RGB"),
    (np.arange(64.0), "has shape (64,)"),
    (np.full((64, 64), np.nan), "has 4096 of 4096 values NaN or infinite"),
    (np.full((64, 64), 7.0), "is constant"),
    (np.full((64, 64), "a"), "expected numbers"),
])
def test_bad_slo_images_are_refused_naming_the_fault(image, fault):
    message = refused(check_image, image, "slo", "row 2, column 'slo'", 4)
    assert message.startswith("row 2, column 'slo': ") and fault in message, message


def test_oct_rank_depth_and_size_and_the_smallest_accepted_images():
    rng = np.random.default_rng(1)
    assert "(rank 2)" in refused(check_image, rng.random((64, 64)), "oct", "row 0", 4)
    assert "has 3 B-scans, fewer than the 4 slices" in refused(check_image, rng.random((3, 64, 64)), "oct", "row 0", 4)
    assert "is 64 x 2 pixels" in refused(check_image, rng.random((16, 64, 2)), "oct", "row 0", 4)
    # the generator's small sizes (trainer/data/synthetic.py SIZES) and the minimum pass
    from trainer.data.synthetic import SIZES

    for slo, oct_ in (SIZES[("fairvision", False)], SIZES[("fairvlmed", False)]):
        check_image(rng.random(slo), "slo", "row 0", 4)
        check_image(rng.random(oct_), "oct", "row 0", 10)
    check_image(rng.random((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE, 3)), "slo", "row 0", 4)


# -- the model: predict on a one-epoch tiny fit --------------------------------------------------
@pytest.fixture(scope="module")
def model(dataset, tmp_path_factory):
    """(MultiFairPyfunc loaded as MLflow loads it, with model_config, its data root)."""
    from mlflow.pyfunc import PythonModelContext

    from trainer.config import PRESETS, TrainConfig
    from trainer.loop import fit

    root, tmp = dataset("guards"), tmp_path_factory.mktemp("pyfunc-input")
    cfg = TrainConfig(dataset="fairvision", data_root=str(root), cache_dir=str(tmp / "cache"),
                      **{**PRESETS["tiny"], "epochs": 1, "batch_size": 8})
    saved = {}
    fit(cfg, on_epoch=lambda r: saved.setdefault("dir", r.save_checkpoint(tmp / "ckpt", resume=False)),
        progress=False)
    pyfunc = MultiFairPyfunc()
    pyfunc.load_context(PythonModelContext(artifacts={"checkpoint": str(saved["dir"])},
                                           model_config={"allowed_root": str(root), "batch_size": 2}))
    return pyfunc, root


def patients(root, n: int) -> list:
    files = sorted(root.rglob("Test/data_*.npz"))[:n]
    assert len(files) == n
    return files


def test_a_row_without_any_modality_is_an_error_never_a_missing_prediction(model):
    pyfunc, root = model
    good = str(patients(root, 1)[0])
    empty_rows = [([{"slo": good, "oct": good}, {}], 1), ([{}, {"oct": good}], 0),
                  ({"slo": [good, None, good], "oct": [good, float("nan"), None]}, 1),
                  ([{"slo": good, "oct": good}, {"SLO": good}], 1)]   # a misspelt column
    for frame, row in empty_rows:
        message = refused(pyfunc.predict, None, frame)
        assert message.startswith(f"row {row} has none of the model's modalities (slo, oct)"), message
        assert message.endswith("nothing was scored (a request is scored whole: fix or remove that row)")
    # no model column at all: how MLflow's schema step hands over `[{}]` (0 rows, 0 columns)
    for frame in (pd.DataFrame(), pd.DataFrame(index=[0]), [{}], [{"SLO": good}], {}):
        assert refused(pyfunc.predict, None, frame) == \
            "input: none of the model's columns (slo, oct) is in the request: every row needs one"
    assert len(pyfunc.predict(None, pd.DataFrame({"slo": [], "oct": []}))) == 0   # no row, no answer


def test_a_batch_is_scored_whole_or_refused_naming_its_first_bad_row(model):
    pyfunc, root = model
    files = [str(f) for f in patients(root, 5)]
    batch = pd.DataFrame({"slo": files, "oct": files})
    scored = pyfunc.predict(None, batch)
    assert scored["modalities_used"].tolist() == ["slo,oct"] * 5
    alone = [pyfunc.predict(None, batch.iloc[[i]])["probability"][0] for i in range(5)]
    np.testing.assert_allclose(scored["probability"], alone, rtol=1e-6)   # rows do not mix
    rows = [{"slo": f, "oct": f} for f in files]
    rows[3]["slo"] = np.arange(4.0).reshape(2, 2)   # in the second chunk (batch_size 2)
    rows[4]["oct"] = "/etc/hostname.npy"
    message = refused(pyfunc.predict, None, pd.DataFrame(rows))
    assert message.startswith("row 3, column 'slo': key 'slo_fundus' is 2 x 2 pixels"), message
    rows[3]["slo"] = files[3]
    assert refused(pyfunc.predict, None, pd.DataFrame(rows)).startswith(f"row 4, column 'oct': {OUTSIDE}")


def test_batch_scoring_allows_its_data_root_and_the_folders_its_own_listing_resolves_to(tmp_path):
    from search.decide.registry import batch_roots

    root, elsewhere = tmp_path / "site", tmp_path / "nas" / "Test"
    elsewhere.mkdir(parents=True), root.mkdir()
    (root / "Test").symlink_to(elsewhere, target_is_directory=True)
    table = pd.DataFrame({"slo": [str(root / "Test" / "data_00001.npz")], "note": ["text"]})
    assert batch_roots(str(root), table) == [str(root.resolve()), str(elsewhere.resolve())]
