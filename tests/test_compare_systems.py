"""bench/compare_systems.py at a tiny size: two systems (PatchmatchNet and CVP-MVSNet), 2 training steps on
one 4-view 160x120 object scene, scored on another; then a second run that must reuse every output."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("unsup_mvsnet", "jdacs_ms")


def run_compare(work: Path, out: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(REPO / "bench" / "compare_systems.py"), "--work", str(work), "--systems", ",".join(SYSTEMS),
        "--train-seeds", "1000", "--train-views", "4", "--train-size", "160x120", "--steps", "2", "--batch-size", "1",
        "--width", "96", "--height", "72", "--num-sources", "2", "--heldout-seeds", "2000", "--heldout-views", "4",
        "--heldout-size", "160x120", "--indoor-seeds", "", "--dtu", "none", "--infer-sources", "2",
        "--json", str(out / "compare.json"), "--markdown", str(out / "compare.md"),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_compare_systems_rows_and_reuse(tmp_path):
    work = tmp_path / "work"
    run_compare(work, tmp_path / "first")
    payload = json.loads((tmp_path / "first" / "compare.json").read_text())
    assert list(payload["systems"]) == list(SYSTEMS)
    assert payload["settings"]["steps"] == 2 and payload["commit"] and len(payload["load_avg"]) == 3
    for name, system in payload["systems"].items():
        assert system["steps"] == 2 and system["start"] == "scratch", name
        assert finite(system["train_s_per_step"]) and system["train_s_per_step"] > 0, name
        assert finite(system["train_peak_rss_mb"]) and system["train_peak_rss_mb"] > 50, name
        summary = system["summary"]
        for key in ("object_within_0.005", "object_within_0.01", "object_within_0.02", "object_fscore_0.5pct",
                    "object_recall_0.5pct"):
            assert finite(summary[key]) and 0 <= summary[key] <= 1, (name, key, summary[key])
        assert finite(summary["infer_s_per_view"]) and summary["infer_s_per_view"] > 0, name
        assert finite(summary["infer_peak_rss_mb"]) and summary["infer_peak_rss_mb"] > 50, name
        assert "indoor_within_0.01" not in summary and "dtu_sparse_within_0.01" not in summary, name
        assert [row["views"] for row in system["scores"]["object"]] == [4], name
    assert payload["systems"]["jdacs_ms"]["backbone"] == "cvp"
    assert "augmentation" in payload["systems"]["jdacs_ms"]["terms"]
    assert payload["systems"]["unsup_mvsnet"]["terms"] == ["photometric", "ssim", "smoothness"]
    table = (tmp_path / "first" / "compare.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == list(SYSTEMS)

    depth_files = (path for path in work.glob("depth/*/*.h5") if not path.stem.endswith("_masks"))  # not fuse's masks
    outputs = sorted(work.glob("train/*/last.pt")) + sorted(depth_files)
    assert len(outputs) == 2 * len(SYSTEMS)
    stamps = {path: path.stat().st_mtime_ns for path in outputs}
    second = run_compare(work, tmp_path / "second")
    assert second.stdout.count("reusing") == len(SYSTEMS), second.stdout
    assert {path: path.stat().st_mtime_ns for path in outputs} == stamps
    again = json.loads((tmp_path / "second" / "compare.json").read_text())
    for name in SYSTEMS:
        assert again["systems"][name]["summary"] == payload["systems"][name]["summary"], name
        assert again["systems"][name]["train_s_per_step"] == payload["systems"][name]["train_s_per_step"], name


def test_compare_systems_rejects_unknown_system(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare_systems.py"), "--work", str(tmp_path),
                             "--systems", "unsup_mvsnet,mvsnet"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown ['mvsnet']" in result.stderr, result.stderr


def test_dtu_subset_keeps_the_first_views_and_their_shared_points(tmp_path):
    dtu = REPO.parent / "shared" / "data" / "dtu_scan24"
    if not (dtu / "sparse").is_dir():
        pytest.skip("../shared/data/dtu_scan24 is absent")
    sys.path.insert(0, str(REPO / "bench"))
    from compare_systems import dtu_subset

    from pipeline.colmap import read_model
    from pipeline.formats.scene_file import read_scene

    scene_dir, scene_h5 = dtu_subset(tmp_path, dtu, 3)
    _, all_images, _ = read_model(dtu / "sparse")
    _, images, points = read_model(scene_dir / "sparse")  # read_model checks that the three files agree
    assert sorted(images) == sorted(all_images)[:3]
    assert points and all(len(p.image_ids) >= 2 and set(p.image_ids) <= set(images) for p in points.values())
    scene = read_scene(scene_h5, load_images=False)
    assert sorted(scene.views) == sorted(images) and len(scene.points3D_ids) == len(points)
    with pytest.raises(SystemExit, match="--dtu-views"):
        dtu_subset(tmp_path / "other", dtu, 1)
