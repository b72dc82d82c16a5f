"""Fusion of 49 views at 800x600 with 10 sources each (the target: <= 30 s on the 2-core CPU).

    .venv/bin/python -m pytest bench/bench_fuse.py --benchmark-only -p no:cacheprovider -s

The scene is the analytic box-on-a-plane of tests/test_fusion.py, ray-cast exactly; depths carry
0.1 % noise and confidence 1, so every pixel with a surface goes through all ten geometric checks
(the worst case: a network's confidence would drop some pixels before them). The whole stage is
timed (HDF5 reads, fusion, PLY and mask writing). The peak RSS is that of the same stage run as
``selfmvs fuse`` in a child process, so the scene generation here does not count.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fusion import make_box_scene  # noqa: E402

from pipeline.config import FuseConfig  # noqa: E402
from pipeline.stages.fuse import run_fuse  # noqa: E402

NUM_VIEWS, WIDTH, HEIGHT, NUM_SOURCES = 49, 800, 600, 10


@pytest.fixture(scope="module")
def scene_files():
    from pipeline.formats.depth_file import DepthView, write_depth_file
    from pipeline.formats.scene_file import Scene, SceneView, write_scene

    # Generated once (ray casting 49 views takes a while on a busy machine) and reused.
    folder = Path(tempfile.gettempdir()) / f"selfmvs_bench_fuse_{NUM_VIEWS}x{WIDTH}x{HEIGHT}"
    if (folder / "depth.h5").is_file() and (folder / "scene.h5").is_file():
        return folder, folder / "scene.h5", folder / "depth.h5"
    folder.mkdir(parents=True, exist_ok=True)
    views, _ = make_box_scene(NUM_VIEWS, WIDTH, HEIGHT)
    rng = np.random.default_rng(0)
    ids = list(views)
    scene_views, depth_views = {}, []
    for key, view in views.items():
        sources = sorted((j for j in ids if j != key), key=lambda j: (abs(j - key), j))[:NUM_SOURCES]
        scene_views[key] = SceneView(
            image_id=key, name=f"{key:03d}.png", image=view.image, K=view.K, cam_from_world=view.cam_from_world,
            depth_range=np.array([1.0, 6.0]), num_depth=48, source_ids=np.array(sources),
            source_scores=np.ones(len(sources)), mask=None, point3D_ids=np.zeros(0, np.int64),
            width=WIDTH, height=HEIGHT,
        )
        noisy = view.depth * (1 + 0.001 * rng.standard_normal(view.depth.shape)).astype(np.float32)
        depth_views.append(DepthView(key, f"{key:03d}.png", noisy, np.ones_like(noisy), view.K, view.cam_from_world))
    scene_h5, depth_h5 = folder / "scene.h5", folder / "depth.h5"
    write_scene(scene_h5, Scene(views=scene_views, points3D_ids=np.zeros(0, np.int64),
                                points3D_xyz=np.zeros((0, 3)), points3D_rgb=np.zeros((0, 3), np.uint8)))
    write_depth_file(depth_h5, depth_views, {"checkpoint": "bench"})
    return folder, scene_h5, depth_h5


@pytest.mark.parametrize("num_threads", [1, 0], ids=["1-thread", "torch-default-threads"])
def test_fuse_49_views_800x600(benchmark, scene_files, num_threads):
    folder, scene_h5, depth_h5 = scene_files
    config = FuseConfig(device="cpu", num_threads=num_threads)
    out = folder / f"fused_{num_threads}.ply"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = benchmark.pedantic(run_fuse, args=(scene_h5, depth_h5, out, config), rounds=1, iterations=1)
    after = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds tell the cost apart from the wait for a crowded machine's cores.
    cpu_seconds = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    benchmark.extra_info["num_points"] = summary["num_points"]
    benchmark.extra_info["cpu_seconds"] = cpu_seconds
    # Peak memory of the same stage alone, in a child process.
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    config_file = folder / f"fuse_{num_threads}.yaml"
    config_file.write_text(f"fuse: {{device: cpu, num_threads: {num_threads}}}\n")
    subprocess.run(
        [sys.executable, "-m", "pipeline", "fuse", str(scene_h5), str(depth_h5), str(folder / "child.ply"),
         "--config", str(config_file)],
        check=True,
    )
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    benchmark.extra_info["child_peak_rss_mib"] = peak_kib / 1024
    benchmark.extra_info["child_peak_rss_is_max_over_children"] = peak_kib <= before
    print(f"\nfuse {NUM_VIEWS} views {WIDTH}x{HEIGHT}, {NUM_SOURCES} sources, threads={num_threads or 'default'}: "
          f"{summary['seconds']:.1f} s wall, {cpu_seconds:.1f} s CPU, {summary['num_points']} points, child peak RSS {peak_kib / 1024:.0f} MiB")
