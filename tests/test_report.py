"""Report: every PNG opens, has the expected size and is not blank; the page references them; the
interactive cloud page renders in a headless Chromium (skipped where none is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.config import FuseConfig, ReportConfig
from test_fusion import write_box_scene


def assert_picture(path, min_width=200, min_height=150):
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert width >= min_width and height >= min_height, (path, image.size)
    assert pixels.std() > 0, f"{path} is blank"


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


needs_chromium = pytest.mark.skipif(
    _chromium() is None, reason="no chromium on PATH (make test installs Debian's chromium when run as root)")


def screenshot(page, out_png, width=900, height=640) -> np.ndarray:
    """Open ``page`` from disk (file://, so no server and no network) in headless Chromium; the
    screenshot's pixels. WebGL (plotly's 3-D) runs on Chromium's software renderer (SwiftShader)."""
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
               "--enable-unsafe-swiftshader", f"--user-data-dir={out_png.parent / 'chromium-profile'}",
               f"--window-size={width},{height}", "--virtual-time-budget=15000", f"--screenshot={out_png}",
               page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and out_png.is_file(), f"chromium failed: {done.stderr[-2000:]}"
    with Image.open(out_png) as image:
        return np.asarray(image.convert("RGB"))


def cloud_pixels(pixels: np.ndarray, rgb: np.ndarray) -> int:
    """Screenshot pixels that show one of the cloud's colours (to 1/16 of the range per channel) and are
    neither grey (background, grid, text) nor the cameras' orange."""
    bins = lambda colours: (colours.astype(np.int64) // 16) @ np.array([256, 16, 1])  # noqa: E731
    flat = pixels.reshape(-1, 3)
    saturated = flat.max(1).astype(int) - flat.min(1) > 40
    not_camera = np.abs(flat.astype(int) - [0xE8, 0x59, 0x0C]).max(1) > 24
    return int((np.isin(bins(flat), np.unique(bins(rgb))) & saturated & not_camera).sum())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from pipeline.config import EvaluateConfig
    from pipeline.stages.evaluate import run_evaluate
    from pipeline.stages.fuse import run_fuse

    folder = tmp_path_factory.mktemp("report")
    scene_dir, scene_h5, depth_h5, _ = write_box_scene(folder, num_views=5, width=64, height=48)
    fused = folder / "fused.ply"
    run_fuse(scene_h5, depth_h5, fused, FuseConfig(device="cpu", min_consistent_views=1))
    eval_json = folder / "eval.json"
    run_evaluate(scene_dir, scene_h5, depth_h5, fused, eval_json, EvaluateConfig())
    csv = folder / "train.csv"
    steps = np.arange(0, 200, 10)
    csv.write_text("step,loss,photometric,lr\n" + "".join(
        f"{s},{1 / (1 + s / 50):.4f},{0.5 / (1 + s / 80):.4f},0.001\n" for s in steps))
    tsvs = []
    for stage, seconds in (("prepare", 3.2), ("infer", 41.0), ("fuse", 12.5)):
        path = folder / f"{stage}.tsv"
        path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                        f"{seconds}\t0:00:{int(seconds):02d}\t{seconds * 20}\t900\t400\t410\t1\t2\t90\t{seconds * 0.9}\n")
        tsvs.append(path)
    return scene_dir, scene_h5, depth_h5, fused, eval_json, csv, tsvs


def test_full_report(results, tmp_path):
    from pipeline.stages.report import run_report

    scene_dir, scene_h5, depth_h5, fused, eval_json, csv, tsvs = results
    out = tmp_path / "report"
    page = run_report(scene_h5, depth_h5, out, fused_ply=fused, eval_json=eval_json, scene_dir=scene_dir,
                      training_csv=csv, benchmarks=tsvs, config=ReportConfig(max_views=3, cloud_points=5000))
    text = page.read_text()
    referenced = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(referenced) == sorted(p.name for p in out.glob("*.png"))
    assert {"scores.png", "training.png", "timings.png"} <= set(referenced)
    # The cloud is a page of its own in a frame, with plotly.js beside it (no network at view time).
    assert re.findall(r'<iframe src="([^"]+)"', text) == ["cloud.html"]
    cloud = (out / "cloud.html").read_text()
    assert 'class="plotly-graph-div"' in cloud and '<script charset="utf-8" src="plotly.min.js">' in cloud
    assert not re.search(r'src="(https?:)?//', cloud), "the cloud page loads something from the network"
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert sum(name.startswith("view_") for name in referenced) == 3
    for name in referenced:
        assert_picture(out / name)
    assert "accuracy_mean" in text and "<figcaption>" in text and "Stage timings" in text
    # Five panels (image, depth, confidence, error, mask) make the view figures wide.
    with Image.open(out / referenced[0]) as image:
        assert image.size[0] > 4 * image.size[1]


