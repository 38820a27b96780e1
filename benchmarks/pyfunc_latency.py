"""Per-row latency of the champion's pyfunc (search/decide/pyfunc_model.py), and what a request
costs at the real size. CPU only, no downloads.

    python benchmarks/pyfunc_latency.py [--rows 32] [--repeats 5] [--real-size]

Generates a small FairVision (trainer/data/synthetic.py), fits the TINY preset for one epoch,
logs the pyfunc model to a temporary sqlite store (search/decide/pyfunc.py), loads it with
mlflow.pyfunc.load_model and prints the median seconds of predict(): one row and --rows rows,
images as arrays and as npz paths, complete and with the OCT absent. With --real-size it also
prints the real size's per-row preprocessing (200 x 200 SLO, 200^3 OCT: the trainer's
preprocess_slo / preprocess_oct at the paper preset's image size and slices) and the JSON text one
such row is in a request (what `mlflow models serve` would parse per patient).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks.timing import median_s  # noqa: E402


def tiny_logged_model(tmp: Path, n_test: int = 40) -> tuple[str, str, Path]:
    """A tiny-preset model fitted for one epoch on generated data and logged as the pyfunc
    model to a sqlite store under tmp: (tracking URI, model URI, data root)."""
    import mlflow

    from search.decide.mlmodel import log_model
    from trainer.config import PRESETS, TrainConfig
    from trainer.data.synthetic import synthesize
    from trainer.loop import fit

    root = synthesize("fairvision", tmp / "data", n_train=48, n_val=24, n_test=n_test, seed=0)
    cfg = TrainConfig(dataset="fairvision", data_root=str(root), cache_dir=str(tmp / "cache"),
                      **{**PRESETS["tiny"], "epochs": 1})
    saved = {}
    fit(cfg, on_epoch=lambda r: saved.__setitem__("dir", r.save_checkpoint(tmp / "ckpt", resume=False)),
        progress=False)
    uri = "sqlite:///" + str(tmp / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("bench", artifact_location=str(tmp / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        pass
    model_uri = log_model(uri, run.info.run_id, saved["dir"], metadata={"trainer_config": cfg.to_dict()})
    return uri, model_uri, root


def tiny_model(tmp: Path):
    """tiny_logged_model, loaded with mlflow.pyfunc.load_model and allowed to read its data
    folder (model_config allowed_root): (model, data root)."""
    import mlflow

    _uri, model_uri, root = tiny_logged_model(tmp)
    return mlflow.pyfunc.load_model(model_uri, model_config={"allowed_root": str(root)}), root


def real_size(repeats: int) -> None:
    import numpy as np

    from trainer.config import TrainConfig
    from trainer.data.transforms import preprocess_oct, preprocess_slo

    paper = TrainConfig(dataset="fairvision")   # the paper preset's image size and OCT slices
    size, k = paper.image_size, paper.oct_slices
    rng = np.random.default_rng(0)
    slo = rng.integers(0, 256, (200, 200), dtype=np.uint8)
    oct_ = rng.integers(0, 256, (200, 200, 200), dtype=np.uint8)
    s_slo = median_s(lambda: preprocess_slo(slo, size), repeats)
    s_oct = median_s(lambda: preprocess_oct(oct_, k, size), repeats)
    text = json.dumps({"dataframe_records": [{"slo": slo.tolist(), "oct": oct_.tolist()}]})
    s_parse = median_s(lambda: json.loads(text), 1)
    print(f"real size, per row: preprocess SLO 200x200 -> {size}: {s_slo * 1e3:.1f} ms, OCT 200^3 -> "
          f"{k} x {size} x {size}: {s_oct * 1e3:.0f} ms; as JSON: {len(text) / 1e6:.1f} MB of text, "
          f"json.loads alone {s_parse:.2f} s; as an npz path: {len(json.dumps(['/data/x.npz']))} "
          f"bytes (the server reads the file)")
    print(f"real size, per row as an npz path: read + checks + preprocess "
          f"{path_row_s(k, size, repeats) * 1e3:.0f} ms (the served model's whole path route)")


def path_row_s(k: int, size: int, repeats: int) -> float:
    """Median seconds of the served model's route for one released-size patient given as an npz
    path (search/decide/pyfunc_model.py): allowed-folder check, npz read (compressed, as the
    generator writes it), the audit's checks and the minimum size, preprocessing of both images."""
    import numpy as np

    from search.decide.pyfunc_model import PathPolicy, check_image, read_image
    from trainer.data.synthetic import render_oct, render_slo
    from trainer.data.transforms import preprocess_oct, preprocess_slo

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="pyfunc-bench-") as tmp:
        path = Path(tmp) / "data_00001.npz"
        np.savez_compressed(path, slo_fundus=render_slo(rng, (200, 200), 0.5, 0),
                            oct_bscans=render_oct(rng, (200, 200, 200), 0.1))
        policy = PathPolicy([tmp])

        def row():
            slo = read_image(str(path), "slo", "row 0", policy)
            check_image(slo, "slo", "row 0", k)
            preprocess_slo(slo, size)
            volume = read_image(str(path), "oct", "row 0", policy)
            check_image(volume, "oct", "row 0", k)
            preprocess_oct(volume, k, size)
        return median_s(row, repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--real-size", action="store_true")
    a = ap.parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pyfunc-bench-") as tmp:
        model, root = tiny_model(Path(tmp))
        from trainer.data import LAYOUTS

        files = sorted(LAYOUTS["fairvision"].split_dir(root, "test").glob("data_*.npz"))[:a.rows]
        arrays = []
        for f in files:
            with np.load(f) as z:
                arrays.append({"slo": z["slo_fundus"], "oct": z["oct_bscans"]})
        shape = {k: v.shape for k, v in arrays[0].items()}
        cases = {"arrays": pd.DataFrame(arrays),
                 "npz paths": pd.DataFrame({"slo": [str(f) for f in files], "oct": [str(f) for f in files]}),
                 "arrays, OCT absent": pd.DataFrame([{"slo": r["slo"], "oct": None} for r in arrays])}
        print(f"tiny preset, CPU, 1 torch thread, generated images {shape}")
        for name, df in cases.items():
            one = median_s(lambda: model.predict(df.iloc[:1]), a.repeats)
            many = median_s(lambda: model.predict(df), a.repeats)
            print(f"  {name:20s} 1 row: {one * 1e3:6.1f} ms   {len(df)} rows: {many * 1e3:7.1f} ms "
                  f"({many / len(df) * 1e3:.2f} ms/row)")
    if a.real_size:
        real_size(max(1, a.repeats // 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
