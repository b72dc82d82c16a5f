"""Report: every PNG opens, has the expected size and is not blank; the page references them."""

from __future__ import annotations

import re

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
    assert {"cloud.png", "scores.png", "training.png", "timings.png"} <= set(referenced)
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
    assert "cloud.png" in names and all((tmp_path / "r" / n).is_file() for n in names)
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
    assert (out / "index.html").is_file() and (out / "cloud.png").is_file() and (out / "timings.png").is_file()
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
