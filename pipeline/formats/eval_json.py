"""``eval.json``: the numbers of ``selfmvs evaluate``, each with its unit and definition.

Layout (docs/formats.md)::

    {"format_version": 1, "kind": "selfmvs.eval", "scene", "inputs": {file paths},
     "ground_truth": bool, "warnings": [str], "settings": {name: entry},
     "metrics": {name: entry}, "per_view": {image_id: {...}}, "seconds"}

where an entry is ``{"value", "unit", "definition", ...}``. Non-finite numbers are written as
``null`` (JSON has no NaN). The file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from pipeline.formats.atomic import atomic_path

FORMAT_VERSION = 1
KIND = "selfmvs.eval"


class EvalFormatError(ValueError):
    """A file that is not an eval.json this version reads; names the file."""


def write_eval_json(path: str | os.PathLike, body: dict) -> dict:
    """Write ``body`` (all keys but format_version and kind, which come first) to ``path``.

    Returns:
        The document, format_version and kind first (as given: the file has non-finite floats as
        null and numpy scalars as Python numbers).
    """
    document = {"format_version": FORMAT_VERSION, "kind": KIND, **body}
    text = json.dumps(json_safe(document), indent=2, allow_nan=False)
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return document


def read_eval_json(path: str | os.PathLike) -> dict:
    """The document of an ``eval.json``.

    Raises:
        FileNotFoundError: no file there.
        EvalFormatError: not JSON, another kind, or another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: evaluation file not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalFormatError(f"{path}: not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("kind") != KIND:
        kind = document.get("kind") if isinstance(document, dict) else type(document).__name__
        raise EvalFormatError(f"{path}: not an eval.json of selfmvs evaluate (kind={kind!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise EvalFormatError(
            f"{path}: format_version {document.get('format_version')!r}; this selfmvs reads version {FORMAT_VERSION}"
        )
    return document


def json_safe(value):
    """Non-finite floats -> None (JSON has no NaN); numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
