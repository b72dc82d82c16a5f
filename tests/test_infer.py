"""The infer stage: scene.h5 + checkpoint -> depth.h5 with the documented layout, resumable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.config import InferConfig, PlaneFillConfig
from pipeline.formats.depth_file import DepthView, DepthWriter, read_depth_attrs, read_depth_file
from pipeline.formats.scene_file import Scene, SceneView, write_scene
from pipeline.model import ModelConfig, PatchmatchNet, save_checkpoint
from pipeline.inference import plane_fill_setting
from pipeline.formats.paths import file_sha256
from pipeline.stages.infer import run_infer

REPO = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(iterations=(1, 1, 1), num_initial_hypotheses=16)


def _look_at_origin(position: np.ndarray) -> np.ndarray:
    """cam_from_world (3, 4) of a camera at ``position`` looking at the world origin."""
    forward = -position / np.linalg.norm(position)
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return np.hstack([rotation, (-rotation @ position)[:, None]])


def make_scene(path, sizes=((24, 32), (24, 32), (20, 30), (24, 32)), with_mask=True, seed=0):
    rng = np.random.default_rng(seed)
    views = {}
    ids = [10 + i for i in range(len(sizes))]
    for index, (image_id, (height, width)) in enumerate(zip(ids, sizes)):
        K = np.array([[0.9 * width, 0, width / 2], [0, 0.9 * width, height / 2], [0, 0, 1]])
        mask = None
        if with_mask:
            mask = np.ones((height, width), bool)
            mask[:2] = False
        others = [i for i in ids if i != image_id]
        views[image_id] = SceneView(
            image_id=image_id,
            name=f"img_{index:02d}.png",
            image=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            K=K,
            cam_from_world=_look_at_origin(np.array([0.3 * index - 0.45, 0.05 * index, -4.0])),
            depth_range=np.array([2.0, 6.0]),
            num_depth=48,
            source_ids=np.array(others, np.int64),
            source_scores=np.linspace(1.0, 0.5, len(others)),
            mask=mask,
            point3D_ids=np.zeros(0, np.int64),
            width=width,
            height=height,
        )
    scene = Scene(
        views=views,
        points3D_ids=np.zeros(0, np.int64),
        points3D_xyz=np.zeros((0, 3)),
        points3D_rgb=np.zeros((0, 3), np.uint8),
    )
    write_scene(path, scene)
    return scene


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors gain nothing from threads; on a shared machine one thread avoids waiting on barriers."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", PatchmatchNet(SMALL), {"epoch": 0})


def test_infer_writes_the_documented_layout(tmp_path, checkpoint):
    scene = make_scene(tmp_path / "scene.h5")
    out = run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "depth.h5", InferConfig(num_sources=2, device="cpu"))
    assert out == tmp_path / "depth.h5" and out.is_file()
    assert not (tmp_path / "depth.h5.partial").exists()
    views = read_depth_file(out)
    assert sorted(views) == sorted(scene.views)
    for image_id, view in views.items():
        source = scene.views[image_id]
        assert view.name == source.name
        assert view.depth.shape == (source.height, source.width) and view.depth.dtype == np.float32
        assert view.confidence.shape == view.depth.shape and view.confidence.dtype == np.float32
        np.testing.assert_allclose(view.K, source.K)
        np.testing.assert_allclose(view.cam_from_world, source.cam_from_world)
        valid = source.mask
        assert (view.depth[~valid] == 0).all() and (view.confidence[~valid] == 0).all()
        assert (view.depth[valid] >= 2.0 - 1e-5).all() and (view.depth[valid] <= 6.0 + 1e-5).all()
        assert (view.confidence >= 0).all() and (view.confidence <= 1).all()
    attrs = read_depth_attrs(out)
    assert attrs["kind"] == "selfmvs.depth" and attrs["format_version"] == 1
    assert attrs["checkpoint"] == str(checkpoint)
    assert attrs["num_sources"] == 2
    with h5py.File(out) as handle:
        assert set(handle["views"]) == {str(i) for i in scene.views}


def test_infer_max_size_scales_depth_and_K(tmp_path, checkpoint):
    scene = make_scene(tmp_path / "scene.h5", sizes=((40, 64), (40, 64), (32, 48)), with_mask=False)
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "depth.h5", InferConfig(device="cpu", max_size=32))
    views = read_depth_file(tmp_path / "depth.h5")
    first = views[10]
    assert first.depth.shape == (20, 32)
    np.testing.assert_allclose(first.K, np.diag([0.5, 0.5, 1.0]) @ scene.views[10].K)
    assert views[12].depth.shape == (21, 32)  # 32x48 -> round(32 * 2/3) = 21 rows
    np.testing.assert_allclose(views[12].K[0], scene.views[12].K[0] * 32 / 48)
    np.testing.assert_allclose(views[12].K[1], scene.views[12].K[1] * 21 / 32)


def test_infer_resumes_from_a_partial_file(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5")
    out = tmp_path / "depth.h5"
    marker = DepthView(11, "img_01.png", np.full((24, 32), 7.0, np.float32), None, np.eye(3), np.eye(3, 4))
    attrs = {"checkpoint": str(checkpoint), "scene": str(tmp_path / "scene.h5"), "num_sources": 1,
             "model_config": json.dumps(SMALL.to_dict()), "flip_average": 1,
             "plane_fill": plane_fill_setting(PlaneFillConfig()),
             "checkpoint_sha256": file_sha256(checkpoint), "scene_sha256": file_sha256(tmp_path / "scene.h5"),
             "max_size": 0, "mask_invalid": 1, "device": "cpu"}
    with pytest.raises(KeyboardInterrupt):
        with DepthWriter(out, attrs) as writer:
            writer.write(marker)
            raise KeyboardInterrupt  # an interrupted run leaves the partial file
    assert (tmp_path / "depth.h5.partial").exists() and not out.exists()
    run_infer(tmp_path / "scene.h5", checkpoint, out, InferConfig(num_sources=1, device="cpu"))
    views = read_depth_file(out)
    assert sorted(views) == [10, 11, 12, 13]
    assert (views[11].depth == 7.0).all()  # the finished view was not recomputed
    assert not (views[10].depth == 7.0).all()


def test_infer_skips_views_without_sources(tmp_path, checkpoint, caplog):
    scene = make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32)))
    scene.views[11].source_ids = np.zeros(0, np.int64)
    scene.views[11].source_scores = np.zeros(0)
    write_scene(tmp_path / "scene.h5", scene)
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "depth.h5", InferConfig(device="cpu"))
    assert sorted(read_depth_file(tmp_path / "depth.h5")) == [10]
    assert "no source view" in caplog.text


def test_infer_bad_inputs(tmp_path, checkpoint):
    scene = make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32)))
    with pytest.raises(ValueError, match="num_sources"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "d.h5", InferConfig(num_sources=0))
    with pytest.raises(ValueError, match="device"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "d.h5", InferConfig(device="tpu"))
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        run_infer(tmp_path / "absent.h5", checkpoint, tmp_path / "d.h5")
    scene.views[10].depth_range = np.array([3.0, 1.0])
    write_scene(tmp_path / "bad.h5", scene)
    with pytest.raises(ValueError, match=r"bad\.h5.*view 10.*depth_range"):
        run_infer(tmp_path / "bad.h5", checkpoint, tmp_path / "d.h5", InferConfig(device="cpu"))
    assert not (tmp_path / "d.h5").exists()


def test_cli_infer(tmp_path, checkpoint, capsys):
    make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32)))
    config = tmp_path / "config.yaml"
    config.write_text("infer:\n  num_sources: 1\n")
    code = cli_main(["infer", str(tmp_path / "scene.h5"), str(checkpoint), str(tmp_path / "depth.h5"),
                     "--config", str(config), "--device", "cpu"])
    assert code == 0
    assert read_depth_attrs(tmp_path / "depth.h5")["num_sources"] == 1
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    code = cli_main(["infer", str(tmp_path / "scene.h5"), str(tmp_path / "broken.pt"), str(tmp_path / "d2.h5")])
    assert code == 1
    assert "broken.pt" in capsys.readouterr().err


def test_feature_cache_changes_nothing_but_the_work(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5")
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "a.h5", InferConfig(device="cpu", feature_cache=0))
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "b.h5", InferConfig(device="cpu", feature_cache=6))
    a, b = read_depth_file(tmp_path / "a.h5"), read_depth_file(tmp_path / "b.h5")
    for image_id in a:
        np.testing.assert_array_equal(a[image_id].depth, b[image_id].depth)
        np.testing.assert_array_equal(a[image_id].confidence, b[image_id].confidence)
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "d.h5", InferConfig(device="cpu", feature_cache=None))
    d = read_depth_file(tmp_path / "d.h5")
    for image_id in a:
        np.testing.assert_array_equal(a[image_id].depth, d[image_id].depth)
    with pytest.raises(ValueError, match="feature_cache"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "c.h5", InferConfig(feature_cache=-1))
    with pytest.raises(ValueError, match="mmap_threshold_kib"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "c.h5", InferConfig(mmap_threshold_kib=65536))


def test_mmap_threshold_is_set_through_mallopt():
    """glibc (this project's Linux machines) takes the threshold; elsewhere the line says why not."""
    import platform

    from pipeline.inference import set_mmap_threshold

    line = set_mmap_threshold(512)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert line.startswith("mmap threshold 512 KiB (")
    else:
        assert "not set" in line


def test_view_cache_reuses_prepared_views(tmp_path, checkpoint):
    from pipeline.model import load_checkpoint
    from pipeline.inference import ViewCache

    make_scene(tmp_path / "scene.h5")
    model, _ = load_checkpoint(checkpoint)
    cache = ViewCache(model, tmp_path / "scene.h5", torch.device("cpu"), capacity=2)
    first = cache.get(10)
    assert cache.get(10) is first and (cache.hits, cache.misses) == (1, 1)
    cache.get(11)
    cache.get(12)  # evicts 10, the least recently used
    assert cache.get(10) is not first and cache.misses == 4
    assert first.image.shape == (1, 3, 24, 32) and set(first.features) == {1, 2, 3}
    # a cached view keeps its image's size, not its pixels (the features carry what the network reads)
    assert first.image.stride() == (0, 0, 0, 0) and first.image.untyped_storage().nbytes() <= 4
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in first.features.values())


