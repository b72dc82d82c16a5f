"""Source-view selection (MVSNet score): hand-computed angles, brute force, id-order invariance."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest

import pipeline.scene.view_selection as view_selection
from pipeline.config import PrepareConfig
from pipeline.scene.view_selection import angle_weight, select_views


def G(theta: float) -> float:
    sigma = 1.0 if theta <= 5.0 else 10.0
    return math.exp(-((theta - 5.0) ** 2) / (2 * sigma * sigma))


def _on_circle(angle_deg: float, radius: float = 10.0) -> list[float]:
    # Camera centres on a circle around the origin in the x-z plane: the angle between the rays
    # of two of them to the origin is the difference of their angles.
    a = math.radians(angle_deg)
    return [radius * math.sin(a), 0.0, -radius * math.cos(a)]


def _hand_case():
    image_ids = np.array([10, 3, 7, 42, 99])
    angles = {10: 0.0, 3: 5.0, 7: 20.0, 42: -2.0}
    centers = np.array([_on_circle(angles[i]) if i in angles else [50.0, 0, 0] for i in image_ids])
    points = np.array([[0.0, 0, 0], [0.0, 0, 0], [50.0, 0, 10]])
    row = {int(i): k for k, i in enumerate(image_ids)}
    # Point 0 seen by 10, 3, 7, 42 (7 twice: a repeated observation counts once);
    # point 1 by 7 and 42; point 2 by 99 alone.
    tracks = [(0, 10), (0, 3), (0, 7), (0, 42), (0, 7), (1, 7), (1, 42), (2, 99)]
    obs_points = np.array([p for p, _ in tracks])
    obs_images = np.array([row[i] for _, i in tracks])
    expected = {
        (10, 3): G(5), (10, 7): G(20), (10, 42): G(2),
        (3, 7): G(15), (3, 42): G(7), (7, 42): 2 * G(22),
    }
    return image_ids, centers, points, obs_points, obs_images, expected


def test_angle_weight_is_mvsnet_piecewise_gaussian():
    theta = np.array([0.0, 4.0, 5.0, 6.0, 25.0])
    np.testing.assert_allclose(angle_weight(theta), [G(t) for t in theta])
    assert angle_weight(np.array([5.0]))[0] == 1.0


def test_scores_match_hand_computed_angles(caplog):
    image_ids, centers, points, obs_points, obs_images, expected = _hand_case()
    with caplog.at_level(logging.WARNING):
        result = select_views(image_ids, centers, points, obs_points, obs_images)
    for ref in (10, 3, 7, 42):
        pairs = {src: expected.get((ref, src), expected.get((src, ref))) for src in (10, 3, 7, 42) if src != ref}
        best_first = sorted(pairs, key=lambda s: -pairs[s])
        ids, scores = result.sources[ref]
        assert ids.tolist() == best_first
        np.testing.assert_allclose(scores, [pairs[s] for s in best_first], rtol=1e-9)
    assert result.sources[99][0].size == 0 and result.sources[99][1].size == 0
    assert "99" in caplog.text
    assert result.num_shared == {10: 1, 3: 1, 7: 2, 42: 2, 99: 0}


def test_top_k_keeps_the_best():
    image_ids, centers, points, obs_points, obs_images, expected = _hand_case()
    result = select_views(image_ids, centers, points, obs_points, obs_images, PrepareConfig(num_sources=1))
    assert {ref: ids.tolist() for ref, (ids, _) in result.sources.items()} == {
        # G(5) = 1 > G(20); G(5) > G(7) > G(15); G(15) = 0.61 > 2 G(22) = 0.47 > G(20) = 0.32;
        # G(7) = 0.98 > 2 G(22) > G(2) = 0.011.
        10: [3], 3: [10], 7: [3], 42: [3], 99: []
    }


def _random_case(seed=0, num_views=25, num_points=300):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_views, 3)) * [3, 1, 0.3] + [0, 0, -8]
    points = rng.normal(size=(num_points, 3)) + [0, 0, 2]
    obs_points, obs_images = [], []
    for p in range(num_points):
        track = rng.choice(num_views, size=rng.integers(1, 9), replace=False)
        obs_points += [p] * track.size
        obs_images += track.tolist()
    image_ids = rng.choice(10_000, size=num_views, replace=False)
    return image_ids, centers, points, np.array(obs_points), np.array(obs_images)


def _brute_force(image_ids, centers, points, obs_points, obs_images):
    scores = {}
    tracks = {}
    for p, i in zip(obs_points, obs_images):
        tracks.setdefault(p, set()).add(i)
    for p, views in tracks.items():
        for a, b in itertools.combinations(sorted(views), 2):
            ra, rb = points[p] - centers[a], points[p] - centers[b]
            cosine = ra @ rb / np.linalg.norm(ra) / np.linalg.norm(rb)
            theta = math.degrees(math.acos(min(1.0, max(-1.0, cosine))))
            key = (int(image_ids[a]), int(image_ids[b]))
            scores[key] = scores.get(key, 0.0) + G(theta)
            scores[key[::-1]] = scores[key]
    return scores


@pytest.mark.parametrize("dense", [True, False])
def test_matches_brute_force(dense, monkeypatch):
    if not dense:
        monkeypatch.setattr(view_selection, "_DENSE_LIMIT", 0)
    case = _random_case()
    expected = _brute_force(*case)
    result = select_views(*case, PrepareConfig(num_sources=4))
    for ref, (ids, scores) in result.sources.items():
        candidates = sorted(((s, src) for (r, src), s in expected.items() if r == ref), key=lambda t: (-t[0], t[1]))
        assert ids.tolist() == [src for _, src in candidates[:4]]
        np.testing.assert_allclose(scores, [s for s, _ in candidates[:4]], rtol=1e-9)


def test_invariant_to_order_and_labels_of_images():
    image_ids, centers, points, obs_points, obs_images = _random_case(seed=1)
    reference = select_views(image_ids, centers, points, obs_points, obs_images)
    rng = np.random.default_rng(5)
    permutation = rng.permutation(image_ids.size)  # new row k holds old row permutation[k]
    new_row_of_old = np.argsort(permutation)
    shuffled = select_views(
        image_ids[permutation], centers[permutation], points, obs_points, new_row_of_old[obs_images]
    )
    assert list(shuffled.sources) == sorted(shuffled.sources)
    for ref, (ids, scores) in reference.sources.items():
        np.testing.assert_array_equal(shuffled.sources[ref][0], ids)
        np.testing.assert_allclose(shuffled.sources[ref][1], scores, rtol=1e-12)
    # Relabelled ids (non-contiguous, different order): same selection under the relabelling.
    new_ids = rng.choice(np.arange(100_000, 200_000), size=image_ids.size, replace=False)
    relabel = dict(zip(image_ids.tolist(), new_ids.tolist()))
    relabelled = select_views(new_ids, centers, points, obs_points, obs_images)
    for ref, (ids, scores) in reference.sources.items():
        assert relabelled.sources[relabel[ref]][0].tolist() == [relabel[i] for i in ids.tolist()]


def test_bad_inputs_are_reported():
    image_ids, centers, points, obs_points, obs_images, _ = _hand_case()
    with pytest.raises(ValueError, match=r"expected centers of shape \(5, 3\)"):
        select_views(image_ids, centers[:4], points, obs_points, obs_images)
    with pytest.raises(ValueError, match="duplicates"):
        select_views(np.array([1, 1, 2, 3, 4]), centers, points, obs_points, obs_images)
    with pytest.raises(ValueError, match="observation_images out of range"):
        select_views(image_ids, centers, points, obs_points, obs_images + 5)


def test_no_observations_gives_no_sources():
    result = select_views(np.array([4, 2]), np.zeros((2, 3)), np.zeros((0, 3)), np.zeros(0, int), np.zeros(0, int))
    assert all(ids.size == 0 for ids, _ in result.sources.values())


def test_tracks_from_model_ignores_unknown_images():
    from pipeline.colmap import Image, Point3D

    def image(image_id, center):
        return Image(image_id, np.array([1.0, 0, 0, 0]), -np.asarray(center, float), 1, f"{image_id}.png",
                     np.zeros((0, 2)), np.zeros(0, np.int64))

    images = {5: image(5, [1, 0, 0]), 2: image(2, [0, 2, 0])}
    points = {
        11: Point3D(11, np.array([0.0, 0, 5]), np.array([1, 2, 3], np.uint8), 0.5, np.array([5, 2, 9]), np.zeros(3, np.int64)),
        12: Point3D(12, np.array([1.0, 1, 5]), np.array([4, 5, 6], np.uint8), 0.5, np.array([2]), np.zeros(1, np.int64)),
    }
    image_ids, centers, point_ids, xyz, obs_points, obs_images = view_selection.tracks_from_model(images, points)
    assert image_ids.tolist() == [2, 5]
    np.testing.assert_allclose(centers, [[0, 2, 0], [1, 0, 0]])
    assert point_ids.tolist() == [11, 12]
    assert list(zip(obs_points.tolist(), image_ids[obs_images].tolist())) == [(0, 5), (0, 2), (1, 2)]
