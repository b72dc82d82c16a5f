import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.formats.atomic import OutputLockedError
from pipeline.formats.depth_file import (
    DepthFormatError,
    DepthView,
    DepthWriter,
    list_depth_views,
    read_depth_attrs,
    read_depth_file,
    read_depth_view,
    write_depth_file,
)


def make_view(image_id, height=6, width=8, seed=0):
    rng = np.random.default_rng(seed)
    return DepthView(
        image_id=image_id,
        name=f"{image_id:06d}.png",
        depth=rng.uniform(1, 2, (height, width)),
        confidence=rng.uniform(0, 1, (height, width)),
        K=np.array([[10.0, 0, 4], [0, 10, 3], [0, 0, 1]]),
        cam_from_world=np.hstack([np.eye(3), [[0.1], [0.2], [0.3]]]),
    )


def test_round_trip(tmp_path):
    views = [make_view(7), make_view(12, seed=1)]
    path = tmp_path / "depth.h5"
    write_depth_file(path, views, {"checkpoint": "ck.pt"})
    back = read_depth_file(path)
    assert sorted(back) == [7, 12]
    for view in views:
        got = back[view.image_id]
        np.testing.assert_array_equal(got.depth, view.depth.astype(np.float32))
        np.testing.assert_array_equal(got.confidence, view.confidence.astype(np.float32))
        np.testing.assert_array_equal(got.K, view.K)
        np.testing.assert_array_equal(got.cam_from_world, view.cam_from_world)
        assert got.name == view.name
    assert read_depth_attrs(path)["checkpoint"] == "ck.pt"
    assert sorted(list_depth_views(path)) == [7, 12]


def test_writer_resumes_and_publishes_only_when_complete(tmp_path):
    path = tmp_path / "depth.h5"
    with pytest.raises(RuntimeError):
        with DepthWriter(path) as writer:
            writer.write(make_view(1))
            raise RuntimeError("interrupted")
    assert not path.exists()
    with DepthWriter(path) as writer:
        assert writer.has(1) and not writer.has(2)
        writer.write(make_view(2))
    assert sorted(read_depth_file(path)) == [1, 2]


def test_incomplete_view_is_not_counted(tmp_path):
    path = tmp_path / "depth.h5"
    partial = tmp_path / "depth.h5.partial"
    with h5py.File(partial, "w") as handle:
        handle.attrs["kind"] = "selfmvs.depth"
        handle.create_group("views/3").create_dataset("depth", data=np.zeros((2, 2)))
    with DepthWriter(path) as writer:
        assert not writer.has(3)


def test_errors_name_file_and_view(tmp_path):
    path = tmp_path / "depth.h5"
    write_depth_file(path, [make_view(1)])
    with pytest.raises(DepthFormatError, match=r"depth\.h5: view 5 missing"):
        read_depth_view(path, 5)
    not_h5 = tmp_path / "x.h5"
    not_h5.write_text("hello")
    with pytest.raises(DepthFormatError, match="x.h5"):
        read_depth_file(not_h5)
    with pytest.raises(FileNotFoundError):
        read_depth_file(tmp_path / "missing.h5")
    foreign = tmp_path / "scene.h5"
    with h5py.File(foreign, "w") as handle:
        handle.attrs["kind"] = "selfmvs.scene"
    with pytest.raises(DepthFormatError, match=r"scene\.h5: not a selfmvs depth file \(kind='selfmvs.scene'\)"):
        read_depth_file(foreign)
    with pytest.raises(DepthFormatError, match="confidence"):
        DepthView(1, "a", np.zeros((2, 3)), np.zeros((3, 2)), np.eye(3), np.eye(4))


@pytest.mark.parametrize("version", [2, 0, None, "1", 1.5])
def test_a_depth_file_of_another_format_version_is_refused(tmp_path, version):
    path = tmp_path / "depth.h5"
    write_depth_file(path, [make_view(1)])
    with h5py.File(path, "a") as handle:
        if version is None:
            del handle.attrs["format_version"]
        else:
            handle.attrs["format_version"] = version
    expected = "None" if version is None else repr(version)
    with pytest.raises(DepthFormatError, match=rf"depth\.h5: format_version {re.escape(expected)} not supported "
                       r"\(this build of selfmvs reads depth files of format_version 1\)"):
        read_depth_file(path)


_HOLD_LOCK = """
import sys, time
from pipeline.formats.atomic import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_of_a_depth_file_is_refused_and_leaves_the_partial_file_alone(tmp_path):
    path = tmp_path / "labels.h5"
    with pytest.raises(RuntimeError):
        with DepthWriter(path) as writer:
            writer.write(make_view(1))
            raise RuntimeError("interrupted")
    partial = tmp_path / "labels.h5.partial"
    before = partial.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"labels\.h5: being written by another process \(pid {holder.pid}"):
            write_depth_file(path, [make_view(2)])
        with pytest.raises(OutputLockedError, match=rf"pid {holder.pid}"):
            with DepthWriter(path):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert partial.read_bytes() == before and not path.exists()