def test_minimal_report_and_empty_cloud(results, tmp_path):
    from pipeline.formats.ply import write_ply
    from pipeline.stages.report import run_report

    _, scene_h5, depth_h5, *_ = results
    empty = tmp_path / "empty.ply"
    write_ply(empty, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    page = run_report(scene_h5, depth_h5, tmp_path / "r", fused_ply=empty, config=ReportConfig(max_views=1))
    names = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert all((tmp_path / "r" / n).is_file() for n in names)
    assert '<iframe src="cloud.html"' in page.read_text() and "0 of 0 points drawn" in page.read_text()
    assert "no points" in (tmp_path / "r" / "cloud.html").read_text()
    assert_picture(tmp_path / "r" / "view_1.png")


def test_bad_tables_are_named(results, tmp_path):
    from pipeline.report import read_benchmarks, training_figure

    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="bad.tsv.*benchmark"):
        read_benchmarks([bad])
    words = tmp_path / "words.csv"
    words.write_text("name,comment\nx,y\n")
    with pytest.raises(ValueError, match="words.csv.*no numeric"):
        training_figure(tmp_path / "t.png", words)


def test_cli_report(results, tmp_path):
    from pipeline.cli import main

    scene_dir, scene_h5, depth_h5, fused, eval_json, *_ = results
    out = tmp_path / "cli"
    config = tmp_path / "c.yaml"
    config.write_text("report: {max_views: 1, cloud_points: 1000, viewpoints: 1}\n")
    tsv = results[-1][0]
    # The argument order of rules/report.smk; a benchmark file not written yet is noted, not fatal.
    assert main(["report", str(scene_h5), str(depth_h5), str(fused), str(eval_json), str(out),
                 "--benchmarks", str(tsv), str(tmp_path / "train.tsv"), "--scene-dir", str(scene_dir),
                 "--config", str(config)]) == 0
    assert (out / "index.html").is_file() and (out / "cloud.html").is_file() and (out / "timings.png").is_file()
    assert "train.tsv not found" in (out / "index.html").read_text()


