"""Evaluation: metric definitions on hand-made clouds, and the evaluate stage on the box scene."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.config import EvaluateConfig, FuseConfig
from pipeline.evaluation import (
    cloud_metrics,
    depth_errors,
    depth_summary,
    resample_nearest,
    sparse_depth_errors,
    voxel_downsample,
)
from test_fusion import write_box_scene


def test_cloud_metrics_of_a_shifted_copy():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 1, size=(2000, 3))
    fused = gt + np.array([0.01, 0.0, 0.0])
    result = cloud_metrics(fused, gt, thresholds=[0.005, 0.02], cap=0.1)
    # Nearest GT point of a shifted copy is at most the shift away (often the original point).
    assert 0 < result["accuracy_mean"] <= 0.01 + 1e-12
    assert result["accuracy_outlier_fraction"] == 0.0
    assert result["overall"] == pytest.approx((result["accuracy_mean"] + result["completeness_mean"]) / 2)
    loose = result["per_threshold"][1]
    assert loose["tau"] == 0.02 and loose["precision"] == 1.0 and loose["recall"] == 1.0 and loose["fscore"] == 1.0


def test_cloud_metrics_known_values_and_outlier_cap():
    gt = np.array([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]])
    fused = np.array([[0.0, 0.1, 0], [1.0, 0.3, 0], [10.0, 0, 0]])  # distances 0.1, 0.3, 7 (an outlier)
    result = cloud_metrics(fused, gt, thresholds=[0.2], cap=1.0)
    assert result["accuracy_mean"] == pytest.approx(0.2)  # the outlier is left out of the mean
    assert result["accuracy_median"] == pytest.approx(0.2)
    assert result["accuracy_outlier_fraction"] == pytest.approx(1 / 3)
    # GT -> fused: 0.1, 0.3, sqrt(1 + 0.09) ~ 1.044 (> cap), 3.16 (> cap)
    assert result["completeness_mean"] == pytest.approx(0.2)
    assert result["completeness_outlier_fraction"] == pytest.approx(0.5)
    row = result["per_threshold"][0]
    assert row["precision"] == pytest.approx(1 / 3) and row["recall"] == pytest.approx(1 / 4)
    assert row["fscore"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))


def test_cloud_metrics_of_an_empty_cloud():
    gt = np.zeros((5, 3))
    result = cloud_metrics(np.zeros((0, 3)), gt, thresholds=[0.1], cap=1.0)
    assert result["accuracy_mean"] is None and result["overall"] is None
    assert result["completeness_outlier_fraction"] == 1.0
    assert result["per_threshold"][0]["recall"] == 0.0 and result["per_threshold"][0]["fscore"] == 0.0


def test_voxel_downsample_keeps_one_point_per_voxel():
    points = np.array([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.55, 0.55, 0.55], [0.56, 0.55, 0.55]])
    kept = voxel_downsample(points, 0.1)
    np.testing.assert_array_equal(kept, points[[0, 2]])
    np.testing.assert_array_equal(voxel_downsample(points, 0.0), points)


def test_depth_errors_and_resampling():
    gt = np.array([[1.0, 2.0], [0.0, 4.0]], dtype=np.float32)
    estimate = np.array([[1.01, 0.0], [3.0, 4.4]], dtype=np.float32)
    rel, with_gt, covered = depth_errors(estimate, gt)
    assert with_gt == 3 and covered == 2
    np.testing.assert_allclose(np.sort(rel), [0.01, 0.1], rtol=1e-5)
    summary = depth_summary(rel, with_gt, covered, [0.005, 0.02])
    assert summary["depth_coverage"] == pytest.approx(2 / 3)
    assert summary["depth_within_0.02"] == 0.5 and summary["depth_within_0.005"] == 0.0
    # A GT map twice the size is read at the estimate's pixel centres.
    big = np.kron(gt, np.ones((2, 2), dtype=np.float32))
    np.testing.assert_array_equal(resample_nearest(big, 2, 2), gt)


def test_gt_is_read_through_the_cameras_of_a_crop_and_a_scaling():
    # A GT map whose depth changes along every row and column (a slanted floor), the estimate on
    # the centred crop prepare makes (300 -> 296 rows: 2 rows off the top, cy - 2): read through
    # the intrinsics it matches exactly; read as a pure rescaling (the old behaviour) it is off by
    # up to two rows, which on a slanted floor is a percent-level error.
    rows, cols = np.mgrid[0:300, 0:400]
    gt = (2.0 + 0.05 * rows + 0.001 * cols).astype(np.float32)
    gt_K = np.array([[327.0, 0.0, 202.8], [0.0, 327.0, 148.8], [0.0, 0.0, 1.0]])
    crop_K = gt_K.copy()
    crop_K[1, 2] -= 2.0
    estimate = gt[2:298].copy()
    rel, with_gt, covered = depth_errors(estimate, gt, gt_K=gt_K, estimate_K=crop_K)
    assert with_gt == covered == 296 * 400 and rel.max() == 0.0
    rel_scaled, _, _ = depth_errors(estimate, gt)
    assert rel_scaled.max() > 0.005
    # Half resolution: K scaled by 0.5 in COLMAP's convention; each estimate pixel reads one of
    # the four GT pixels it covers, so the error is at most one GT pixel's change of depth.
    half_K = np.diag([0.5, 0.5, 1.0]) @ gt_K
    half = gt[::2, ::2] + 0.5 * (0.05 + 0.001)
    rel, with_gt, _ = depth_errors(half, gt, gt_K=gt_K, estimate_K=half_K)
    assert with_gt == 150 * 200 and rel.max() <= 0.051 / 2.0
    # An estimate camera that sees past the GT's border (a wider crop) has no GT there.
    wide_K = gt_K.copy()
    wide_K[0, 2] += 10.0
    wide = np.pad(gt, ((0, 0), (10, 0)), constant_values=1.0)
    rel, with_gt, covered = depth_errors(wide, gt, gt_K=gt_K, estimate_K=wide_K)
    assert with_gt == 300 * 400 and rel.max() == 0.0
    with pytest.raises(ValueError, match="both"):
        resample_nearest(gt, 296, 400, gt_K, None)


def test_sparse_depth_errors_project_into_the_view():
    K = np.array([[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]])
    cam_from_world = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    depth = np.full((10, 10), 2.0, dtype=np.float32)
    points = np.array([[0.0, 0.0, 2.0], [0.1, 0.1, 2.2], [5.0, 0.0, 2.0]])  # last one projects outside
    errors = sparse_depth_errors(depth, K, cam_from_world, points)
    np.testing.assert_allclose(np.sort(errors), [0.0, 0.2 / 2.2], rtol=1e-6)


@pytest.fixture(scope="module")
def fused_box(tmp_path_factory):
    """The box scene at 128x96 fused from its GT depth maps (confidence 1)."""
    from pipeline.stages.fuse import run_fuse

    folder = tmp_path_factory.mktemp("evaluate")
    scene_dir, scene_h5, depth_h5, _ = write_box_scene(folder, num_views=8, width=128, height=96, gt_spacing=0.01)
    fused = folder / "fused.ply"
    run_fuse(scene_h5, depth_h5, fused, FuseConfig(device="cpu", min_consistent_views=1))
    return scene_dir, scene_h5, depth_h5, fused


def test_ground_truth_depths_give_full_fscore(fused_box, tmp_path):
    """The done-test: GT depth maps fused and evaluated give ~100 % F-score at a tight threshold."""
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = fused_box
    # A pixel spans about 0.03 scene units here; tau = 0.01 of the 4.3-unit diagonal = 0.043.
    result = run_evaluate(scene_dir, scene_h5, depth_h5, fused, tmp_path / "eval.json",
                          EvaluateConfig(threshold_fractions=(0.01,)))
    metrics = result["metrics"]
    key = next(k for k in metrics if k.startswith("fscore@"))
    assert metrics[key]["tau_fraction_of_scale"] == pytest.approx(0.01)
    assert metrics[key]["value"] > 0.97
    assert metrics[key.replace("fscore", "precision")]["value"] > 0.999
    assert metrics["accuracy_mean"]["value"] < 0.01
    assert metrics["depth_abs_rel_mean"]["value"] == 0.0 and metrics["depth_coverage"]["value"] == 1.0
    assert metrics["fused_depth_abs_rel_mean"]["value"] == 0.0
    assert metrics["sparse_rel_error_median"]["value"] < 0.01
    assert metrics["sparse_support"]["value"] > 0.9
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["kind"] == "selfmvs.eval" and on_disk["ground_truth"] is True
    for name, entry in on_disk["metrics"].items():
        assert entry["definition"] and "unit" in entry, name
    assert set(on_disk["per_view"]) == {str(i) for i in range(1, 9)}


def test_wrong_depths_lower_the_scores(fused_box, tmp_path):
    from pipeline.formats.depth_file import read_depth_file, write_depth_file
    from pipeline.stages.evaluate import run_evaluate
    from pipeline.stages.fuse import run_fuse

    scene_dir, scene_h5, depth_h5, _ = fused_box
    views = read_depth_file(depth_h5)
    rng = np.random.default_rng(0)
    for view in views.values():
        view.depth = view.depth * (1 + 0.03 * rng.standard_normal(view.depth.shape)).astype(np.float32)
    noisy = tmp_path / "noisy.h5"
    write_depth_file(noisy, views.values())
    fused = tmp_path / "noisy.ply"
    run_fuse(scene_h5, noisy, fused, FuseConfig(device="cpu", min_consistent_views=1))
    result = run_evaluate(scene_dir, scene_h5, noisy, fused, tmp_path / "eval.json",
                          EvaluateConfig(threshold_fractions=(0.01,)))
    metrics = result["metrics"]
    assert metrics["depth_abs_rel_mean"]["value"] == pytest.approx(0.03 * np.sqrt(2 / np.pi), rel=0.1)
    assert metrics["depth_within_0.01"]["value"] == pytest.approx(0.26, abs=0.03)  # P(|N(0, 3)| <= 1)
    # Fusion keeps the consistent pixels only: their depth error is smaller than the raw maps'.
    assert metrics["fused_depth_abs_rel_mean"]["value"] < metrics["depth_abs_rel_mean"]["value"]
    key = next(k for k in metrics if k.startswith("fscore@"))
    assert metrics[key]["value"] < 0.9


def test_without_ground_truth_and_with_a_foreign_gt_layout(fused_box, tmp_path, caplog):
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = fused_box
    bare = tmp_path / "bare"
    bare.mkdir()
    result = run_evaluate(bare, scene_h5, depth_h5, fused, tmp_path / "a.json")
    assert result["ground_truth"] is False and result["warnings"] == []
    assert "accuracy_mean" not in result["metrics"] and "depth_abs_rel_mean" not in result["metrics"]
    assert result["metrics"]["sparse_rel_error_median"]["value"] < 0.01
    assert "sparse points" in result["settings"]["reference_scale"]["definition"]

    foreign = tmp_path / "foreign"
    (foreign / "gt").mkdir(parents=True)
    (foreign / "gt" / "points.ply").write_text("not a ply\n")
    (foreign / "gt" / "stl").mkdir()
    result = run_evaluate(foreign, scene_h5, depth_h5, fused, tmp_path / "b.json")
    assert result["ground_truth"] is False
    assert any("points.ply" in w for w in result["warnings"]) and any("depth.h5" in w for w in result["warnings"])
    assert "not usable as GT points" in caplog.text


def test_cli_evaluate(fused_box, tmp_path):
    from pipeline.cli import main

    scene_dir, scene_h5, depth_h5, fused = fused_box
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(scene_dir), str(scene_h5), str(depth_h5), str(fused), str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["num_fused_points"]["value"] > 0
    assert main(["evaluate", str(scene_dir), str(scene_h5), str(depth_h5), str(tmp_path / "none.ply"), str(out)]) == 1


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A scene of the synthetic renderer, prepared, with its GT depth maps as depth.h5 (confidence 1)."""
    from pipeline.formats.depth_file import read_depth_file, write_depth_file
    from pipeline.stages.fuse import run_fuse
    from pipeline.stages.prepare import run_prepare
    from pipeline.synth import render_scene

    folder = tmp_path_factory.mktemp("rendered")
    scene_dir = render_scene(folder / "scene", seed=3, num_views=5, width=128, height=96, num_gt_points=100_000)
    run_prepare(scene_dir, folder / "scene.h5")
    views = read_depth_file(scene_dir / "gt" / "depth.h5")
    for view in views.values():
        view.confidence = np.ones_like(view.depth)
    write_depth_file(folder / "depth.h5", views.values(), {"checkpoint": "ground truth"})
    run_fuse(folder / "scene.h5", folder / "depth.h5", folder / "fused.ply",
             FuseConfig(device="cpu", min_consistent_views=1))
    return scene_dir, folder / "scene.h5", folder / "depth.h5", folder / "fused.ply"