def test_estimate_view_equals_the_network_on_the_images(tmp_path, checkpoint):
    """The cached sources hand the network placeholders for their images: same depth as the images."""
    from pipeline.formats.scene_file import read_view
    from pipeline.model import load_checkpoint
    from pipeline.inference import ViewCache, estimate_view, prepare_view

    make_scene(tmp_path / "scene.h5", with_mask=False)
    model, _ = load_checkpoint(checkpoint)
    cache = ViewCache(model, tmp_path / "scene.h5", torch.device("cpu"), capacity=4)
    views = [read_view(tmp_path / "scene.h5", image_id) for image_id in (10, 11, 12)]
    with torch.inference_mode():
        got = estimate_view(model, views[0], [cache.get(11), cache.get(12)], cache)
        prepared = [prepare_view(view, None, torch.device("cpu")) for view in views]
        expected = model(
            [image for image, _ in prepared],
            [torch.from_numpy(K).float()[None] for _, K in prepared],
            [torch.from_numpy(view.cam_from_world_4x4).float()[None] for view in views],
            torch.tensor([float(views[0].depth_range[0])]),
            torch.tensor([float(views[0].depth_range[1])]),
        )
    torch.testing.assert_close(torch.from_numpy(got.depth), expected.depth[0, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got.confidence), expected.confidence[0, 0], rtol=1e-5, atol=1e-4)


