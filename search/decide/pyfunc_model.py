"""The registered champion as an MLflow pyfunc model (a models-from-code file: MLflow runs this
file when it loads the model, so nothing is pickled; search/decide/pyfunc.py logs it).

Input: a pandas DataFrame (or dict of columns), one row per patient, one column per modality of
the model (`slo`, `oct`, `note`; FairVLMed's fundus photo is `slo`):
  - an image as an array (nested lists in JSON): SLO (H, W) grey or (H, W, 3) RGB, OCT (D, H, W),
    each side at least MIN_IMAGE_SIDE pixels and an OCT at least the model's oct_slices B-scans;
  - or an image as a path on the scoring machine, read only inside the folder(s) the operator
    allows (PathPolicy): `.npz` in the released datasets' format (the modality's key,
    `slo_fundus` / `oct_bscans`; the key absent = the modality absent) or `.npy` (the array);
  - the note as text (tokenized here with the model's own tokenizer, shipped as an artifact);
  - a modality absent: None / NaN / an empty note / the column left out.
Each row gets the trainer's own preprocessing (trainer.data.transforms preprocess_slo and
preprocess_oct, trainer.data.cache.tokenize, the audit's per-image checks) and goes through the
trainer's one inference path (trainer.inference.forward), with batch["present"] marking what each
row has (docs/architecture.md's contract: an absent modality never enters the prediction).
Output: one row per input row, `probability` (sigmoid of the logit) and `modalities_used`
("slo,oct", "slo", ...). Imports only the trainer (shipped as code_paths), never search/.

Refusals: a request is scored whole or not at all. The first refused row (rows in order) raises
an MlflowException with error code INVALID_PARAMETER_VALUE whose message names the row and column
("row 3, column 'slo': ..."); MLflow's scoring server answers it with HTTP 400 and that message,
no stack trace. Refused: a row with none of the model's modalities, text that is not an
.npz/.npy path, a path outside the allowed folder (or any path when none is allowed), an
unreadable file, an image of the wrong rank or dtype, smaller than the minimum, with NaN or
infinite values, or constant.

model_config (mlflow.pyfunc.load_model(uri, model_config={...}); served: the JSON in the
SERVING_MODEL_CONFIG environment variable): "device" ("cpu" default, e.g. "cuda"),
"batch_size" (rows preprocessed and scored at once; default the trainer's eval batch),
"allowed_root" (a folder, or a list of folders, whose files a path may name; default the
MULTIFAIR_ALLOWED_ROOT environment variable, folders separated by os.pathsep; neither: paths
refused). search/decide/pyfunc.py logs these keys with their defaults (MODEL_CONFIG): MLflow
passes only keys the logged model declares.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

IMAGE_KEYS = {"slo": "slo_fundus", "oct": "oct_bscans"}   # trainer.data.common.MODALITY_KEYS
ALLOWED_ROOT_ENV = "MULTIFAIR_ALLOWED_ROOT"
# The smallest image side accepted (SLO height and width, each OCT B-scan's). The released data
# are 200 x 200 (FairVision SLO, every OCT B-scan) and about 664 x 512 (FairVLMed fundus), and
# the models see them resized to 224: an image under 32 pixels a side is upscaled more than 7x,
# a thumbnail or an icon, not a fundus. The project's generator writes 64 x 64 (80 x 64) at its
# small size (trainer/data/synthetic.py SIZES), which passes.
MIN_IMAGE_SIDE = 32


def refusal(message: str) -> MlflowException:
    """The error a caller can act on: MLflow's scoring server answers it with HTTP 400 and
    this message (no stack trace)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class PathPolicy:
    """Which image paths a model may read: only files whose resolved path (symlinks and `..`
    followed) lies inside one of `roots`; no roots, no path at all. A refusal is the same line
    whether or not the file exists, and never names the resolved target."""

    def __init__(self, roots=()):
        self.roots = tuple(Path(r).resolve() for r in roots)

    @classmethod
    def from_settings(cls, model_config: dict | None) -> "PathPolicy":
        """model_config["allowed_root"] (a folder or a list) if given, else $MULTIFAIR_ALLOWED_ROOT
        (folders separated by os.pathsep), else none."""
        raw = (model_config or {}).get("allowed_root")
        if not raw:   # unset (the logged default None) or empty
            raw = os.environ.get(ALLOWED_ROOT_ENV, "").split(os.pathsep)
        elif isinstance(raw, (str, os.PathLike)):
            raw = [raw]
        return cls(r for r in raw if str(r).strip())

    def resolve(self, cell: str, where: str) -> Path:
        if not self.roots:
            raise refusal(f"{where}: this model reads no image paths (the operator allows no "
                          f"folder: {ALLOWED_ROOT_ENV} or model_config allowed_root); send the "
                          f"image as an array")
        try:
            resolved = Path(cell).resolve()
        except (OSError, RuntimeError, ValueError):   # a symlink loop, a NUL byte
            resolved = None
        if resolved is None or not any(resolved.is_relative_to(r) for r in self.roots):
            raise refusal(f"{where}: the path is not inside the folder this model may read")
        return resolved


