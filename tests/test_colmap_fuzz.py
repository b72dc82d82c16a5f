"""Fuzzing the COLMAP readers: a corrupt model must give ColmapFormatError naming a file and a place.

Never a bare struct/Index/Key/UnicodeDecode error, never a hang, never a huge allocation: each
truncation point of each binary file, a few hundred seeded byte flips, and text-line corruptions.
"""

from __future__ import annotations

import re
import shutil
import time

import numpy as np
import pytest

from pipeline.colmap import Camera, ColmapFormatError, Image, Point3D, read_model, write_model

FILES = ("cameras", "images", "points3D")


def small_model(seed: int = 0):
    """Three cameras of different models, five images with keypoints, points with tracks."""
    rng = np.random.default_rng(seed)
    cameras = {
        1: Camera(1, "SIMPLE_RADIAL", 40, 30, np.array([30.0, 20.0, 15.0, 0.01])),
        2: Camera(2, "PINHOLE", 40, 30, np.array([30.0, 31.0, 20.0, 15.0])),
        4: Camera(4, "OPENCV_FISHEYE", 40, 30, np.array([30.0, 31.0, 20.0, 15.0, 0.1, 0.0, 0.0, 0.0])),
    }
    images = {}
    for k in range(5):
        qvec = rng.normal(size=4)
        images[k + 1] = Image(k + 1, qvec / np.linalg.norm(qvec), rng.normal(size=3), (1, 2, 4)[k % 3],
                              f"im_{k}.jpg", rng.uniform(0, 30, (6, 2)), np.full(6, -1, np.int64))
    points = {}
    for n in range(8):
        seen = [1 + (n + j) % 5 for j in range(2 + n % 2)]
        idxs = []
        for image_id in seen:
            k = int(np.flatnonzero(images[image_id].point3D_ids < 0)[0])
            images[image_id].point3D_ids[k] = 10 + n
            idxs.append(k)
        points[10 + n] = Point3D(10 + n, rng.normal(size=3), rng.integers(0, 256, 3).astype(np.uint8),
                                 0.5, np.array(seen, np.int64), np.array(idxs, np.int64))
    return cameras, images, points


LOCATION = re.compile(r": (byte \d+|line \d+): ")


def _read_or_format_error(folder, ext):
    """Read the model; return the error, or None when it was read. Anything else fails the test."""
    start = time.perf_counter()
    try:
        read_model(folder, ext=ext)
    except ColmapFormatError as error:
        message = str(error)
        assert any(f"{folder / (name + ext)}: " in message for name in FILES), message
        assert LOCATION.search(message), message
        return error
    finally:
        assert time.perf_counter() - start < 1.0, "a corrupt small model took more than a second"
    return None


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_bin")
    write_model(*small_model(), folder, ext=".bin")
    return {name: (folder / f"{name}.bin").read_bytes() for name in FILES}


@pytest.mark.parametrize("name", FILES)
def test_truncation_at_every_offset_fails_cleanly(tmp_path, binary_model, name):
    for other, data in binary_model.items():
        (tmp_path / f"{other}.bin").write_bytes(data)
    data = binary_model[name]
    target = tmp_path / f"{name}.bin"
    for cut in range(len(data)):
        target.write_bytes(data[:cut])
        error = _read_or_format_error(tmp_path, ".bin")
        assert error is not None, f"{name}.bin cut at {cut} of {len(data)} bytes was read as a model"
        assert str(target) in str(error)
    target.write_bytes(data)
    assert _read_or_format_error(tmp_path, ".bin") is None


def test_random_byte_flips(tmp_path, binary_model):
    rng = np.random.default_rng(1234)
    failures = reads = 0
    for trial in range(600):
        corrupted = {name: bytearray(data) for name, data in binary_model.items()}
        name = FILES[trial % 3]
        data = corrupted[name]
        for _ in range(int(rng.integers(1, 4))):
            position = int(rng.integers(0, len(data)))
            # Half whole-byte replacements, half single bit flips (which keep counts plausible).
            data[position] = int(rng.integers(0, 256)) if trial % 2 else data[position] ^ (1 << int(rng.integers(0, 8)))
        for other, payload in corrupted.items():
            (tmp_path / f"{other}.bin").write_bytes(bytes(payload))
        if _read_or_format_error(tmp_path, ".bin") is None:
            reads += 1
        else:
            failures += 1
    # Many flips land in floating-point payload and give a different but valid model; many do not.
    assert failures > 100 and reads > 50, (failures, reads)


def test_huge_counts_do_not_allocate(tmp_path, binary_model):
    for name in FILES:
        for other, data in binary_model.items():
            (tmp_path / f"{other}.bin").write_bytes(data)
        (tmp_path / f"{name}.bin").write_bytes(b"\xff" * 8 + binary_model[name][8:])
        error = _read_or_format_error(tmp_path, ".bin")
        assert error is not None and f"{name}.bin: byte 0: 18446744073709551615 " in str(error)


TEXT_CORRUPTIONS = ["x", "nan", "inf", "-5", "1e999", "99999999999999999999999", "3.5", "", "PINHOLE", "\xe9"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_txt")
    write_model(*small_model(), folder, ext=".txt")
    return {name: (folder / f"{name}.txt").read_bytes() for name in FILES}


def test_text_line_corruptions(tmp_path, text_model):
    rng = np.random.default_rng(99)
    failures = 0
    for name in FILES:
        lines = text_model[name].split(b"\n")
        for number in range(len(lines)):
            for kind in ("delete", "duplicate", "field", "cut", "latin1"):
                corrupted = list(lines)
                fields = corrupted[number].split(b" ")
                if kind == "delete":
                    del corrupted[number]
                elif kind == "duplicate":
                    corrupted.insert(number, corrupted[number])
                elif kind == "field":
                    k = int(rng.integers(0, len(fields)))
                    fields[k] = TEXT_CORRUPTIONS[int(rng.integers(0, len(TEXT_CORRUPTIONS)))].encode("utf-8")
                    corrupted[number] = b" ".join(fields)
                elif kind == "cut":
                    corrupted[number] = corrupted[number][: int(rng.integers(0, len(corrupted[number]) + 1))]
                else:
                    corrupted[number] = corrupted[number] + b"\xe9"
                for other, payload in text_model.items():
                    (tmp_path / f"{other}.txt").write_bytes(b"\n".join(corrupted) if other == name else payload)
                error = _read_or_format_error(tmp_path, ".txt")
                if error is not None:
                    failures += 1
                    if kind == "latin1":
                        assert f"{name}.txt: line {number + 1}: not UTF-8" in str(error)
    assert failures > 100


def test_untouched_copies_still_read(tmp_path, binary_model, text_model):
    """The fuzz fixtures are valid models: the failures above come from the corruption."""
    for name in FILES:
        (tmp_path / f"{name}.bin").write_bytes(binary_model[name])
        (tmp_path / f"{name}.txt").write_bytes(text_model[name])
    assert _read_or_format_error(tmp_path, ".bin") is None
    assert _read_or_format_error(tmp_path, ".txt") is None
    shutil.rmtree(tmp_path)