def test_view_cache_with_a_schedule_evicts_the_view_needed_last(tmp_path, checkpoint):
    from pipeline.model import load_checkpoint
    from pipeline.inference import ViewCache

    make_scene(tmp_path / "scene.h5")
    model, _ = load_checkpoint(checkpoint)
    schedule = [10, 11, 12, 10, 11]
    lru = ViewCache(model, tmp_path / "scene.h5", torch.device("cpu"), capacity=2)
    planned = ViewCache(model, tmp_path / "scene.h5", torch.device("cpu"), capacity=2, schedule=schedule)
    for image_id in schedule:
        lru.get(image_id)
        planned.get(image_id)
    # LRU: 12 evicts 10, 10 evicts 11, 11 evicts 12 -> every read a miss. Belady: 12 is never
    # needed again, so it is the one that leaves; 10 and 11 then hit.
    assert (lru.hits, lru.misses) == (0, 5)
    assert (planned.hits, planned.misses) == (2, 3)
    # Calls beyond the schedule: every view counts as never needed again, and among equals the
    # least recently used leaves (10, then 11 were hit last: 12 evicts 10, so 10 misses again).
    planned.get(12)
    planned.get(10)
    assert (planned.hits, planned.misses) == (2, 5)


def test_infer_does_not_resume_another_runs_partial_file(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32)))
    out = tmp_path / "depth.h5"
    marker = DepthView(11, "img_01.png", np.full((24, 32), 7.0, np.float32), None, np.eye(3), np.eye(3, 4))
    with pytest.raises(KeyboardInterrupt):
        with DepthWriter(out, {"checkpoint": "other.pt"}) as writer:
            writer.write(marker)
            raise KeyboardInterrupt
    run_infer(tmp_path / "scene.h5", checkpoint, out, InferConfig(device="cpu"))
    assert not (read_depth_file(out)[11].depth == 7.0).all()