def test_rendered_scene_depth_and_sparse_metrics(rendered, tmp_path):
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = rendered
    metrics = run_evaluate(scene_dir, scene_h5, depth_h5, fused, tmp_path / "eval.json")["metrics"]
    assert metrics["depth_abs_rel_mean"]["value"] == 0.0 and metrics["depth_coverage"]["value"] == 1.0
    # Sparse points carry keypoint noise and are read at the nearest pixel: small, not zero.
    assert metrics["sparse_rel_error_median"]["value"] < 0.01
    assert metrics["sparse_support"]["value"] > 0.9
    assert metrics["completeness_median"]["value"] < 0.005 * 15


def test_rendered_scene_gt_depths_give_full_fscore(rendered, tmp_path):
    """The done-test on the renderer's scene: GT depths fused -> precision ~1, F-score ~1 at tau = 1 %."""
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = rendered
    metrics = run_evaluate(scene_dir, scene_h5, depth_h5, fused, tmp_path / "eval.json",
                           EvaluateConfig(threshold_fractions=(0.01,)))["metrics"]
    key = next(k for k in metrics if k.startswith("fscore@"))
    assert metrics[key.replace("fscore", "precision")]["value"] > 0.99
    # Measured 0.9994 (recall 0.9989) once gt/points.ply sampled only surfaces two views see.
    assert metrics[key]["value"] > 0.99


