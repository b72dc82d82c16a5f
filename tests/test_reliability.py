"""Output safety: one writer per output, temporary files, durable renames, resumption only of the same
inputs, inputs never overwritten, non-finite inputs and estimates refused.

The concurrency and kill cases run ``python -m pipeline infer`` as real processes on tiny scenes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_infer import SMALL, make_scene

from pipeline.config import InferConfig
from pipeline.formats.atomic import OutputLockedError, atomic_path, lock_path, output_lock
from pipeline.formats.depth_file import read_depth_file
from pipeline.formats.paths import check_outputs_distinct
from pipeline.formats.ply import PlyStreamWriter, read_ply
from pipeline.formats.scene_file import write_scene
from pipeline.model import PatchmatchNet, save_checkpoint
from pipeline.stages.infer import run_infer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CPU = InferConfig(device="cpu", num_sources=2)
# 10 views at 48x64: a run lasts a few seconds, long enough to stop or kill it midway
SIZES = ((48, 64),) * 10


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(path, PatchmatchNet(SMALL), {"epoch": 0})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", 0)


def _infer_process(scene: Path, ckpt: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline", "infer", str(scene), str(ckpt), str(out), "--device", "cpu",
               "--num-sources", "2", *extra]
    return subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (rc {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- one writer per output -------------------------------------------------------------------------


def test_a_second_infer_on_the_same_output_is_refused_at_once_and_the_first_finishes(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5", sizes=SIZES[:6])
    out = tmp_path / "depth.h5"
    first = _infer_process(tmp_path / "scene.h5", checkpoint, out)
    try:
        lock = lock_path(out)
        _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 120, "the lock", first)
        os.kill(first.pid, signal.SIGSTOP)  # holds its lock while the second one tries
        partial = out.with_name(out.name + ".partial")
        before = os.stat(partial) if partial.exists() else None
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "pipeline", "infer", str(tmp_path / "scene.h5"), str(checkpoint), str(out),
             "--device", "cpu"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        seconds = time.monotonic() - started
        assert second.returncode == 1, second.stderr
        assert str(out) in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert "kernels ready" not in second.stderr  # refused before loading anything
        assert seconds < 60
        if before is not None:  # the first one's partial file is untouched
            after = os.stat(partial)
            assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
        assert not out.exists()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert sorted(read_depth_file(out)) == list(range(10, 16))
    assert not lock_path(out).exists() and not out.with_name(out.name + ".partial").exists()


_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pipeline.formats.atomic import output_lock
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def test_atomic_path_refuses_an_output_another_process_holds(tmp_path):
    out = tmp_path / "eval.json"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"eval\.json.*pid {holder.pid}"):
            with atomic_path(out) as tmp:
                tmp.write_text("{}")
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.json.")]
    finally:
        holder.kill()
        holder.wait()
    # a holder killed hard leaves its lock file, but not its lock
    with atomic_path(out) as tmp:
        tmp.write_text("{}")
    assert out.read_text() == "{}" and not lock_path(out).exists()


def test_output_lock_is_reentrant_within_a_process(tmp_path):
    out = tmp_path / "depth.h5"
    with output_lock(out) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        with atomic_path(out) as tmp:
            tmp.write_text("x")
        assert lock.exists()  # still held by the outer block
    assert not lock.exists() and out.read_text() == "x"


def test_the_rename_moves_only_the_file_this_process_wrote(tmp_path):
    out = tmp_path / "fused.ply"
    with pytest.raises(OSError, match="not the one this process wrote"):
        with atomic_path(out, suffix=".ply") as tmp:
            tmp.write_text("ours")
            stranger = tmp_path / "stranger"
            stranger.write_text("theirs")
            os.replace(stranger, tmp)  # another writer's file under our temporary name
    assert not out.exists()
    assert tmp.read_text() == "theirs"  # not ours to delete either


# --- temporary files and durability ----------------------------------------------------------------


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pipeline.formats.atomic import atomic_path
    from pipeline.formats.ply import PlyStreamWriter
    import numpy as np
    ply, masks = sys.argv[1], sys.argv[2]
    with PlyStreamWriter(ply, with_color=False) as writer, atomic_path(masks, suffix=".h5") as tmp:
        writer.append(np.zeros((4, 3)))
        tmp.write_bytes(b"half")
        print("writing", flush=True)
        time.sleep(120)
""")


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_one(tmp_path):
    ply, masks = tmp_path / "fused.ply", tmp_path / "fused_masks.h5"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(ply), str(masks)], env=ENV,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert any(n.startswith(f".fused.ply.{writer.pid}.") and n.endswith(".body") for n in left), left
    assert any(n.startswith(f".fused_masks.h5.{writer.pid}.") and n.endswith(".h5") for n in left), left
    # a live process's temporary file (by its pid) and another output's are left alone
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live_temp = tmp_path / f".fused.ply.{alive.pid}.abcdefgh.body"
        live_temp.write_text("")
        other_output = tmp_path / f".fused.ply.bak.{writer.pid}.abcdefgh.tmp"
        other_output.write_text("")
        with PlyStreamWriter(ply, with_color=False) as stream:
            stream.append(np.ones((2, 3)))
        with atomic_path(masks, suffix=".h5") as tmp:
            tmp.write_bytes(b"done")
        assert len(read_ply(ply).xyz) == 2 and masks.read_bytes() == b"done"
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert left == sorted([live_temp.name, other_output.name])
    finally:
        alive.kill()
        alive.wait()