def test_infer_model_overrides_act_like_a_checkpoint_with_that_config(tmp_path, checkpoint):
    """infer.model replaces the checkpoint's hypothesis settings for the run (and says so in depth.h5)."""
    import dataclasses

    from pipeline.model import CheckpointError, load_checkpoint

    make_scene(tmp_path / "scene.h5")
    overrides = {"iterations": [1, 3, 1], "num_initial_hypotheses": 8, "num_perturbation_hypotheses": [4, 1, 16]}
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "o.h5", InferConfig(device="cpu", model=overrides))
    model, _ = load_checkpoint(checkpoint)
    changed = dataclasses.replace(SMALL, iterations=(1, 3, 1), num_initial_hypotheses=8, num_perturbation_hypotheses=(4, 1, 16))
    same_weights = PatchmatchNet(changed)
    same_weights.load_state_dict(model.state_dict())
    other = save_checkpoint(tmp_path / "changed.pt", same_weights, {})
    run_infer(tmp_path / "scene.h5", other, tmp_path / "c.h5", InferConfig(device="cpu"))
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "d.h5", InferConfig(device="cpu"))
    o, c, d = (read_depth_file(tmp_path / f"{n}.h5") for n in "ocd")
    for image_id in o:
        np.testing.assert_array_equal(o[image_id].depth, c[image_id].depth)
    assert any(not np.array_equal(o[i].depth, d[i].depth) for i in o)  # the override did act
    stored = json.loads(read_depth_attrs(tmp_path / "o.h5")["model_config"])
    assert stored["iterations"] == [1, 3, 1] and stored["num_perturbation_hypotheses"] == [4, 1, 16]
    # Settings the weights do not fit, and unknown ones, name infer.model and the culprit.
    with pytest.raises(CheckpointError, match=r"infer\.model.*offset_conv"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "e.h5",
                  InferConfig(device="cpu", model={"propagation_neighbors": [0, 4, 8]}))
    with pytest.raises(CheckpointError, match=r"infer\.model.*bogus"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "e.h5", InferConfig(device="cpu", model={"bogus": 1}))
    code = cli_main(["infer", str(tmp_path / "scene.h5"), str(checkpoint), str(tmp_path / "cli.h5"), "--device", "cpu",
                     "--model", "iterations=[1,3,1]", "--model", "num_initial_hypotheses=8",
                     "--model", "num_perturbation_hypotheses=[4,1,16]"])
    assert code == 0
    cli = read_depth_file(tmp_path / "cli.h5")
    for image_id in o:
        np.testing.assert_array_equal(o[image_id].depth, cli[image_id].depth)


@pytest.mark.cuda
def test_infer_on_cuda(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32), (20, 30)))
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "gpu.h5", InferConfig(device="cuda"))
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "cpu.h5", InferConfig(device="cpu"))
    gpu, cpu = read_depth_file(tmp_path / "gpu.h5"), read_depth_file(tmp_path / "cpu.h5")
    for image_id in cpu:
        np.testing.assert_allclose(gpu[image_id].depth, cpu[image_id].depth, rtol=1e-3, atol=6e-3)


