"""The registered champion as an MLflow pyfunc model (a models-from-code file: MLflow runs this
file when it loads the model, so nothing is pickled; search/decide/pyfunc.py logs it).

Input: a pandas DataFrame (or dict of columns), one row per patient, one column per modality of
the model (`slo`, `oct`, `note`; FairVLMed's fundus photo is `slo`):
  - an image as an array (nested lists in JSON): SLO (H, W) grey or (H, W, 3) RGB, OCT (D, H, W);
  - or an image as a path on the scoring machine: `.npz` in the released datasets' format (the
    modality's key, `slo_fundus` / `oct_bscans`; the key absent = the modality absent) or `.npy`
    (the array itself);
  - the note as text (tokenized here with the model's own tokenizer, shipped as an artifact);
  - a modality absent: None / NaN / an empty note / the column left out.
Each row gets the trainer's own preprocessing (trainer.data.transforms preprocess_slo and
preprocess_oct, trainer.data.cache.tokenize, the audit's per-image checks) and goes through the
trainer's one inference path (trainer.inference.forward), with batch["present"] marking what each
row has (docs/architecture.md's contract: an absent modality never enters the prediction).
Output: one row per input row, `probability` (sigmoid of the logit) and `modalities_used`
("slo,oct", "slo", ...). Imports only the trainer (shipped as code_paths), never search/.

model_config (mlflow.pyfunc.load_model(uri, model_config={...})): "device" ("cpu" default, e.g.
"cuda"), "batch_size" (rows preprocessed and scored at once; default the trainer's eval batch).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import mlflow.pyfunc
from mlflow.models import set_model

IMAGE_KEYS = {"slo": "slo_fundus", "oct": "oct_bscans"}   # trainer.data.common.MODALITY_KEYS


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
            raise ValueError(f"{where}: not a rectangular numeric array") from None
    return array


def read_image(cell, modality: str, where: str):
    """An image cell -> ndarray, or None when absent (None/NaN, or an npz without the key)."""
    from trainer.data.common import open_npz, read_key

    if _is_absent(cell):
        return None
    if isinstance(cell, (str, Path)):
        path = Path(cell)
        if path.suffix == ".npz":
            with open_npz(path) as z:
                key = IMAGE_KEYS[modality]
                return read_key(z, path, key) if key in z.files else None
        if path.suffix == ".npy":
            try:
                return np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{where}: cannot read {path}: {type(exc).__name__}") from None
        raise ValueError(f"{where}: a path must end in .npz (released format) or .npy")
    return _as_array(cell, where)


def read_note(cell, where: str):
    """A note cell -> its text, or None when absent (None/NaN/blank)."""
    if _is_absent(cell):
        return None
    if not isinstance(cell, str):
        raise ValueError(f"{where}: a note is text, got {type(cell).__name__}")
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
        if "note" in self.modalities:
            from trainer.models.text import load_tokenizer

            self.tokenizer = load_tokenizer(context.artifacts["tokenizer"])
        config = context.model_config or {}
        self.device = config.get("device", "cpu")
        self.batch_size = int(config.get("batch_size") or self.cfg.batch_size * 2)
        self.model.to(self.device)

    def preprocess(self, columns: dict, rows: range) -> Rows:
        """The trainer's per-sample preprocessing of `rows` (audit checks, resize, slices,
        z-score, tokenization); placeholders (zeros) where a modality is absent."""
        from trainer.data import audit
        from trainer.data.cache import tokenize
        from trainer.data.transforms import preprocess_oct, preprocess_slo

        cfg, n = self.cfg, len(rows)
        arrays, present = {}, {}
        for m in self.modalities:
            cells = columns.get(m, [None] * (rows.stop))
            present[m] = np.zeros(n, bool)
            if m == "note":
                texts = [read_note(cells[i], f"row {i}, column 'note'") for i in rows]
                present[m] = np.array([t is not None for t in texts], bool)
                arrays[m] = tokenize([t or "" for t in texts], self.tokenizer, cfg.note_max_length)
                arrays[m][~present[m]] = 0   # as the cache stores an absent row: zeros
                continue
            size, k = cfg.image_size, cfg.oct_slices
            arrays[m] = np.zeros((n, size, size), np.uint8) if m == "slo" else \
                np.zeros((n, k, size, size), np.float16)
            for j, i in enumerate(rows):
                where = f"row {i}, column {m!r}"
                image = read_image(cells[i], m, where)
                if image is None:
                    continue
                if m == "slo":
                    audit.check_slo(image, where, IMAGE_KEYS[m])
                    arrays[m][j] = preprocess_slo(image, size)
                else:
                    audit.check_oct(image, where, IMAGE_KEYS[m])
                    arrays[m][j] = preprocess_oct(image, k, size)
                present[m][j] = True
        none = [i for j, i in enumerate(rows) if not any(p[j] for p in present.values())]
        if none:
            raise ValueError(f"row {none[0]} has none of the model's modalities "
                             f"({', '.join(self.modalities)}) ({len(none)} such row(s))")
        return Rows(arrays, present)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from trainer.inference import forward

        columns = _columns(model_input, self.modalities)
        n = _length(columns)
        probability, used = [], []
        for start in range(0, n, self.batch_size):   # bounded memory: one chunk at a time
            rows = self.preprocess(columns, range(start, min(n, start + self.batch_size)))
            for _batch, logits in forward(self.model, rows, self.batch_size, device=self.device):
                probability += logits.sigmoid().cpu().tolist()
            # from the rows' own presence (forward may drop "present" from a complete batch)
            used += [",".join(m for m in self.modalities if rows.present[m][j]) for j in range(len(rows))]
        return pd.DataFrame({"probability": np.asarray(probability, np.float64),
                             "modalities_used": used})


def _columns(model_input, modalities) -> dict[str, list]:
    """{column: list of cells} from a DataFrame, a dict of columns, or a list of row dicts."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return {c: model_input[c].tolist() for c in model_input.columns}
    if isinstance(model_input, dict):
        return {c: list(v) if isinstance(v, (list, tuple)) else [v] for c, v in model_input.items()}
    if isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input):
        return {c: [r.get(c) for r in model_input] for c in {k for r in model_input for k in r}}
    raise ValueError(f"input: expected a DataFrame or a dict of columns ({', '.join(modalities)}),"
                     f" got {type(model_input).__name__}")


def _length(columns: dict[str, list]) -> int:
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"input: columns of different lengths {sorted(lengths)}")
    return lengths.pop() if lengths else 0


set_model(MultiFairPyfunc())