def test_atomic_path_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "eval.json"
    with atomic_path(out, suffix=".json") as tmp:
        tmp.write_text("{}")
    real = os.path.realpath
    assert events[-3:] == [("fsync", real(tmp)), ("replace", str(out)), ("fsync", real(tmp_path))]
    assert tmp.name.startswith(f".eval.json.{os.getpid()}.")


# --- inputs and outputs -----------------------------------------------------------------------------


def test_check_outputs_distinct(tmp_path):
    scene = tmp_path / "scene.h5"
    scene.write_text("scene")
    (tmp_path / "link.h5").symlink_to(scene)
    os.link(scene, tmp_path / "hard.h5")
    for same in (scene, tmp_path / "link.h5", tmp_path / "hard.h5", tmp_path / "sub" / ".." / "scene.h5"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match=r"output depth .*is the input scene .*scene\.h5"):
            check_outputs_distinct({"scene": scene, "checkpoint": tmp_path / "m.pt"}, {"depth": same})
    check_outputs_distinct({"scene": scene}, {"depth": tmp_path / "depth.h5"})  # not there yet: fine
    with pytest.raises(ValueError, match="same file"):
        check_outputs_distinct({}, {"cloud": tmp_path / "a.ply", "masks": tmp_path / "a.ply"})


def test_infer_refuses_to_write_over_its_scene(tmp_path, checkpoint):
    make_scene(tmp_path / "same.h5", sizes=SIZES[:2])
    digest = hashlib.sha256((tmp_path / "same.h5").read_bytes()).hexdigest()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "infer", str(tmp_path / "same.h5"), str(checkpoint), str(tmp_path / "same.h5"),
         "--device", "cpu"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "same.h5" in result.stderr and "is the input scene" in result.stderr
    assert hashlib.sha256((tmp_path / "same.h5").read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.h5"]  # no partial, no lock left


# --- non-finite inputs and estimates ---------------------------------------------------------------


def test_infer_refuses_a_checkpoint_with_nan_weights(tmp_path):
    make_scene(tmp_path / "scene.h5", sizes=SIZES[:2])
    torch.manual_seed(0)
    model = PatchmatchNet(SMALL)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", model, {"epoch": 0})
    with pytest.raises(ValueError, match=r"nan\.pt.*NaN or infinite"):
        run_infer(tmp_path / "scene.h5", tmp_path / "nan.pt", tmp_path / "depth.h5", CPU)
    assert not (tmp_path / "depth.h5").exists() and not (tmp_path / "depth.h5.partial").exists()


@pytest.mark.parametrize("field", ["K", "cam_from_world", "depth_range"])
def test_infer_refuses_a_scene_with_non_finite_cameras(tmp_path, checkpoint, field):
    scene = make_scene(tmp_path / "scene.h5", sizes=SIZES[:3])
    value = getattr(scene.views[11], field).copy()
    value.flat[0] = np.nan
    setattr(scene.views[11], field, value)
    write_scene(tmp_path / "scene.h5", scene)
    with pytest.raises(ValueError, match=rf"scene\.h5: view 11 .*{field}"):
        run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "depth.h5", CPU)
    assert not (tmp_path / "depth.h5").exists() and not (tmp_path / "depth.h5.partial").exists()