def test_infer_loads_the_kernels_once_before_the_first_view(tmp_path, checkpoint, caplog, monkeypatch):
    import logging

    import pipeline.inference.runner as infer_stage

    calls = []
    warm_up, estimate_view = infer_stage.warm_up, infer_stage.estimate_view
    monkeypatch.setattr(infer_stage, "warm_up", lambda *a: calls.append("warm-up") or warm_up(*a))
    monkeypatch.setattr(infer_stage, "estimate_view", lambda *a: calls.append("view") or estimate_view(*a))
    make_scene(tmp_path / "scene.h5")
    with caplog.at_level(logging.INFO, logger="selfmvs.infer"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "depth.h5", InferConfig(num_sources=2, device="cpu"))
    assert calls == ["warm-up"] + ["view"] * 8  # 4 views, each also mirrored (flip_average, the default)
    assert "kernels ready in" in caplog.text


def test_warm_up_leaves_the_model_as_it_was(checkpoint):
    from pipeline.model import load_checkpoint
    from pipeline.inference import warm_up

    model, _ = load_checkpoint(checkpoint, strict=True)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert warm_up(model, torch.device("cpu")) > 0
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_cli_infer_on_cpu_never_loads_numba(tmp_path, checkpoint):
    """With the native CPU forwards built (a C++ compiler on the machine), ``selfmvs infer`` runs
    without numba in the process (its JIT alone is ~120 MB of resident memory)."""
    from kernels import _native

    if _native._compiler() is None:
        pytest.skip("no C++ compiler: inference uses the numba kernels on this machine")
    make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32), (24, 32)))
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        f"assert main(['infer', {str(tmp_path / 'scene.h5')!r}, {str(checkpoint)!r}, {str(tmp_path / 'depth.h5')!r},"
        " '--device', 'cpu']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'numba'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    assert "CPU forwards: native" in result.stderr


# ------------------------------------------------------------------------------ flip_average

def _mirrored_scene_file(scene: Scene, path) -> None:
    """The scene mirrored the plain way: every image flipped, cameras and world reflected in x
    (R' = F R M, t' = F t with F = M = diag(-1, 1, 1)): an independent construction of what the
    mirroring cache does with S T S."""
    import dataclasses as dc

    flip = np.diag([-1.0, 1.0, 1.0])
    views = {}
    for image_id, view in scene.views.items():
        K = view.K.copy()
        K[0, 2] = view.width - K[0, 2]
        pose = np.hstack([flip @ view.cam_from_world[:, :3] @ flip, (flip @ view.cam_from_world[:, 3])[:, None]])
        views[image_id] = dc.replace(
            view, image=np.ascontiguousarray(view.image[:, ::-1]), K=K, cam_from_world=pose,
            mask=None if view.mask is None else np.ascontiguousarray(view.mask[:, ::-1]),
        )
    write_scene(path, dc.replace(scene, views=views))


def test_mirrored_intrinsics_and_pose_project_every_point_to_the_flipped_pixel():
    from pipeline.scene.mirror import mirror_intrinsics, mirror_pose

    rng = np.random.default_rng(3)
    width = 37
    K = np.array([[30.0, 0.7, 15.2], [0.0, 28.0, 11.0], [0.0, 0.0, 1.0]])
    T = np.eye(4)
    T[:3, :4] = _look_at_origin(np.array([0.4, -0.2, -3.0]))
    points = rng.uniform(-1, 1, (50, 3))

    def project(K, T, X):
        camera = (T[:3, :3] @ X.T + T[:3, 3:]).T
        pixels = (K @ camera.T).T
        return pixels[:, :2] / pixels[:, 2:], camera[:, 2]

    xy, z = project(K, T, points)
    xy_m, z_m = project(mirror_intrinsics(K, width), mirror_pose(T), points * [-1.0, 1.0, 1.0])
    np.testing.assert_allclose(xy_m[:, 0], width - xy[:, 0], atol=1e-9)
    np.testing.assert_allclose(xy_m[:, 1], xy[:, 1], atol=1e-9)
    np.testing.assert_allclose(z_m, z, atol=1e-12)  # the same depth: the maps are flips of each other
    np.testing.assert_allclose(mirror_intrinsics(mirror_intrinsics(K, width), width), K)
    np.testing.assert_allclose(mirror_pose(mirror_pose(T)), T)