def test_view_figures_show_the_plane_filled_pixels(results, tmp_path):
    """A depth.h5 that marks plane-filled pixels (infer.plane_fill) gets a sixth panel and a caption
    saying what share of the view they are."""
    import dataclasses

    from pipeline.formats.depth_file import read_depth_file, write_depth_file
    from pipeline.stages.report import run_report

    scene_dir, scene_h5, depth_h5, fused, eval_json, csv, tsvs = results
    views = read_depth_file(depth_h5)
    marked = []
    for view in views.values():
        filled = np.zeros(view.depth.shape, bool)
        filled[: view.depth.shape[0] // 4] = True
        marked.append(dataclasses.replace(view, filled=filled))
    write_depth_file(tmp_path / "filled.h5", marked)
    config = ReportConfig(max_views=1, cloud_points=5000)
    plain = run_report(scene_h5, depth_h5, tmp_path / "plain", scene_dir=scene_dir, config=config)
    page = run_report(scene_h5, tmp_path / "filled.h5", tmp_path / "filled", scene_dir=scene_dir, config=config)
    assert "low-texture region" in page.read_text() and "25.0 %" in page.read_text()
    assert "low-texture region" not in plain.read_text()
    name = re.findall(r'<img src="(view_[^"]+)"', page.read_text())[0]
    with Image.open(tmp_path / "filled" / name) as wide, Image.open(tmp_path / "plain" / name) as narrow:
        assert wide.size[0] > narrow.size[0]
    assert_picture(tmp_path / "filled" / name)


@needs_chromium
def test_cloud_page_renders_in_a_browser(results, tmp_path):
    """The report's cloud page, opened from disk in headless Chromium, draws the cloud in its colours
    and the cameras; a page with the cameras but no points is told apart (the check can fail)."""
    from pipeline.formats.ply import read_ply, write_ply
    from pipeline.stages.report import run_report

    _, scene_h5, depth_h5, fused, *_ = results
    cloud = read_ply(fused)
    out = tmp_path / "report"
    run_report(scene_h5, depth_h5, out, fused_ply=fused, config=ReportConfig(max_views=1, cloud_points=5000))
    pixels = screenshot(out / "cloud.html", tmp_path / "cloud.png")
    drawn = cloud_pixels(pixels, cloud.rgb)
    camera = (np.abs(pixels.reshape(-1, 3).astype(int) - [0xE8, 0x59, 0x0C]).max(1) <= 24).sum()
    assert drawn > 0.01 * pixels.shape[0] * pixels.shape[1], f"only {drawn} pixels of the cloud's colours"
    assert len(np.unique(pixels.reshape(-1, 3) // 16, axis=0)) > 30, "too few colours for a textured cloud"
    assert camera > 200, f"cameras not drawn ({camera} orange pixels)"

    empty = tmp_path / "empty.ply"
    write_ply(empty, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    run_report(scene_h5, depth_h5, tmp_path / "none", fused_ply=empty, config=ReportConfig(max_views=1))
    bare = screenshot(tmp_path / "none" / "cloud.html", tmp_path / "none.png")
    assert cloud_pixels(bare, cloud.rgb) < 0.1 * drawn
    assert (np.abs(bare.reshape(-1, 3).astype(int) - [0xE8, 0x59, 0x0C]).max(1) <= 24).sum() > 200


def test_subsample_frusta_and_bad_input(tmp_path):
    from pipeline.report import CameraPose, cloud_page, subsample
    from pipeline.report.cloud import frustum_lines

    pick = subsample(1000, 100, seed=0)
    assert len(pick) == 100 and len(np.unique(pick)) == 100 and np.all(np.diff(pick) > 0)
    assert np.array_equal(pick, subsample(1000, 100, seed=0))
    assert not np.array_equal(pick, subsample(1000, 100, seed=1))
    assert np.array_equal(subsample(50, 100), np.arange(50))

    # A camera at world (0, 0, -5) looking along +z (R = I, t = (0, 0, 5)): the pyramid's apex is its
    # centre and the image corners lie at the requested depth, at the field of view's half-widths.
    K = np.array([[50.0, 0, 40], [0, 50, 30], [0, 0, 1]])
    camera = CameraPose("view 1", K, np.hstack([np.eye(3), [[0], [0], [5]]]), 80, 60)
    lines = frustum_lines([camera], depth=2.0)
    points = lines[np.isfinite(lines).all(1)]
    assert np.allclose(points[0], [0, 0, -5])
    corners = points[np.isclose(points[:, 2], -3.0)]
    assert np.allclose(np.abs(corners[:, 0]).max(), 2.0 * 40 / 50)
    rows = np.unique(corners[:, 1].round(9))
    assert np.allclose(rows, [-2.0 * (30 + 9) / 50, -2.0 * 30 / 50, 2.0 * 30 / 50])
    # ...and the marker's tip (15 % of the image height beyond the top edge) points to -y, the image's up.

    # Without colours the points take a colour scale; points without coordinates are left out.
    xyz = np.vstack([np.random.default_rng(0).normal(size=(300, 3)), [[np.nan, 0, 0]]])
    page = cloud_page(tmp_path / "plain.html", xyz, None, [camera], max_points=100).read_text()
    assert "#440154" in page and "100 of 301 points" in page and "view 1" in page  # viridis's first stop
    assert (tmp_path / "plotly.min.js").is_file()

    with pytest.raises(ValueError, match=r"\(N, 3\) colours"):
        cloud_page(tmp_path / "c.html", np.zeros((5, 3)), np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3\) points"):
        cloud_page(tmp_path / "c.html", np.zeros((5, 2)), None)