def test_a_view_whose_estimate_is_not_finite_is_an_error_naming_it(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5", sizes=SIZES[:3])
    with pytest.raises(ValueError, match=r"view 11 \(img_01\.png\).*depth is not finite at 1 of"):
        _run_failing_at_view(tmp_path / "scene.h5", checkpoint, tmp_path / "depth.h5", failing_view=11)
    assert not (tmp_path / "depth.h5").exists()


def _run_failing_at_view(scene_path, checkpoint, out, failing_view):
    """run_infer whose estimate of ``failing_view`` is NaN (it stops there, the views before it written)."""
    import pipeline.inference.runner as runner

    real = runner.estimate_view

    def estimate(model, ref, sources, cache, mask_invalid=True):
        view = real(model, ref, sources, cache, mask_invalid)
        if ref.image_id == failing_view:
            view.depth[5, 7] = np.nan
        return view

    runner.estimate_view = estimate
    try:
        run_infer(scene_path, checkpoint, out, CPU)
    finally:
        runner.estimate_view = real


# --- resumption --------------------------------------------------------------------------------------


def _complete_views(partial: Path) -> int:
    with h5py.File(partial, "r", locking=False) as handle:
        return sum("complete" in group.attrs for group in handle["views"].values())


def _kill_after_views(process: subprocess.Popen, partial: Path, at_least: int) -> int:
    """SIGKILL ``process`` once its partial file holds ``at_least`` complete views; returns how many it held.

    The file is read only while the writer is stopped (SIGSTOP), so it is never read mid-write."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"infer ended before it was killed: {process.stderr.read()}"
        time.sleep(0.1)
        os.kill(process.pid, signal.SIGSTOP)
        try:
            count = _complete_views(partial) if partial.exists() else 0
        except (OSError, KeyError):
            count = 0
        if count >= at_least:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return count
        os.kill(process.pid, signal.SIGCONT)
    raise AssertionError("timed out waiting for views in the partial file")


def _same_views(a: Path, b: Path) -> None:
    first, second = read_depth_file(a), read_depth_file(b)
    assert sorted(first) == sorted(second)
    for image_id in first:
        np.testing.assert_array_equal(first[image_id].depth, second[image_id].depth, err_msg=f"view {image_id}")
        np.testing.assert_array_equal(first[image_id].confidence, second[image_id].confidence)


def test_a_killed_infer_resumes_its_views_and_ends_as_a_clean_run(tmp_path, checkpoint):
    make_scene(tmp_path / "scene.h5", sizes=SIZES)
    out = tmp_path / "depth.h5"
    first = _infer_process(tmp_path / "scene.h5", checkpoint, out)
    done = _kill_after_views(first, out.with_name(out.name + ".partial"), 3)
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "infer", str(tmp_path / "scene.h5"), str(checkpoint), str(out),
         "--device", "cpu", "--num-sources", "2"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert f"resuming {done} of 10 views" in again.stderr
    run_infer(tmp_path / "scene.h5", checkpoint, tmp_path / "clean.h5", CPU)
    _same_views(out, tmp_path / "clean.h5")


def test_a_checkpoint_replaced_at_the_same_path_is_not_resumed(tmp_path):
    make_scene(tmp_path / "scene.h5", sizes=SIZES)
    ckpt, out = tmp_path / "model.pt", tmp_path / "depth.h5"
    _checkpoint(ckpt, 0)
    first = _infer_process(tmp_path / "scene.h5", ckpt, out)
    _kill_after_views(first, out.with_name(out.name + ".partial"), 3)
    _checkpoint(ckpt, 1)  # new weights, same path
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "infer", str(tmp_path / "scene.h5"), str(ckpt), str(out),
         "--device", "cpu", "--num-sources", "2"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert "not resumed" in again.stderr and "checkpoint_sha256" in again.stderr
    assert "resuming" not in again.stderr
    run_infer(tmp_path / "scene.h5", ckpt, tmp_path / "clean.h5", CPU)
    _same_views(out, tmp_path / "clean.h5")


def test_a_scene_or_setting_changed_since_the_partial_file_is_not_resumed(tmp_path, checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="selfmvs.infer")
    scene_path, out = tmp_path / "scene.h5", tmp_path / "depth.h5"
    make_scene(scene_path, sizes=SIZES[:4])
    with pytest.raises(ValueError, match="not finite"):
        # an interrupted run: the last view fails, the others stay in the partial file
        _run_failing_at_view(scene_path, checkpoint, out, failing_view=13)
    make_scene(scene_path, sizes=SIZES[:4], seed=1)  # other images, same path
    run_infer(scene_path, checkpoint, out, CPU)
    assert "scene_sha256" in caplog.text and "resuming" not in caplog.text
    run_infer(scene_path, checkpoint, tmp_path / "clean.h5", CPU)
    _same_views(out, tmp_path / "clean.h5")
    caplog.clear()
    with pytest.raises(ValueError, match="not finite"):
        _run_failing_at_view(scene_path, checkpoint, out.with_name("b.h5"), failing_view=13)
    run_infer(scene_path, checkpoint, out.with_name("b.h5"), InferConfig(device="cpu", num_sources=2, max_size=32))
    assert "max_size" in caplog.text and "resuming" not in caplog.text
    assert read_depth_file(out.with_name("b.h5"))[10].depth.shape == (24, 32)