def test_mirroring_cache_runs_the_network_on_the_mirrored_scene(tmp_path, checkpoint):
    """estimate_view through a mirroring cache == the network on a scene file mirrored the plain
    way, flipped back: same images, same relative poses, same maps."""
    from pipeline.formats.scene_file import read_view
    from pipeline.model import load_checkpoint
    from pipeline.inference import ViewCache, estimate_view

    scene = make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32), (24, 32)), seed=5)
    _mirrored_scene_file(scene, tmp_path / "mirrored.h5")
    model, _ = load_checkpoint(checkpoint, strict=True)
    model.eval()
    cpu = torch.device("cpu")
    direct = ViewCache(model, tmp_path / "scene.h5", cpu, capacity=0, mirror=True)
    plain = ViewCache(model, tmp_path / "mirrored.h5", cpu, capacity=0)
    with torch.inference_mode():
        for image_id in scene.views:
            sources = [s for s in scene.views if s != image_id]
            ours = estimate_view(model, read_view(tmp_path / "scene.h5", image_id), [direct.get(s) for s in sources], direct)
            theirs = estimate_view(model, read_view(tmp_path / "mirrored.h5", image_id), [plain.get(s) for s in sources], plain)
            np.testing.assert_allclose(ours.depth, theirs.depth[:, ::-1], rtol=1e-4)
            np.testing.assert_allclose(ours.confidence, theirs.confidence[:, ::-1], atol=1e-4)
            np.testing.assert_allclose(ours.K, scene.views[image_id].K)  # the view's own K, not the mirrored one
            assert (ours.depth[:2] == 0).all()  # the mask (top rows) applied in the view's own frame


def test_combine_mirrored_averages_agreeing_depths_and_else_takes_the_more_confident():
    from pipeline.inference import combine_mirrored

    def view(depth, confidence):
        return DepthView(image_id=1, name="a.png", depth=np.array([depth], np.float32),
                         confidence=np.array([confidence], np.float32), K=np.eye(3), cam_from_world=np.eye(4)[:3])

    a = view([5.0, 5.0, 5.0, 5.0, 0.0, 4.0], [0.9, 0.9, 0.4, 0.5, 0.0, 0.6])
    b = view([5.05, 5.2, 6.0, 6.0, 3.0, 0.0], [0.7, 0.8, 0.6, 0.5, 0.3, 0.0])
    out = combine_mirrored(a, b)
    np.testing.assert_allclose(out.depth[0], [5.025, 5.0, 6.0, 5.0, 3.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(out.confidence[0], [0.8, 0.9, 0.6, 0.5, 0.3, 0.6], rtol=1e-6)
    assert out.image_id == 1 and out.depth.dtype == np.float32
    np.testing.assert_allclose(combine_mirrored(a, b, agreement=0.05).depth[0, 1], 5.1, rtol=1e-6)
    with pytest.raises(ValueError, match="view 1"):
        combine_mirrored(a, view([[1.0]], [[1.0]]))


def test_infer_flip_average_writes_the_combination_and_keeps_its_setting(tmp_path, checkpoint):
    from pipeline.inference import combine_mirrored

    scene = make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32), (24, 32)), seed=6)
    one_pass = InferConfig(num_sources=2, device="cpu", flip_average=False)
    one = read_depth_file(run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "one.h5", one_pass))
    _mirrored_scene_file(scene, tmp_path / "mirrored.h5")
    mirrored = read_depth_file(run_infer(tmp_path / "mirrored.h5", checkpoint, tmp_path / "m.h5", one_pass))
    config = InferConfig(num_sources=2, device="cpu", flip_average=True)
    both = read_depth_file(run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "both.h5", config))
    assert read_depth_attrs(tmp_path / "both.h5")["flip_average"] == 1
    assert read_depth_attrs(tmp_path / "one.h5")["flip_average"] == 0
    for image_id, view in both.items():
        flipped = mirrored[image_id]
        flipped.depth, flipped.confidence = flipped.depth[:, ::-1].copy(), flipped.confidence[:, ::-1].copy()
        expected = combine_mirrored(one[image_id], flipped)
        np.testing.assert_allclose(view.depth, expected.depth, rtol=1e-4)
        np.testing.assert_allclose(view.K, scene.views[image_id].K)
        np.testing.assert_allclose(view.cam_from_world, scene.views[image_id].cam_from_world)
        assert not np.array_equal(view.depth, one[image_id].depth)  # the second pass changed something
    # A partial file of a one-pass run is not resumed by a flip_average run.
    partial = tmp_path / "both.h5.partial"
    (tmp_path / "one.h5").rename(partial)
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "both.h5", config)
    np.testing.assert_array_equal(read_depth_file(tmp_path / "both.h5")[10].depth, both[10].depth)