def test_empty_fused_cloud_gives_null_accuracy(fused_box, tmp_path):
    from pipeline.formats.ply import write_ply
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, _ = fused_box
    empty = tmp_path / "empty.ply"
    write_ply(empty, np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    result = run_evaluate(scene_dir, scene_h5, depth_h5, empty, tmp_path / "eval.json")
    metrics = result["metrics"]
    assert metrics["num_fused_points"]["value"] == 0
    assert metrics["accuracy_mean"]["value"] is None and metrics["completeness_outlier_fraction"]["value"] == 1.0
    assert metrics["sparse_support"]["value"] == 0.0
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["overall"]["value"] is None


def test_plane_filled_pixels_are_scored_apart(fused_box, tmp_path):
    """depth.h5 views with a `filled` mask: eval.json scores the filled pixels and the network's apart
    (here the filled half is exact and the other half 3 % off), and says what share was filled."""
    from pipeline.formats.depth_file import read_depth_file, write_depth_file
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = fused_box
    views = read_depth_file(depth_h5)
    for view in views.values():
        view.filled = np.zeros(view.depth.shape, bool)
        view.filled[:, : view.depth.shape[1] // 2] = True
        view.depth = np.where(view.filled, view.depth, view.depth * 1.03).astype(np.float32)
    marked = tmp_path / "marked.h5"
    write_depth_file(marked, views.values())
    metrics = run_evaluate(scene_dir, scene_h5, marked, fused, tmp_path / "eval.json")["metrics"]
    assert metrics["plane_filled_fraction"]["value"] == pytest.approx(0.5)
    assert metrics["filled_depth_within_0.01"]["value"] == 1.0
    assert metrics["network_depth_within_0.01"]["value"] == 0.0
    assert metrics["network_depth_abs_rel_median"]["value"] == pytest.approx(0.03, rel=1e-4)
    half = metrics["pixels_with_gt"]["value"] / 2
    assert metrics["filled_pixels_with_gt"]["value"] == pytest.approx(half, rel=0.05)
    unmarked = run_evaluate(scene_dir, scene_h5, depth_h5, fused, tmp_path / "plain.json")["metrics"]
    assert "plane_filled_fraction" not in unmarked and "filled_depth_within_0.01" not in unmarked


def test_nan_and_negative_depth_are_counted_per_view(fused_box, tmp_path, caplog):
    """Pixels that are not a depth are dropped aloud: eval.json `warnings` and the log give the count per view."""
    from pipeline.formats.depth_file import read_depth_file, write_depth_file
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = fused_box
    views = read_depth_file(depth_h5)
    views[2].depth[:3, :] = np.nan  # 3 rows of 128
    views[5].depth[0, :10] = -1.0
    views[5].depth[1, :2] = np.inf
    bad = tmp_path / "bad.h5"
    write_depth_file(bad, views.values())
    with caplog.at_level("WARNING"):
        result = run_evaluate(scene_dir, scene_h5, bad, fused, tmp_path / "eval.json")
    expected = [f"{bad}: view 2 (view002.png): 384 NaN/inf and 0 negative depth pixels of 12288 dropped",
                f"{bad}: view 5 (view005.png): 2 NaN/inf and 10 negative depth pixels of 12288 dropped"]
    on_disk = json.loads((tmp_path / "eval.json").read_text())["warnings"]
    for text in expected:
        assert any(w.startswith(text) for w in on_disk), (text, on_disk)
        assert text in caplog.text
    assert len(on_disk) == 2 and result["per_view"]["5"]["pixels_dropped"] == 12
    assert "pixels_dropped" not in result["per_view"]["1"]


def test_nothing_to_evaluate_fails(fused_box, tmp_path):
    from pipeline.formats.depth_file import read_depth_file, write_depth_file
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = fused_box
    views = read_depth_file(depth_h5)
    for view in views.values():
        view.depth = np.where(np.arange(view.depth.size).reshape(view.depth.shape) % 2, np.nan, -view.depth)
    bad = tmp_path / "bad.h5"
    write_depth_file(bad, views.values())
    with pytest.raises(ValueError, match=r"bad\.h5: no pixel with a finite positive depth in 8 view\(s\) "
                       r"\(98304 pixels\): nothing to evaluate"):
        run_evaluate(scene_dir, scene_h5, bad, fused, tmp_path / "eval.json")
    assert not (tmp_path / "eval.json").exists()


def test_eval_json_reader_checks_kind_and_version(fused_box, tmp_path):
    from pipeline.formats.eval_json import EvalFormatError, read_eval_json
    from pipeline.stages.evaluate import run_evaluate

    scene_dir, scene_h5, depth_h5, fused = fused_box
    result = run_evaluate(scene_dir, scene_h5, depth_h5, fused, tmp_path / "eval.json")
    document = read_eval_json(tmp_path / "eval.json")
    assert document["format_version"] == 1 and document["metrics"].keys() == result["metrics"].keys()
    (tmp_path / "v2.json").write_text(json.dumps({**document, "format_version": 2}))
    with pytest.raises(EvalFormatError, match=r"v2\.json: format_version 2; this selfmvs reads version 1"):
        read_eval_json(tmp_path / "v2.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(EvalFormatError, match=r"other\.json: not an eval.json"):
        read_eval_json(tmp_path / "other.json")


def test_a_fine_tuning_cut_short_by_its_time_limit_is_a_warning_in_eval_json(fused_box, tmp_path, caplog):
    """The time limit is only a safety stop: when it fires, eval.json says so, not only train's log."""
    from pipeline.cli import main
    from pipeline.formats.loss_log import write_run_summary

    scene_dir, scene_h5, depth_h5, fused = fused_box
    finished, cut = tmp_path / "finished.json", tmp_path / "cut.json"
    write_run_summary(finished, {"mode": "finetune", "steps_planned": 54, "steps_done": 54, "stopped_early": None})
    write_run_summary(cut, {"mode": "finetune", "steps_planned": 54, "steps_done": 11,
                            "stopped_early": {"reason": "max_seconds", "max_seconds": 1800.0,
                                              "steps_done": 11, "steps_planned": 54}})
    for summary in (finished, cut):
        out = tmp_path / f"eval_{summary.stem}.json"
        assert main(["evaluate", str(scene_dir), str(scene_h5), str(depth_h5), str(fused), str(out),
                     "--training-summary", str(summary)]) == 0
    quiet = json.loads((tmp_path / "eval_finished.json").read_text())
    loud = json.loads((tmp_path / "eval_cut.json").read_text())
    assert quiet["training"]["steps_done"] == 54 and not any("STOPPED EARLY" in w for w in quiet["warnings"])
    assert loud["training"]["steps_done"] == 11
    assert any("STOPPED EARLY" in w and "11 of 54" in w for w in loud["warnings"]), loud["warnings"]
    assert "STOPPED EARLY" in caplog.text
