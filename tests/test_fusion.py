"""Fusion: consistency checks and point averaging on an analytic box-on-a-plane scene.

The scene is ray-cast exactly (no renderer needed): a ground square z = 0, |x|, |y| <= 1.5, with
a box [-0.4, 0.4] x [-0.4, 0.4] x [0, 0.5] on it, seen by cameras on a ring looking at the origin.
"""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from pipeline.config import FuseConfig
from pipeline.fusion import FusionInputError, FusionView, fuse_view, fuse_views, sample_depth

GROUND = 1.5
BOX_MIN = np.array([-0.4, -0.4, 0.0])
BOX_MAX = np.array([0.4, 0.4, 0.5])


def look_at(centre: np.ndarray, target=(0.0, 0.0, 0.1)) -> np.ndarray:
    """cam_from_world (3, 4) of a camera at ``centre`` looking at ``target``, world z up."""
    forward = np.asarray(target, float) - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    return np.concatenate([rotation, (-rotation @ centre)[:, None]], axis=1)


def _faces():
    """Axis-aligned rectangles (axis, value, bounds of the two other axes)."""
    faces = [(2, 0.0, {0: (-GROUND, GROUND), 1: (-GROUND, GROUND)})]
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for value in (BOX_MIN[axis], BOX_MAX[axis]):
            if axis == 2 and value == 0.0:
                continue  # the box's bottom lies on the ground
            faces.append((axis, value, {a: (BOX_MIN[a], BOX_MAX[a]) for a in others}))
    return faces


def ray_cast(K: np.ndarray, cam_from_world: np.ndarray, width: int, height: int) -> np.ndarray:
    """Exact z-depth (0 where the ray misses) of the scene, pixel centres at (j + 0.5, i + 0.5)."""
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    centre = -rotation.T @ translation
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays_cam = np.linalg.inv(K) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    rays = rotation.T @ rays_cam  # world direction with unit camera z: parameter t is z-depth
    best = np.full(xs.size, np.inf)
    for axis, value, bounds in _faces():
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (value - centre[axis]) / rays[axis]
        hit = centre[:, None] + rays * t
        ok = t > 1e-9
        for other, (low, high) in bounds.items():
            ok &= (hit[other] >= low - 1e-12) & (hit[other] <= high + 1e-12)
        best = np.where(ok & (t < best), t, best)
    return np.where(np.isfinite(best), best, 0.0).reshape(height, width).astype(np.float32)