def test_mirrored_pass_of_the_shipped_network_is_as_good_as_the_direct_one(tmp_path):
    """On a rendered scene with its ground truth, the shipped weights' estimate on the mirrored scene
    (flipped back) is as close to the truth as the direct one, and the combination no worse: a wrong
    sign or frame in the mirroring would leave the mirrored pass far off."""
    from pipeline.evaluation import depth_errors
    from pipeline.formats.scene_file import read_view
    from pipeline.model import load_checkpoint
    from pipeline.inference import ViewCache, combine_mirrored, estimate_view
    from pipeline.stages.prepare import run_prepare
    from pipeline.synth import render_scene

    scene_dir = render_scene(tmp_path / "scene", seed=21, num_views=8, width=256, height=192, num_gt_points=2000, num_sparse_points=400)
    run_prepare(scene_dir, tmp_path / "scene.h5")
    model, _ = load_checkpoint(REPO / "pipeline" / "checkpoints" / "selfmvs_synthetic.pt", strict=True)
    model.eval()
    gt = read_depth_file(scene_dir / "gt" / "depth.h5")
    cpu = torch.device("cpu")
    caches = [ViewCache(model, tmp_path / "scene.h5", cpu, capacity=5, mirror=m) for m in (False, True)]
    errors = {"direct": [], "mirrored": [], "combined": []}
    with torch.inference_mode():
        for image_id in gt:
            ref = read_view(tmp_path / "scene.h5", image_id)
            sources = [int(s) for s in ref.source_ids][:4]
            direct, mirrored = (estimate_view(model, ref, [c.get(s) for s in sources], c) for c in caches)
            for name, estimate in (("direct", direct), ("mirrored", mirrored), ("combined", combine_mirrored(direct, mirrored))):
                rel, n_gt, _ = depth_errors(estimate.depth, gt[image_id].depth, gt_K=gt[image_id].K, estimate_K=estimate.K)
                errors[name].append((rel < 0.02).sum() / n_gt)
    within = {name: float(np.mean(values)) for name, values in errors.items()}
    assert within["direct"] > 0.6, within  # 0.74 when written
    assert within["mirrored"] > within["direct"] - 0.05, within
    assert within["combined"] > within["direct"] - 0.02, within


# ------------------------------------------------------------------------------------------------
# infer.cuda_graph: the per-view forward captured once per input shape and replayed


class _EagerCapture:
    """Stands in for :class:`pipeline.inference.graph.CudaGraphCapture` on the CPU: "capture" runs
    the forward once, "replay" runs it again on the same static inputs and writes the results into
    the first run's output tensors, as a graph's replay does."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.attempts = 0

    def supports(self, device):
        return device.type == "cpu"

    def capture(self, run, device):
        self.attempts += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        outputs = run()

        def replay():
            fresh = run()
            for into, value in zip(_output_tensors(outputs), _output_tensors(fresh)):
                into.copy_(value)

        return outputs, replay


def _output_tensors(output):
    stages = [d for stage in sorted(output.stage_depths) for d in output.stage_depths[stage]]
    return [output.depth, output.confidence, output.view_weights, *stages]


def _estimate_all(forward, model, scene_path, plan):
    from pipeline.formats.scene_file import read_view
    from pipeline.inference import ViewCache, estimate_view

    cache = ViewCache(model, scene_path, torch.device("cpu"), capacity=4)
    with torch.inference_mode():
        return [estimate_view(forward, read_view(scene_path, ref), [cache.get(s) for s in sources], cache)
                for ref, sources in plan]


def test_cuda_graph_option_is_parsed_and_defaults_on():
    from pipeline import config as cfg

    assert InferConfig().cuda_graph is True
    loaded = cfg.load_config(None, overrides={"infer": {"cuda_graph": False}})
    assert cfg.section(loaded, "infer", InferConfig).cuda_graph is False
    with pytest.raises(ValueError, match="cuda_graph"):
        cfg.load_config(None, overrides={"infer": {"cuda_graph": "sometimes"}})


def test_graphed_forward_captures_once_per_shape_and_replays_the_new_inputs(tmp_path, checkpoint):
    """Every view gets the depth of the plain forward on its own inputs (the static buffers take each
    view's values), one capture per input shape (views 10, 11, 13 are 24x32, view 12 is 20x30)."""
    from pipeline.inference.graph import GraphedForward
    from pipeline.model import load_checkpoint

    make_scene(tmp_path / "scene.h5", with_mask=False)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    plan = [(10, [11, 12]), (11, [10, 12]), (13, [11, 12]), (12, [10, 11]), (10, [11, 13])]
    expected = _estimate_all(model, model, tmp_path / "scene.h5", plan)
    capture = _EagerCapture()
    graphed = GraphedForward(model, True, capture)
    got = _estimate_all(graphed, model, tmp_path / "scene.h5", plan)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.confidence, b.confidence)
    assert len({view.depth.tobytes() for view in got}) == len(plan)  # each view its own result
    # 10, 11, 13 with sources of 24x32 and 20x30 share a graph; 12 (20x30) and the last (sources
    # 24x32, 24x32) have shapes of their own
    assert (graphed.captures, capture.attempts, graphed.replays, graphed.failed) == (3, 3, 5, None)


