"""A run's checkpoint folder: ``last.pt``, numbered ``step_NNNNNNN.pt``, ``losses.csv``, ``losses.png``, ``summary.json``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.formats.loss_log import FORMAT_VERSION, LossLog, read_loss_log, write_loss_log, write_run_summary

log = logging.getLogger("selfmvs.train")

LAST = "last.pt"
LOSSES = "losses.csv"
PLOT = "losses.png"
SUMMARY = "summary.json"


class CheckpointFolder:
    """Writes a run's state (rank 0 only); every file is written atomically.

    Args:
        folder: the checkpoint folder (created).
        keep: numbered checkpoints kept (the newest ones).
    """

    def __init__(self, folder: Path, keep: int):
        self.folder = Path(folder)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.folder / LAST

    def start(self, resume: bool) -> None:
        """Create the folder; a fresh run removes the numbered checkpoints of an older one, which would outrank ours."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if resume:
            return
        stale = sorted(self.folder.glob("step_*.pt"))
        for old in stale:
            old.unlink()
        if stale:
            log.info("removed %d checkpoint(s) of an earlier run from %s", len(stale), self.folder)

    def read_rows(self, up_to_step: int) -> list[dict[str, float]]:
        """The loss rows of the run being resumed, up to its checkpointed step."""
        path = self.folder / LOSSES
        return read_loss_log(path, up_to_step).rows if path.is_file() else []

    def save(self, step: int, model: torch.nn.Module, extra: dict, rows, columns, terms) -> None:
        from pipeline.model import save_checkpoint
        from pipeline.report.figures import loss_figure

        save_checkpoint(self.folder / f"step_{step:07d}.pt", model, extra)
        save_checkpoint(self.last, model, extra)
        numbered = sorted(self.folder.glob("step_*.pt"))
        for old in numbered[: max(0, len(numbered) - self.keep)]:
            old.unlink(missing_ok=True)
        write_loss_log(self.folder / LOSSES, rows, columns)
        if rows:
            loss_figure(self.folder / PLOT, LossLog(["step", "loss", *terms], rows, FORMAT_VERSION))

    def summarise(self, summary: dict) -> None:
        write_run_summary(self.folder / SUMMARY, summary)