def surface_distance(points: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest surface of the scene (ground or box faces)."""
    distances = []
    for axis, value, bounds in _faces():
        clamped = points.copy()
        clamped[:, axis] = value
        for other, (low, high) in bounds.items():
            clamped[:, other] = np.clip(clamped[:, other], low, high)
        distances.append(np.linalg.norm(points - clamped, axis=1))
    return np.min(distances, axis=0)


def texture(points: np.ndarray) -> np.ndarray:
    """A colour per world point (a checker of 0.1 units), uint8 (N, 3)."""
    cells = np.floor(points / 0.1).astype(np.int64)
    value = (cells[:, 0] * 73 + cells[:, 1] * 151 + cells[:, 2] * 29) % 7
    return np.stack([value * 36, 255 - value * 36, (value * 90) % 256], axis=1).astype(np.uint8)


def make_box_scene(num_views: int = 6, width: int = 64, height: int = 48, radius: float = 3.0):
    """Views of the analytic scene: dict id -> FusionView (GT depth, confidence 1, colours)."""
    focal = 0.9 * width
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    views = {}
    for index in range(num_views):
        angle = 2 * math.pi * index / (num_views * 2.5)  # a 144-degree arc: neighbours overlap
        centre = np.array([radius * math.cos(angle), radius * math.sin(angle), 2.0])
        cam_from_world = look_at(centre)
        depth = ray_cast(K, cam_from_world, width, height)
        xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        rays = np.linalg.inv(K) @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
        world = (cam_from_world[:, :3].T @ (rays * depth.ravel() - cam_from_world[:, 3:])).T
        image = texture(world).reshape(height, width, 3)
        image[depth == 0] = 0
        views[index + 1] = FusionView(
            image_id=index + 1,
            depth=depth,
            K=K.copy(),
            cam_from_world=cam_from_world,
            confidence=np.ones_like(depth),
            image=image,
        )
    ids = list(views)
    sources = {i: sorted((j for j in ids if j != i), key=lambda j: abs(j - i)) for i in ids}
    return views, sources


@pytest.fixture(scope="module")
def box_scene():
    return make_box_scene()


def test_sample_depth_bilinear_and_nearest(device):
    depth = torch.arange(12, dtype=torch.float32, device=device).reshape(3, 4) + 1.0
    # Pixel centres read exactly; halfway between two centres is the mean (bilinear).
    x = torch.tensor([0.5, 1.0, 3.5, 2.5, 4.2, 0.2], device=device)
    y = torch.tensor([0.5, 0.5, 2.5, 1.0, 1.5, 1.5], device=device)
    values, valid = sample_depth(depth, x, y, "bilinear")
    assert valid.tolist() == [True, True, True, True, False, False]
    torch.testing.assert_close(values[:4], torch.tensor([1.0, 1.5, 12.0, 5.0], device=device))
    values, valid = sample_depth(depth, x, y, "nearest")
    assert valid.tolist() == [True, True, True, True, False, True]
    torch.testing.assert_close(values[[0, 1, 2, 3, 5]], torch.tensor([1.0, 2.0, 12.0, 7.0, 5.0], device=device))


def test_sample_depth_ignores_holes(device):
    depth = torch.tensor([[2.0, 0.0], [0.0, 0.0]], device=device)
    values, valid = sample_depth(depth, torch.tensor([1.0, 1.5], device=device), torch.tensor([1.0, 1.5], device=device))
    # The only neighbour with a depth carries all the weight; a sample among holes only is invalid.
    assert valid.tolist() == [True, False]
    assert values[0].item() == pytest.approx(2.0)


@pytest.mark.parametrize("sampling", ["bilinear", "nearest"])
def test_ground_truth_depths_fuse_onto_the_surface(box_scene, sampling, device):
    views, sources = box_scene
    params = FuseConfig(sampling=sampling, num_sources=5, min_consistent_views=2)
    fused = list(fuse_views(list(views), sources, views.__getitem__, params, device))
    points = np.concatenate([f.xyz for f in fused])
    assert len(points) > 0.8 * sum(int((v.depth > 0).sum()) for v in views.values())
    # Exact depths: fused points lie on the surfaces up to the averaging of neighbouring samples
    # (a pixel here spans about 0.06 units; averaging across a box edge leaves the surface).
    distance = surface_distance(points.astype(np.float64))
    assert np.median(distance) < 0.005 and np.percentile(distance, 99) < 0.015 and distance.max() < 0.03
    for f in fused:
        assert f.mask.dtype == bool and f.mask.sum() == len(f.xyz)
        assert f.rgb.shape == f.xyz.shape and f.rgb.dtype == np.uint8
        normals = f.normals
        assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)


def test_normals_of_the_ground_point_up(box_scene):
    views, sources = box_scene
    fused = fuse_view(views[1], [views[s] for s in sources[1][:3]], FuseConfig(min_consistent_views=1))
    on_ground = (np.abs(fused.xyz[:, 2]) < 1e-5) & (np.abs(fused.xyz[:, :2]).max(axis=1) < 1.3)
    interior = fused.normals[on_ground]
    # Most ground points have the analytic normal +z (pixels at silhouettes may differ).
    assert np.mean(interior[:, 2] > 0.999) > 0.95


def test_colours_come_from_the_reference_image(box_scene):
    views, sources = box_scene
    fused = fuse_view(views[2], [views[s] for s in sources[2][:3]], FuseConfig(min_consistent_views=1))
    np.testing.assert_array_equal(fused.rgb, views[2].image[fused.mask])


def test_wrong_depths_are_rejected(box_scene, device):
    views, sources = box_scene
    reference = views[3]
    corrupted = reference.depth.copy()
    corrupted[10:30, 20:40] *= 1.05  # 5 % off: beyond the 1 % relative-depth threshold
    bad = FusionView(3, corrupted, reference.K, reference.cam_from_world, reference.confidence, reference.image)
    fused = fuse_view(bad, [views[s] for s in sources[3][:4]], FuseConfig(min_consistent_views=2), device)
    assert not fused.mask[10:30, 20:40].any()
    good = fuse_view(reference, [views[s] for s in sources[3][:4]], FuseConfig(min_consistent_views=2), device)
    assert good.mask[10:30, 20:40].mean() > 0.5


def test_confidence_threshold(box_scene):
    views, sources = box_scene
    reference = views[4]
    confidence = np.ones_like(reference.depth)
    confidence[:, :32] = 0.3
    view = FusionView(4, reference.depth, reference.K, reference.cam_from_world, confidence, reference.image)
    src = [views[s] for s in sources[4][:3]]
    fused = fuse_view(view, src, FuseConfig(min_confidence=0.5, min_consistent_views=1))
    assert not fused.mask[:, :32].any() and fused.mask[:, 32:].any()
    assert fused.num_photometric == int(((reference.depth > 0) & (confidence >= 0.5)).sum())
    loose = fuse_view(view, src, FuseConfig(min_confidence=0.2, min_consistent_views=1))
    assert loose.mask[:, :32].any()


def test_required_views_capped_by_available_sources(box_scene):
    views, _ = box_scene
    one_source = fuse_view(views[2], [views[3]], FuseConfig(min_consistent_views=3))
    assert one_source.mask.sum() > 0  # needs min(3, 1) = 1 agreeing source
    assert (one_source.num_consistent[one_source.mask] == 1).all()
    no_source = fuse_view(views[2], [], FuseConfig())
    assert no_source.mask.sum() == 0 and no_source.xyz.shape == (0, 3)


@pytest.mark.parametrize("dynamic", [False, True])
def test_filled_pixels_need_their_own_number_of_views(box_scene, dynamic):
    """fuse.filled_min_consistent_views: with four sources and min_consistent_views 4 (and no setting for
    filled pixels), the pixels the reference marks as filled are kept with 1 agreeing source once
    filled_min_consistent_views is 1 (the
    static vote: exactly those with >= 1), the others still need 4, and a view without a filled mask is
    fused as before."""
    views, sources = box_scene
    reference = views[3]
    filled = np.zeros(reference.depth.shape, bool)
    filled[:, : filled.shape[1] // 2] = True
    marked = FusionView(3, reference.depth, reference.K, reference.cam_from_world, reference.confidence,
                        reference.image, filled=filled)
    four = [views[s] for s in sources[3][:4]]
    strict = FuseConfig(min_consistent_views=4, filled_min_consistent_views=None, dynamic=dynamic,
                        max_free_space_violations=None)
    lenient = dataclass_replace(strict, filled_min_consistent_views=1)
    before, after = fuse_view(marked, four, strict), fuse_view(marked, four, lenient)
    assert (after.mask & ~before.mask & filled).sum() > 50
    np.testing.assert_array_equal(after.mask[~filled], before.mask[~filled])
    np.testing.assert_array_equal(fuse_view(reference, four, lenient).mask, before.mask)
    if not dynamic:
        agreeing = after.num_consistent.astype(int)
        np.testing.assert_array_equal(after.mask, (reference.depth > 0) & (agreeing >= np.where(filled, 1, 4)))
    with pytest.raises(FusionInputError, match="filled"):
        fuse_view(FusionView(3, reference.depth, reference.K, reference.cam_from_world, filled=filled[:, 1:]),
                  four, lenient)

def test_pixels_without_texture_need_their_own_number_of_views(box_scene):
    """fuse.low_texture_min_consistent_views: where the reference image is flat (a block painted one grey),
    pixels need that many agreeing sources, the textured rest min_consistent_views, and a filled pixel its
    own count before either; without the reference image the rule cannot run and says so."""
    views, sources = box_scene
    reference = views[3]
    image = reference.image.copy()
    image[10:30, 20:40] = 128
    flat = np.zeros(image.shape[:2], bool)
    flat[13:27, 23:37] = True  # the block's inside: its 7 x 7 windows see no texture
    filled = np.zeros_like(flat)
    filled[:, :30] = True
    four = [views[s] for s in sources[3][:4]]
    params = FuseConfig(min_consistent_views=1, low_texture_min_consistent_views=4, filled_min_consistent_views=2,
                        max_free_space_violations=None)
    view = FusionView(3, reference.depth, reference.K, reference.cam_from_world, reference.confidence, image,
                      filled=filled)
    fused = fuse_view(view, four, params)
    agreeing = fused.num_consistent.astype(int)
    needed = np.where(filled, 2, 1)
    np.testing.assert_array_equal(fused.mask[~flat], ((reference.depth > 0) & (agreeing >= needed))[~flat])
    inside = flat & ~filled
    np.testing.assert_array_equal(fused.mask[inside], ((reference.depth > 0) & (agreeing >= 4))[inside])
    assert (fused.mask[flat & filled] == ((reference.depth > 0) & (agreeing >= 2))[flat & filled]).all()
    assert ((reference.depth > 0) & (agreeing < 4) & (agreeing >= 1))[inside].any()  # the rule had pixels to drop
    with pytest.raises(FusionInputError, match="view 3: fuse.low_texture_min_consistent_views needs the reference image"):
        fuse_view(FusionView(3, reference.depth, reference.K, reference.cam_from_world), four, params)


def test_points_the_sources_see_through_are_dropped(box_scene):
    """fuse.max_free_space_violations: a block of the reference pulled 15 % towards the camera floats
    in front of the surface its sources see, so they see past it and it is dropped, even with no
    agreeing source required; the true surface (including the ground the box hides from some
    sources, which those sources see *in front of* the point, not past it) stays."""
    views, sources = box_scene
    reference = views[3]
    floating = reference.depth.copy()
    block = np.zeros(floating.shape, bool)
    block[10:30, 20:40] = True
    block &= floating > 0
    floating[block] *= 0.85
    view = FusionView(3, floating, reference.K, reference.cam_from_world, reference.confidence, reference.image)
    four = [views[s] for s in sources[3][:4]]
    keep_all = FuseConfig(min_consistent_views=0, filled_min_consistent_views=None, max_free_space_violations=None)
    checked = dataclass_replace(keep_all, max_free_space_violations=1)
    before, after = fuse_view(view, four, keep_all), fuse_view(view, four, checked)
    assert before.mask[block].all()
    assert after.mask[block].mean() < 0.05
    true_surface = before.mask & ~block
    assert after.mask[true_surface].mean() > 0.97
    assert not (after.mask & ~before.mask).any()
    np.testing.assert_array_equal(fuse_view(reference, four, keep_all).mask, before.mask | (reference.depth > 0))
    with pytest.raises(ValueError, match="max_free_space_violations"):
        FuseConfig(max_free_space_violations=-1)


def test_averaging_reduces_noise(box_scene):
    views, sources = box_scene
    rng = np.random.default_rng(0)
    noisy = {}
    for key, view in views.items():
        depth = view.depth * (1 + 0.002 * rng.standard_normal(view.depth.shape)).astype(np.float32)
        noisy[key] = FusionView(key, depth, view.K, view.cam_from_world, view.confidence, view.image)
    params = FuseConfig(min_consistent_views=1, max_relative_depth_error=0.02, max_reprojection_error=3)
    fused = fuse_view(noisy[3], [noisy[s] for s in sources[3][:5]], params)
    fused_error = surface_distance(fused.xyz.astype(np.float64)).mean()
    alone = fuse_view(noisy[3], [noisy[s] for s in sources[3][:5]], dataclass_replace(params, min_consistent_views=0))
    # Pixels kept with zero sources required include unsupported ones; compare on the same pixels.
    ref_only = _ref_points(noisy[3], fused.mask)
    assert fused_error < 0.8 * surface_distance(ref_only).mean()
    assert alone.mask.sum() >= fused.mask.sum()


def dataclass_replace(params, **changes):
    import dataclasses

    return dataclasses.replace(params, **changes)


def _ref_points(view: FusionView, mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    rays = np.linalg.inv(view.K) @ np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))])
    cam = rays * view.depth[rows, cols]
    rotation, translation = view.cam_from_world[:, :3], view.cam_from_world[:, 3]
    return (rotation.T @ (cam - translation[:, None])).T


def test_dynamic_consistency_depends_on_the_number_of_views(box_scene):
    views, sources = box_scene
    reference = views[3]
    scaled = FusionView(3, reference.depth * np.float32(1.004), reference.K, reference.cam_from_world,
                        reference.confidence, reference.image)
    params = FuseConfig(dynamic=True, min_consistent_views=1, dynamic_relative_depth_step=0.0025,
                          dynamic_reprojection_step=0.25)
    # 0.4 % off along the ray: mostly level ceil(0.004 / 0.0025) = 2 or more, so one source alone
    # rarely suffices (only where the surface's slant hides the error) ...
    alone = fuse_view(scaled, [views[2]], params)
    # ... but with five sources agreeing at levels <= 5 the pixels are kept.
    many = fuse_view(scaled, [views[s] for s in sources[3][:5]], params)
    assert many.mask.mean() > 0.3
    assert alone.mask.sum() < 0.05 * many.mask.sum()
    # Exact depths are kept by the dynamic rule as well, and the static 1 % rule keeps the 0.4 % error.
    exact = fuse_view(reference, [views[2]], params)
    assert exact.mask.sum() > 0.5 * (reference.depth > 0).sum() * 0.5
    static = fuse_view(scaled, [views[2]], FuseConfig(min_consistent_views=1))
    assert static.mask.sum() > 0


def test_streaming_holds_at_most_sources_plus_one_views(box_scene):
    views, sources = box_scene
    loaded = []

    def load(image_id):
        loaded.append(image_id)
        return views[image_id]

    params = FuseConfig(num_sources=2, min_consistent_views=1)
    results = list(fuse_views(list(views), sources, load, params))
    assert [r.image_id for r in results] == list(views)
    assert all(len(r.source_ids) == 2 for r in results)
    # Every view loaded; cache of 3 views means reloads happen but stay bounded.
    assert set(loaded) == set(views) and len(loaded) <= 3 * len(views)


def test_bad_input_names_the_view(box_scene):
    views, sources = box_scene
    reference = views[1]
    nan_depth = reference.depth.copy()
    nan_depth[3, 3] = np.nan
    with pytest.raises(FusionInputError, match="view 1.*NaN"):
        fuse_view(FusionView(1, nan_depth, reference.K, reference.cam_from_world), [views[2]])
    with pytest.raises(FusionInputError, match="view 7.*empty"):
        fuse_view(FusionView(7, np.zeros((0, 5), np.float32), reference.K, reference.cam_from_world), [])
    with pytest.raises(FusionInputError, match="view 1.*confidence"):
        fuse_view(FusionView(1, reference.depth, reference.K, reference.cam_from_world, np.ones((2, 2))), [])
    with pytest.raises(ValueError, match="sampling"):
        FuseConfig(sampling="cubic")


def test_all_zero_depth_gives_no_points(box_scene):
    views, _ = box_scene
    reference = views[1]
    empty = FusionView(1, np.zeros_like(reference.depth), reference.K, reference.cam_from_world,
                       None, reference.image)
    fused = fuse_view(empty, [views[2]], FuseConfig())
    assert fused.xyz.shape == (0, 3) and fused.rgb.shape == (0, 3) and fused.normals.shape == (0, 3)


@pytest.mark.cuda
def test_cuda_matches_cpu(box_scene):
    views, sources = box_scene
    src = [views[s] for s in sources[2][:4]]
    cpu = fuse_view(views[2], src, FuseConfig(min_consistent_views=2), "cpu")
    gpu = fuse_view(views[2], src, FuseConfig(min_consistent_views=2), "cuda")
    # Borderline pixels may flip between devices; nearly all must agree.
    assert (cpu.mask == gpu.mask).mean() > 0.999
    both = cpu.mask & gpu.mask
    np.testing.assert_allclose(
        cpu.xyz[both[cpu.mask]], gpu.xyz[both[gpu.mask]], atol=1e-4
    )


# ------------------------------------------------------------------------------------ stage level


def visible_surface_samples(views, spacing: float = 0.02, min_views: int = 2) -> np.ndarray:
    """GT points: a grid on every face, kept where at least ``min_views`` views see it (DTU-like)."""
    samples = []
    for axis, value, bounds in _faces():
        (a, (a_low, a_high)), (b, (b_low, b_high)) = sorted(bounds.items())
        ga, gb = np.meshgrid(np.arange(a_low, a_high + 1e-9, spacing), np.arange(b_low, b_high + 1e-9, spacing))
        points = np.zeros((ga.size, 3))
        points[:, axis] = value
        points[:, a] = ga.ravel()
        points[:, b] = gb.ravel()
        samples.append(points)
    points = np.concatenate(samples)
    # Points strictly inside the box (ground under it) are not surface points.
    inside = np.all((points > BOX_MIN + 1e-9) & (points < BOX_MAX - 1e-9), axis=1) | (
        (points[:, 2] == 0) & np.all(np.abs(points[:, :2]) < 0.4 - 1e-9, axis=1)
    )
    points = points[~inside]
    seen = np.zeros(len(points), dtype=np.int64)
    for view in views.values():
        cam = points @ view.cam_from_world[:, :3].T + view.cam_from_world[:, 3]
        pixels = cam @ view.K.T
        x, y = pixels[:, 0] / cam[:, 2], pixels[:, 1] / cam[:, 2]
        height, width = view.depth.shape
        ok = (cam[:, 2] > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
        d = np.zeros(len(points))
        d[ok] = view.depth[y[ok].astype(int), x[ok].astype(int)]
        seen += ok & (np.abs(d - cam[:, 2]) <= 0.02 * cam[:, 2])
    return points[seen >= min_views]


def write_box_scene(folder, num_views: int = 6, width: int = 64, height: int = 48, gt_spacing: float = 0.02):
    """A scene folder (gt/depth.h5, gt/points.ply) plus scene.h5 and a depth.h5 of GT depths (conf 1).

    Returns:
        (scene_dir, scene_h5, depth_h5, views)
    """
    from pipeline.formats.depth_file import DepthView, write_depth_file
    from pipeline.formats.ply import write_ply
    from pipeline.formats.scene_file import Scene, SceneView, write_scene

    scene_dir = folder / "box"
    (scene_dir / "gt").mkdir(parents=True)
    views, sources = make_box_scene(num_views, width, height)
    rng = np.random.default_rng(1)
    sparse = []
    for view in views.values():  # sparse points: a few GT surface points of each view
        rows, cols = np.nonzero(view.depth > 0)
        pick = rng.choice(len(rows), size=min(40, len(rows)), replace=False)
        rays = np.linalg.inv(view.K) @ np.stack([cols[pick] + 0.5, rows[pick] + 0.5, np.ones(len(pick))])
        cam = rays * view.depth[rows[pick], cols[pick]]
        sparse.append((view.cam_from_world[:, :3].T @ (cam - view.cam_from_world[:, 3:])).T)
    sparse_xyz = np.concatenate(sparse)
    sparse_ids = np.arange(1, len(sparse_xyz) + 1) * 3
    scene_views = {}
    for key, view in views.items():
        cam = sparse_xyz @ view.cam_from_world[:, :3].T + view.cam_from_world[:, 3]
        pixels = cam @ view.K.T
        x, y = pixels[:, 0] / cam[:, 2], pixels[:, 1] / cam[:, 2]
        ok = (cam[:, 2] > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
        d = np.zeros(len(cam))
        d[ok] = view.depth[y[ok].astype(int), x[ok].astype(int)]
        seen = ok & (np.abs(d - cam[:, 2]) <= 0.02 * cam[:, 2])
        scene_views[key] = SceneView(
            image_id=key, name=f"view{key:03d}.png", image=view.image, K=view.K,
            cam_from_world=view.cam_from_world, depth_range=np.array([1.0, 6.0]), num_depth=48,
            source_ids=np.array(sources[key]), source_scores=np.linspace(1, 0.5, len(sources[key])),
            mask=None, point3D_ids=sparse_ids[seen], width=width, height=height,
        )
    scene_h5 = folder / "scene.h5"
    write_scene(scene_h5, Scene(views=scene_views, points3D_ids=sparse_ids, points3D_xyz=sparse_xyz,
                                points3D_rgb=np.full((len(sparse_xyz), 3), 128, np.uint8)))
    depth_views = [
        DepthView(key, f"view{key:03d}.png", view.depth, np.ones_like(view.depth), view.K, view.cam_from_world)
        for key, view in views.items()
    ]
    write_depth_file(scene_dir / "gt" / "depth.h5", [
        DepthView(v.image_id, v.name, v.depth, None, v.K, v.cam_from_world) for v in depth_views
    ], {"kind": "selfmvs.gt_depth"})
    depth_h5 = folder / "depth.h5"
    write_depth_file(depth_h5, depth_views, {"checkpoint": "ground truth"})
    write_ply(scene_dir / "gt" / "points.ply", visible_surface_samples(views, gt_spacing).astype(np.float32))
    return scene_dir, scene_h5, depth_h5, views


@pytest.fixture(scope="module")
def box_files(tmp_path_factory):
    return write_box_scene(tmp_path_factory.mktemp("fuse"))


def test_run_fuse_writes_ply_and_masks(box_files, tmp_path):
    from pipeline.formats.ply import read_ply
    from pipeline.stages.fuse import run_fuse

    _, scene_h5, depth_h5, views = box_files
    out = tmp_path / "fused.ply"
    summary = run_fuse(scene_h5, depth_h5, out, FuseConfig(device="cpu"))
    cloud = read_ply(out)
    assert len(cloud) == summary["num_points"] > 0
    assert cloud.rgb.dtype == np.uint8 and cloud.normals is not None
    assert surface_distance(cloud.xyz.astype(np.float64)).max() < 0.03
    with h5py.File(tmp_path / "fused_masks.h5", "r") as masks:
        assert masks.attrs["kind"] == "selfmvs.fused_masks"
        assert sorted(int(k) for k in masks["views"]) == sorted(views)
        kept = sum(int(masks["views"][k]["mask"][()].sum()) for k in masks["views"])
        assert masks["views"]["1"]["mask"].dtype == np.uint8
        assert masks.attrs["format_version"] == 1 and masks.attrs["num_points"] == len(cloud)
        raw = {int(k): masks["views"][k]["mask"][()] for k in masks["views"]}
    assert kept == len(cloud)
    from pipeline.formats.fused_masks import read_fused_masks

    read = read_fused_masks(tmp_path / "fused_masks.h5")
    assert read.keys() == raw.keys()
    for image_id, mask in read.items():
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, raw[image_id] > 0)


def test_run_fuse_empty_result_is_a_valid_ply(box_files, tmp_path):
    from pipeline.formats.ply import read_ply
    from pipeline.stages.fuse import run_fuse

    _, scene_h5, depth_h5, _ = box_files
    out = tmp_path / "fused.ply"
    # Without source views no pixel can be confirmed: nothing survives.
    summary = run_fuse(scene_h5, depth_h5, out, FuseConfig(device="cpu", num_sources=0))
    assert summary["num_points"] == 0
    cloud = read_ply(out)
    assert len(cloud) == 0 and cloud.rgb is not None


def test_run_fuse_logs_where_the_scene_caps_num_sources(box_files, tmp_path, caplog):
    """fuse.num_sources beyond the scene's source lists is capped, and the log says so once."""
    from pipeline.formats.scene_file import read_scene
    from pipeline.stages.fuse import run_fuse

    _, scene_h5, depth_h5, _ = box_files
    stored = read_scene(scene_h5, load_images=False).num_sources
    with caplog.at_level("INFO"):
        run_fuse(scene_h5, depth_h5, tmp_path / "a.ply", FuseConfig(device="cpu", num_sources=stored))
        assert not [r for r in caplog.records if "fuse.num_sources" in r.getMessage()]
        run_fuse(scene_h5, depth_h5, tmp_path / "b.ply", FuseConfig(device="cpu", num_sources=stored + 7))
    capped = [r for r in caplog.records if "fuse.num_sources" in r.getMessage()]
    assert len(capped) == 1 and capped[0].levelname == "WARNING"
    assert f"fuse.num_sources is {stored + 7}, but the scene stores at most {stored}" in capped[0].getMessage()


def _copy_depth(depth_h5, out, change):
    from pipeline.formats.depth_file import read_depth_file, write_depth_file

    views = read_depth_file(depth_h5)
    change(views)
    write_depth_file(out, views.values(), {"checkpoint": "test"})
    return out


def test_run_fuse_bad_inputs_name_the_view(box_files, tmp_path):
    from pipeline.stages.fuse import FuseInputError, run_fuse

    _, scene_h5, depth_h5, _ = box_files
    config = FuseConfig(device="cpu")

    def drop(views):
        del views[4]

    missing = _copy_depth(depth_h5, tmp_path / "missing.h5", drop)
    with pytest.raises(FuseInputError, match=r"view\(s\) \[4\] of scene .*scene.h5 missing"):
        run_fuse(scene_h5, missing, tmp_path / "a.ply", config)

    def nan(views):
        views[2].depth[5, 5] = np.nan

    bad = _copy_depth(depth_h5, tmp_path / "nan.h5", nan)
    with pytest.raises(FuseInputError, match=r"scene.h5 .*view 2.*NaN"):
        run_fuse(scene_h5, bad, tmp_path / "b.ply", config)
    assert not (tmp_path / "b.ply").exists()  # atomic: no half-written output

    def shrink(views):
        views[3].depth = views[3].depth[:40, :50].copy()
        views[3].confidence = views[3].confidence[:40, :50].copy()

    small = _copy_depth(depth_h5, tmp_path / "small.h5", shrink)
    with pytest.raises(FuseInputError, match=r"view 3: depth map is 50x40 but the scene image is 64x48"):
        run_fuse(scene_h5, small, tmp_path / "c.ply", config)


def test_run_fuse_leaves_out_a_view_without_sources_as_infer_does(box_files, tmp_path, caplog):
    """selfmvs infer skips a view with no source view; fusion of its depth.h5 leaves that view out with a
    warning (it is no other view's source either) instead of calling it missing."""
    import dataclasses

    from pipeline.formats.scene_file import read_scene, write_scene
    from pipeline.stages.fuse import run_fuse

    _, scene_h5, depth_h5, views = box_files
    scene = read_scene(scene_h5)
    scene.views[4] = dataclasses.replace(scene.views[4], source_ids=np.zeros(0, np.int64),
                                         source_scores=np.zeros(0))
    write_scene(tmp_path / "scene.h5", scene)

    def drop(views):
        del views[4]

    depth = _copy_depth(depth_h5, tmp_path / "depth.h5", drop)
    with caplog.at_level("WARNING"):
        summary = run_fuse(tmp_path / "scene.h5", depth, tmp_path / "a.ply", FuseConfig(device="cpu"))
    assert sorted(summary["views"]) == sorted(set(views) - {4}) and summary["num_points"] > 0
    assert any("[4] have no source view" in r.getMessage() for r in caplog.records)


def test_run_fuse_accepts_downscaled_depth(box_files, tmp_path):
    """A depth map at half resolution with K scaled accordingly is fine (colours are resized)."""
    from pipeline.formats.ply import read_ply
    from pipeline.stages.fuse import run_fuse

    _, scene_h5, depth_h5, views = box_files

    def half(all_views):
        for key, view in all_views.items():
            K = view.K * np.array([[0.5], [0.5], [1.0]])
            view.depth = ray_cast(K, view.cam_from_world, 32, 24)
            view.confidence = np.ones_like(view.depth)
            view.K = K

    out = tmp_path / "half.ply"
    run_fuse(scene_h5, _copy_depth(depth_h5, tmp_path / "half.h5", half), out,
             FuseConfig(device="cpu", min_consistent_views=2))
    cloud = read_ply(out)
    assert len(cloud) > 0 and surface_distance(cloud.xyz.astype(np.float64)).max() < 0.06


def test_cli_fuse(box_files, tmp_path):
    from pipeline.cli import main

    _, scene_h5, depth_h5, _ = box_files
    config = tmp_path / "c.yaml"
    config.write_text("fuse: {device: cpu, min_consistent_views: 2}\n")
    assert main(["fuse", str(scene_h5), str(depth_h5), str(tmp_path / "f.ply"), "--config", str(config)]) == 0
    assert (tmp_path / "f.ply").is_file() and (tmp_path / "f_masks.h5").is_file()
    assert main(["fuse", str(scene_h5), str(tmp_path / "nope.h5"), str(tmp_path / "g.ply")]) == 1


# ------------------------------------------------------------------------------------------- PLY


def test_ply_stream_writer_matches_plyfile_writer(tmp_path):
    from pipeline.formats.ply import PlyStreamWriter, read_ply, write_ply

    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(7, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(7, 3), dtype=np.uint8)
    normals = rng.normal(size=(7, 3)).astype(np.float32)
    write_ply(tmp_path / "a.ply", xyz, rgb, normals, comments=["hello"])
    with PlyStreamWriter(tmp_path / "b.ply", with_normals=True, comments=["hello"]) as writer:
        writer.append(xyz[:3], rgb[:3], normals[:3])
        writer.append(xyz[3:3], rgb[3:3], normals[3:3])
        writer.append(xyz[3:], rgb[3:], normals[3:])
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()
    cloud = read_ply(tmp_path / "b.ply")
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.rgb, rgb)
    np.testing.assert_array_equal(cloud.normals, normals)
    assert b"format binary_little_endian" in (tmp_path / "a.ply").read_bytes()[:80]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_ply_empty_and_bad_files(tmp_path):
    from pipeline.formats.ply import PlyFormatError, PlyStreamWriter, read_ply, write_ply

    with PlyStreamWriter(tmp_path / "empty.ply") as writer:
        pass
    assert writer.count == 0 and len(read_ply(tmp_path / "empty.ply")) == 0
    with pytest.raises(ValueError, match=r"expected \(5, 3\) colours"):
        write_ply(tmp_path / "x.ply", np.zeros((5, 3)), np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_ply(tmp_path / "x.ply", np.zeros((5, 3)), np.zeros((5, 3)))
    (tmp_path / "bad.ply").write_bytes(b"not a ply at all")
    with pytest.raises(PlyFormatError, match="bad.ply"):
        read_ply(tmp_path / "bad.ply")
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        read_ply(tmp_path / "missing.ply")
    # An interrupted stream leaves neither the target nor a temporary file behind.
    with pytest.raises(RuntimeError):
        with PlyStreamWriter(tmp_path / "broken.ply") as writer:
            writer.append(np.zeros((2, 3)), np.zeros((2, 3), np.uint8))
            raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ply", "empty.ply"]


def test_dynamic_agreement_level_matches_brute_force():
    from pipeline.fusion import dynamic_agreement_level

    rng = np.random.default_rng(0)
    levels = rng.integers(1, 9, size=(6, 500)).astype(np.float32)
    levels[rng.random(levels.shape) < 0.2] = np.inf
    for min_views in (1, 3):
        got = dynamic_agreement_level(torch.from_numpy(levels), min_views).numpy()
        for pixel in range(levels.shape[1]):
            want = max(
                [n for n in range(min_views, 7) if (levels[:, pixel] <= n).sum() >= n], default=0
            )
            assert got[pixel] == want
