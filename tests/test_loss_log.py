"""losses.csv: one writer, one reader, both format versions; the run summary."""

from __future__ import annotations

import csv

import pytest

from pipeline.formats.loss_log import (
    FORMAT_VERSION, read_loss_log, read_run_summary, write_loss_log, write_run_summary,
)


def test_round_trip_and_plain_csv_readers(tmp_path):
    path = tmp_path / "losses.csv"
    rows = [{"step": 1, "lr": 1e-4, "loss": 0.5, "photometric": 0.25, "seconds": 1.5},
            {"step": 2, "lr": 1e-4, "loss": 0.4, "seconds": 1.25}]  # photometric missing: empty cell
    write_loss_log(path, rows, ["step", "lr", "loss", "photometric", "seconds"])
    log = read_loss_log(path)
    assert log.format_version == FORMAT_VERSION == 2
    assert log.columns == ["step", "lr", "loss", "photometric", "seconds"]
    assert log.loss_columns == ["loss", "photometric"]
    assert log.rows == rows and isinstance(log.rows[0]["step"], int)
    assert [r["step"] for r in read_loss_log(path, up_to_step=1).rows] == [1]
    # any CSV reader still sees the columns it knew (the version is a column, not a comment line)
    with open(path, newline="") as handle:
        plain = list(csv.DictReader(handle))
    assert plain[0]["loss"] == "0.5" and plain[0]["format_version"] == "2"
    assert not list(tmp_path.glob(".*"))  # written atomically


def test_version_1_files_stay_readable(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("step,lr,loss,pseudo_label,augmentation_weight,seconds\n"
                    "1,0.0001,1.95,7.83,0.0,90.1\n2,0.0001,1.03,4.15,0.0,9.6\n")
    log = read_loss_log(path)
    assert log.format_version == 1 and [r["step"] for r in log.rows] == [1, 2]
    assert log.loss_columns == ["loss", "pseudo_label"] and log.rows[1]["pseudo_label"] == pytest.approx(4.15)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_loss_log(tmp_path / "missing.csv")
    words = tmp_path / "words.csv"
    words.write_text("name,comment\nx,y\n")
    with pytest.raises(ValueError, match="words.csv.*no numeric 'step'"):
        read_loss_log(words)
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,0.5\n2,oops\n")
    with pytest.raises(ValueError, match=r"bad.csv: line 3: column 'loss' is not a number \('oops'\)"):
        read_loss_log(bad)
    newer = tmp_path / "newer.csv"
    newer.write_text("step,loss,format_version\n1,0.5,3\n")
    with pytest.raises(ValueError, match="newer.csv: line 2: format_version 3"):
        read_loss_log(newer)


def test_run_summary(tmp_path):
    stopped = {"reason": "max_seconds", "max_seconds": 60.0, "steps_done": 3, "steps_planned": 70}
    write_run_summary(tmp_path / "summary.json", {"mode": "finetune", "stopped_early": stopped})
    summary = read_run_summary(tmp_path / "summary.json")
    assert summary["format_version"] == 1 and summary["stopped_early"] == stopped
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not a run summary"):
        read_run_summary(tmp_path / "broken.json")


def test_report_figure_reads_both_versions(tmp_path):
    from pipeline.report import training_figure

    write_loss_log(tmp_path / "new.csv", [{"step": s, "loss": 1 / s, "ssim": 0.5 / s} for s in range(1, 5)],
                   ["step", "loss", "ssim"])
    (tmp_path / "old.csv").write_text("step,loss\n1,0.5\n2,0.25\n")
    for name in ("new.csv", "old.csv"):
        assert training_figure(tmp_path / f"{name}.png", tmp_path / name).stat().st_size > 1000
