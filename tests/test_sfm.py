"""Photos only: the sfm stage registers a rendered scene whose true poses we know."""

import numpy as np
import pytest

from pipeline.colmap import qvec_to_rotmat, read_model
from pipeline.stages.sfm import run_sfm
from pipeline.synth import render_scene


def camera_centres(images):
    centres = {}
    for image in images.values():
        rotation = qvec_to_rotmat(image.qvec)
        centres[image.name] = -rotation.T @ image.tvec
    return centres


def similarity_residual(source, target):
    """RMS residual after the best similarity transform source -> target (Umeyama 1991)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s0, t0 = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(t0.T @ s0 / len(source))
    d = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sigma) @ d) / (s0**2).sum(1).mean()
    aligned = scale * s0 @ rotation.T + mu_t
    return np.sqrt(((aligned - target) ** 2).sum(1).mean())


@pytest.mark.slow
def test_sfm_registers_rendered_photos(tmp_path):
    truth_dir = render_scene(tmp_path / "truth", seed=3, num_views=6, width=256, height=192)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "images").symlink_to(truth_dir / "images", target_is_directory=True)
    out = run_sfm(photos, tmp_path / "sfm", num_threads=2)
    _, images, points = read_model(out / "sparse")
    _, truth_images, _ = read_model(truth_dir / "sparse")
    assert len(images) == len(truth_images) == 6
    assert len(points) > 50
    found, truth = camera_centres(images), camera_centres(truth_images)
    names = sorted(truth)
    source = np.array([found[n] for n in names])
    target = np.array([truth[n] for n in names])
    spread = np.linalg.norm(target - target.mean(0), axis=1).mean()
    # Poses agree with the truth up to a similarity, to a small fraction of the camera spread.
    assert similarity_residual(source, target) < 0.02 * spread
    assert (out / "images").resolve() == (truth_dir / "images").resolve()


def test_sfm_rejects_a_folder_without_photos(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="need at least 2 photos"):
        run_sfm(tmp_path, tmp_path / "out")