def test_graphed_forward_does_nothing_on_the_cpu_or_when_off(tmp_path, checkpoint):
    from pipeline.inference.graph import GraphedForward
    from pipeline.model import load_checkpoint

    make_scene(tmp_path / "scene.h5", with_mask=False)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    plan = [(10, [11, 12]), (11, [10, 12])]
    expected = _estimate_all(model, model, tmp_path / "scene.h5", plan)
    for graphed in (GraphedForward(model, True), GraphedForward(model, False, _EagerCapture())):
        got = _estimate_all(graphed, model, tmp_path / "scene.h5", plan)
        assert (graphed.captures, graphed.replays) == (0, 0)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.depth, b.depth)


def test_graphed_forward_stays_eager_after_a_failed_capture(tmp_path, checkpoint, caplog):
    import logging

    from pipeline.inference.graph import GraphedForward
    from pipeline.model import load_checkpoint

    make_scene(tmp_path / "scene.h5", with_mask=False)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    plan = [(10, [11, 12]), (11, [10, 12]), (12, [10, 11])]
    expected = _estimate_all(model, model, tmp_path / "scene.h5", plan)
    capture = _EagerCapture(fail=True)
    graphed = GraphedForward(model, True, capture)
    with caplog.at_level(logging.WARNING, logger="selfmvs.infer"):
        got = _estimate_all(graphed, model, tmp_path / "scene.h5", plan)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.depth, b.depth)
    assert capture.attempts == 1 and (graphed.captures, graphed.replays) == (0, 0)
    assert "operation not permitted" in graphed.failed
    assert [r.levelname for r in caplog.records].count("WARNING") == 1
    assert "infer.cuda_graph: capturing the forward failed" in caplog.text


def test_infer_on_the_cpu_is_the_same_with_and_without_cuda_graph(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5")
    outputs = {}
    for flag in (True, False):
        config = InferConfig(num_sources=2, device="cpu", cuda_graph=flag)
        outputs[flag] = read_depth_file(run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / f"{flag}.h5", config))
    for image_id, view in outputs[True].items():
        np.testing.assert_array_equal(view.depth, outputs[False][image_id].depth)


@pytest.mark.cuda
def test_cuda_graph_gives_the_eager_depth_on_a_gpu(tmp_path, checkpoint, caplog):
    """Graph replay against the eager forward on a GPU (same kernels: equal up to atomics' order)."""
    import logging

    make_scene(tmp_path / "scene.h5", sizes=((24, 32), (24, 32), (24, 32), (24, 32)))
    outputs = {}
    with caplog.at_level(logging.INFO, logger="selfmvs.infer"):
        for flag in (True, False):
            config = InferConfig(num_sources=2, device="cuda", cuda_graph=flag)
            outputs[flag] = read_depth_file(run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / f"{flag}.h5", config))
    assert "capturing the forward failed" not in caplog.text
    assert "forwards replayed from" in caplog.text  # the direct and mirrored passes share the graphs
    for image_id, view in outputs[True].items():
        np.testing.assert_allclose(view.depth, outputs[False][image_id].depth, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(view.confidence, outputs[False][image_id].confidence, rtol=1e-5, atol=1e-5)
