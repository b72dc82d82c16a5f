"""``losses.csv``: the per-step log of a training or fine-tuning run (one reader, one writer).

Format, one row per optimizer step, comma-separated, a header line first:

    step,lr,loss,<term>...,augmentation_weight,seconds,format_version

* ``step`` (int, 1-based: the step just done), ``lr`` (learning rate of that step), ``loss`` (the
  weighted total), one column per active loss term (unweighted value), ``augmentation_weight``,
  ``seconds`` (wall time of the step); a cell may be empty where a value is unknown.
* **format_version 2** (2026-12-07 on): a last column ``format_version`` holding 2 on every row. It
  is a column rather than a comment line so that any CSV reader (spreadsheets, ``csv.DictReader``
  in ``bench/gpu_lib.sh``) keeps reading the file unchanged.
* **format_version 1** (before): the same without that column. :func:`read_loss_log` reads both; a
  file without the column is version 1. A newer version than this code knows is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

from pipeline.formats.atomic import atomic_path

FORMAT_VERSION = 2
VERSION_COLUMN = "format_version"
# Columns that are bookkeeping, not loss values (a plot of the losses leaves them out).
BOOKKEEPING = ("step", "lr", "augmentation_weight", "seconds", VERSION_COLUMN)


@dataclasses.dataclass
class LossLog:
    """A read ``losses.csv``: its columns (without ``format_version``), rows and version.

    Each row maps a column to its float value (``step`` to an int); empty cells are absent.
    """

    columns: list[str]
    rows: list[dict[str, float]]
    format_version: int

    @property
    def loss_columns(self) -> list[str]:
        """``loss`` and the term columns, in file order."""
        return [c for c in self.columns if c not in BOOKKEEPING]


def write_loss_log(path: str | os.PathLike, rows: Sequence[dict[str, float]], columns: Sequence[str]) -> None:
    """Write ``rows`` (missing cells left empty) atomically as a format-version-2 ``losses.csv``."""
    columns = [c for c in columns if c != VERSION_COLUMN]
    if not columns or columns[0] != "step":
        raise ValueError(f"{path}: a loss log's first column must be 'step', got {list(columns)[:1]}")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*columns, VERSION_COLUMN])
            for row in rows:
                writer.writerow([_cell(row.get(c)) for c in columns] + [FORMAT_VERSION])


def read_loss_log(path: str | os.PathLike, up_to_step: int | None = None) -> LossLog:
    """Read a ``losses.csv`` of format version 1 or 2; rows after ``up_to_step`` are left out.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file (and line) when it is not a loss log: no numeric ``step``
            column, a cell that is not a number, or a format version newer than this code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: loss log not found")
    with open(path, newline="", encoding="utf-8") as handle:
        lines = [row for row in csv.reader(handle) if row]
    if not lines or lines[0][0] != "step":
        header = lines[0] if lines else []
        raise ValueError(f"{path}: not a loss log: no numeric 'step' column first (header {header})")
    header = lines[0]
    version = 2 if VERSION_COLUMN in header else 1
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        row = {}
        for name, cell in zip(header, cells):
            if cell == "":
                continue
            try:
                row[name] = float(cell)
            except ValueError:
                raise ValueError(f"{path}: line {number}: column {name!r} is not a number ({cell!r})") from None
        if "step" not in row:
            raise ValueError(f"{path}: line {number}: no step")
        row["step"] = int(row["step"])
        row_version = int(row.pop(VERSION_COLUMN, version))
        if row_version > FORMAT_VERSION:
            raise ValueError(f"{path}: line {number}: format_version {row_version}, this code reads up to {FORMAT_VERSION}")
        if up_to_step is None or row["step"] <= up_to_step:
            rows.append(row)
    return LossLog([c for c in header if c != VERSION_COLUMN], rows, version)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return str(value) if isinstance(value, int) else repr(float(value))


# ``summary.json`` beside ``losses.csv``: how a run ended, for evaluate and the report.
SUMMARY_FORMAT_VERSION = 1


def write_run_summary(path: str | os.PathLike, summary: dict) -> None:
    """Write a run's ``summary.json`` atomically (format_version 1): ``mode``, ``steps_planned``,
    ``steps_done``, ``stopped_early`` (null, or ``{reason, steps_done, steps_planned, max_seconds}``
    when the time limit cut the run short), ``final_loss``."""
    import json

    with atomic_path(path, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps({"format_version": SUMMARY_FORMAT_VERSION, **summary}, indent=1) + "\n")


def read_run_summary(path: str | os.PathLike) -> dict:
    """Read a ``summary.json`` written by :func:`write_run_summary`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file when it is not JSON or of a newer format version.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run summary not found")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a run summary ({error})") from None
    if not isinstance(summary, dict) or int(summary.get("format_version", 0)) > SUMMARY_FORMAT_VERSION:
        raise ValueError(f"{path}: not a run summary of format_version <= {SUMMARY_FORMAT_VERSION}")
    return summary
