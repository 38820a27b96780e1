"""Strict JSON for every file the project writes: undefined values (NaN, +-inf) become null.

Python's json writes NaN and Infinity, which are not JSON (jq, browsers and most parsers refuse
the file). `dumps` turns them, numpy scalars and arrays into plain JSON and refuses anything else
left non-finite (allow_nan=False).
"""
from __future__ import annotations

import json
import math

import numpy as np


def strict(obj):
    """A copy of `obj` with non-finite floats as None and numpy values as Python ones."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    elif hasattr(obj, "tolist"):              # numpy arrays, torch tensors
        return strict(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj, **kwargs) -> str:
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