def _is_absent(cell) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float) and math.isnan(cell):
        return True
    try:
        import pandas as pd

        return cell is pd.NA or cell is pd.NaT
    except ImportError:   # pragma: no cover - pandas comes with mlflow
        return False


def _as_array(cell, where: str) -> np.ndarray:
    """An image cell given as an array (nested lists from JSON, ndarray, an object array of rows
    after MLflow's schema handling) -> a numeric ndarray."""
    array = np.asarray(cell)
    if array.dtype == object:   # ragged object rows from a JSON DataFrame: stack them
        try:
            array = np.array(array.tolist(), dtype=np.float32)
        except (TypeError, ValueError):
            raise refusal(f"{where}: not a rectangular numeric array") from None
    return array


def read_image(cell, modality: str, where: str, paths: PathPolicy):
    """An image cell -> ndarray, or None when absent (None/NaN, or an npz without the key).
    A path is read only where `paths` allows it."""
    from trainer.data.common import DataError, open_npz, read_key

    if _is_absent(cell):
        return None
    if not isinstance(cell, (str, Path)):
        return _as_array(cell, where)
    if Path(cell).suffix not in (".npz", ".npy"):
        raise refusal(f"{where}: text that is not an .npz or .npy path; an image is an array "
                      f"(nested lists) or the path of an .npz (released format) or .npy file")
    path = paths.resolve(cell, where)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with open_npz(path) as z:
            key = IMAGE_KEYS[modality]
            return read_key(z, path, key) if key in z.files else None
    except DataError as exc:   # the trainer's reader names the defect after the path
        raise refusal(f"{where}: {str(exc).removeprefix(f'{path}: ')}") from None
    except (OSError, ValueError) as exc:
        raise refusal(f"{where}: cannot read the file ({type(exc).__name__})") from None


def check_image(image: np.ndarray, modality: str, where: str, oct_slices: int) -> None:
    """The audit's per-image checks (dtype, rank, finite, not constant), then the minimum size."""
    from trainer.data import audit
    from trainer.data.common import DataError

    key = IMAGE_KEYS[modality]
    try:
        (audit.check_slo if modality == "slo" else audit.check_oct)(image, where, key)
    except DataError as exc:
        raise refusal(str(exc)) from None
    height, width = image.shape[:2] if modality == "slo" else image.shape[1:]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise refusal(f"{where}: key {key!r} is {height} x {width} pixels, under the minimum "
                      f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE} (released images are 200 x 200 and "
                      f"larger)")
    if modality == "oct" and image.shape[0] < oct_slices:
        raise refusal(f"{where}: key {key!r} has {image.shape[0]} B-scans, fewer than the "
                      f"{oct_slices} slices the model reads")


def read_note(cell, where: str):
    """A note cell -> its text, or None when absent (None/NaN/blank)."""
    if _is_absent(cell):
        return None
    if not isinstance(cell, str):
        raise refusal(f"{where}: a note is text, got {type(cell).__name__}")
    return cell if cell.strip() else None


class Rows:
    """Preprocessed rows as a dataset with get_batch (what trainer.inference.forward reads):
    {modality: tensor, "note": {"input_ids", "attention_mask"}, "present": {m: bool}}; an absent
    modality's rows are zero placeholders that present marks False (never encoded)."""

    def __init__(self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray]):
        self.arrays, self.present = arrays, present

    def __len__(self) -> int:
        return len(next(iter(self.present.values())))

    def get_batch(self, idx) -> dict:
        import torch

        idx = np.asarray(idx, dtype=np.int64)
        batch = {}
        for m, array in self.arrays.items():
            block = torch.from_numpy(array[idx])
            if m == "note":   # int32 (B, 2, L): token ids and mask, as the cache stores them
                block = block.long()
                batch[m] = {"input_ids": block[:, 0], "attention_mask": block[:, 1]}
            else:
                batch[m] = block
        batch["present"] = {m: torch.from_numpy(p[idx]) for m, p in self.present.items()}
        return batch


class MultiFairPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from trainer.checkpoint import read_manifest
        from trainer.config import config_from_dict
        from trainer.loop import load_model

        folder = context.artifacts["checkpoint"]
        self.cfg = config_from_dict({**read_manifest(folder)["config"], "pretrained": False})
        self.model = load_model(folder)
        self.modalities = tuple(self.cfg.resolved_modalities())
        self.tokenizer = None
        # a fast tokenizer's truncation state is shared: two requests tokenizing at once fail
        # ("Already borrowed"); the server runs requests in threads
        self.tokenizer_lock = threading.Lock()
        if "note" in self.modalities:
            from trainer.models.clip import load_saved_tokenizer   # BERT, or CLIP's with its cut

            self.tokenizer = load_saved_tokenizer(context.artifacts["tokenizer"])
        config = context.model_config or {}
        self.device = config.get("device", "cpu")
        self.batch_size = int(config.get("batch_size") or self.cfg.batch_size * 2)
        self.paths = PathPolicy.from_settings(config)
        self.model.to(self.device)

    def preprocess(self, columns: dict, rows: range) -> Rows:
        """The trainer's per-sample preprocessing of `rows`, row by row (so the first refused
        row is the one named): read, audit checks and minimum size, resize, slices, z-score;
        tokenization; placeholders (zeros) where a modality is absent."""
        from trainer.data.cache import tokenize
        from trainer.data.transforms import preprocess_oct, preprocess_slo

        cfg, n = self.cfg, len(rows)
        size, k = cfg.image_size, cfg.oct_slices
        arrays = {"slo": np.zeros((n, size, size), np.uint8),
                  "oct": np.zeros((n, k, size, size), np.float16)}
        arrays = {m: arrays[m] for m in self.modalities if m != "note"}
        present = {m: np.zeros(n, bool) for m in self.modalities}
        texts = [""] * n
        for j, i in enumerate(rows):
            for m in self.modalities:
                cell, where = columns[m][i] if m in columns else None, f"row {i}, column {m!r}"
                if m == "note":
                    text = read_note(cell, where)
                    present[m][j], texts[j] = text is not None, text or ""
                    continue
                image = read_image(cell, m, where, self.paths)
                if image is None:
                    continue
                check_image(image, m, where, k)
                arrays[m][j] = preprocess_slo(image, size) if m == "slo" else \
                    preprocess_oct(image, k, size)
                present[m][j] = True
            if not any(p[j] for p in present.values()):
                raise refusal(f"row {i} has none of the model's modalities "
                              f"({', '.join(self.modalities)}): every row needs one")
        if "note" in self.modalities:
            with self.tokenizer_lock:
                arrays["note"] = tokenize(texts, self.tokenizer, cfg.note_max_length, present["note"])
        return Rows(arrays, present)

    def predict(self, context, model_input, params=None):
        """One probability per row, or a refusal naming the first bad row: nothing of a request
        with a refused row is returned (its earlier chunks' scores are dropped)."""
        import pandas as pd

        from trainer.inference import forward

        columns, n = _columns(model_input, self.modalities)
        if not any(m in columns for m in self.modalities):
            # MLflow's schema step drops columns the signature lacks and, when none is left, the
            # rows too (`[{}]` arrives as a frame of 0 rows): refuse, never answer an empty list
            raise refusal(f"input: none of the model's columns ({', '.join(self.modalities)}) is "
                          f"in the request: every row needs one")
        probability, used = [], []
        for start in range(0, n, self.batch_size):   # bounded memory: one chunk at a time
            try:
                rows = self.preprocess(columns, range(start, min(n, start + self.batch_size)))
            except MlflowException as exc:
                raise refusal(f"{exc.message}; nothing was scored (a request is scored whole: "
                              f"fix or remove that row)") from None
            for _batch, logits in forward(self.model, rows, self.batch_size, device=self.device):
                probability += logits.sigmoid().cpu().tolist()
            # from the rows' own presence (forward may drop "present" from a complete batch)
            used += [",".join(m for m in self.modalities if rows.present[m][j]) for j in range(len(rows))]
        return pd.DataFrame({"probability": np.asarray(probability, np.float64),
                             "modalities_used": used})


def _columns(model_input, modalities) -> tuple[dict[str, list], int]:
    """({column: list of cells}, number of rows) from a DataFrame, a dict of columns, or a list
    of row dicts. The rows are counted from the input itself: a row with no cell at all
    (`[{}]`, a DataFrame with rows but no column) is a row, refused later, not dropped."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return {c: model_input[c].tolist() for c in model_input.columns}, len(model_input)
    if isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input):
        names = {k for r in model_input for k in r}
        return {c: [r.get(c) for r in model_input] for c in names}, len(model_input)
    if isinstance(model_input, dict):
        columns = {c: list(v) if isinstance(v, (list, tuple)) else [v] for c, v in model_input.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise refusal(f"input: columns of different lengths {sorted(lengths)}")
        return columns, lengths.pop() if lengths else 0
    raise refusal(f"input: expected a DataFrame or a dict of columns ({', '.join(modalities)}),"
                  f" got {type(model_input).__name__}")


set_model(MultiFairPyfunc())
