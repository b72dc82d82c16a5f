"""Render a synthetic scene folder: photos, a COLMAP model with tracks, and ground truth.

``render_scene(out_dir, seed=...)`` builds a random room with boxes, spheres, cylinders and a
ramp, places cameras on arcs in front of it, ray-casts anti-aliased images with procedural
textures, per-view exposure and sensor noise, and writes::

    images/000000.png ...   (image ids 1..N in this order)
    sparse/                 binary COLMAP model (PINHOLE, or OPENCV with distortion=True)
    gt/depth.h5             z-depth of the pinhole view at pixel centres (kind selfmvs.gt_depth)
    gt/points.ply           area-uniform samples of the visible surfaces, with normals
    gt/meta.json            seed, options, units, generator version

Every random draw comes from a stream named by (seed, purpose), and the lens never takes part in
one, so ``distortion=True`` renders the same scene, poses, textures, exposures and sparse points
as its distortion-free twin, seen through an OPENCV lens.

``render_scene(out_dir, seed=..., family="indoor")`` writes the same layout for a furnished room
seen by a hand-held camera (:mod:`pipeline.synth.indoor`); ``gt/meta.json`` then says
``"family": "indoor"``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from pipeline.synth.cameras import arc_rig, pixel_rays, project
from pipeline.synth.geometry import Box, Cylinder, Room, SceneGeometry, Sphere, rotation_zyx
from pipeline.synth.textures import Material, NoiseTable, noise_table, random_material, shade

log = logging.getLogger(__name__)

GENERATOR = "selfmvs.synth"
GENERATOR_VERSION = 1
FAMILIES = ("object", "indoor")  # render_scene(family=...); meta.json without "family" is "object"
_CHUNK = 1 << 15  # rays per vectorised batch: its arrays stay in cache (30 % faster than 1 << 17)

# Random streams: np.random.default_rng([seed, stream]).
_STREAM_GEOMETRY, _STREAM_MATERIALS, _STREAM_CAMERAS, _STREAM_EXPOSURE = 1, 2, 3, 4
_STREAM_SENSOR, _STREAM_SPARSE, _STREAM_DENSE, _STREAM_OPTIONS = 5, 6, 7, 8


@dataclasses.dataclass(frozen=True)
class SceneOptions:
    """Everything that shapes a scene besides seed, view count, image size and lens.

    Attributes:
        num_boxes, num_spheres, num_cylinders: object counts (boxes may be tilted).
        ramp: add a slanted slab (a ramp) partly sunk into the ground.
        num_weak: how many surfaces (walls or objects) get a nearly uniform texture.
        camera_radius: distance of the cameras from the scene centre (scene units).
        elevation_deg: mean elevation of the camera rows above the scene centre.
        step_deg: azimuth between neighbouring views of a row.
        views_per_row: views per arc; more views start new rows at other elevations.
        row_step_deg: elevation between rows.
        jitter: irregularity of the rig (0 = a perfect arc).
        focal_factor: fx / width.
        exposure_range: per-view gain drawn from 1 +- this.
        noise_sigma: sensor noise standard deviation (intensity in [0, 1]).
        supersampling: samples per pixel along each axis (anti-aliasing).
        shadows: cast shadows of the objects from the light.
        ambient: share of ambient light in [0, 1].
        distortion_params: OPENCV k1, k2, p1, p2 used when ``distortion=True``.
        num_sparse_points: sparse points with tracks (None: from image size, 200..4000).
        num_gt_points: dense ground-truth samples (None: from image size, 5000..200000).
        keypoint_noise_px: standard deviation of the keypoint positions in the COLMAP model.
    """

    num_boxes: int = 4
    num_spheres: int = 2
    num_cylinders: int = 2
    ramp: bool = True
    num_weak: int = 1
    camera_radius: float = 4.5
    elevation_deg: float = 25.0
    step_deg: float = 8.0
    views_per_row: int = 10
    row_step_deg: float = 8.0
    jitter: float = 1.0
    focal_factor: float = 0.9
    exposure_range: float = 0.2
    noise_sigma: float = 0.01
    supersampling: int = 2
    shadows: bool = True
    ambient: float = 0.35
    distortion_params: tuple[float, float, float, float] = (-0.12, 0.03, 0.0012, -0.0008)
    num_sparse_points: int | None = None
    num_gt_points: int | None = None
    keypoint_noise_px: float = 0.3

    def __post_init__(self) -> None:
        counts = {"num_boxes": self.num_boxes, "num_spheres": self.num_spheres, "num_cylinders": self.num_cylinders}
        for name, value in counts.items():
            if not 0 <= int(value) <= 20:
                raise ValueError(f"{name} must be in [0, 20], got {value}")
        if not 0 <= self.num_weak <= 3:
            raise ValueError(f"num_weak must be in [0, 3], got {self.num_weak}")
        if not 1.5 <= self.camera_radius <= 12:
            raise ValueError(f"camera_radius must be in [1.5, 12], got {self.camera_radius}")
        if not 0 < self.step_deg <= 30 or not 0 <= self.row_step_deg <= 30:
            raise ValueError(f"step_deg/row_step_deg must be in (0, 30], got {self.step_deg}, {self.row_step_deg}")
        if not 5 <= self.elevation_deg <= 60:
            raise ValueError(f"elevation_deg must be in [5, 60], got {self.elevation_deg}")
        if self.views_per_row < 1:
            raise ValueError(f"views_per_row must be >= 1, got {self.views_per_row}")
        if not 0.4 <= self.focal_factor <= 3:
            raise ValueError(f"focal_factor must be in [0.4, 3], got {self.focal_factor}")
        if not 0 <= self.exposure_range < 1 or not 0 <= self.noise_sigma <= 0.2:
            raise ValueError(
                f"exposure_range must be in [0, 1) and noise_sigma in [0, 0.2], "
                f"got {self.exposure_range}, {self.noise_sigma}"
            )
        if not 1 <= self.supersampling <= 4:
            raise ValueError(f"supersampling must be in [1, 4], got {self.supersampling}")
        if not 0 <= self.keypoint_noise_px <= 5:
            raise ValueError(f"keypoint_noise_px must be in [0, 5], got {self.keypoint_noise_px}")
        if not 0 <= self.ambient <= 1 or not 0 <= self.jitter <= 3:
            raise ValueError(f"ambient must be in [0, 1] and jitter in [0, 3], got {self.ambient}, {self.jitter}")
        if len(self.distortion_params) != 4:
            raise ValueError(f"distortion_params must be (k1, k2, p1, p2), got {self.distortion_params}")


def random_scene_options(seed: int) -> dict[str, Any]:
    """Varied scene options for training data: object counts, texture mix, rig geometry.

    Pass the result on as ``render_scene(out_dir, seed=seed, **random_scene_options(seed))``.
    """
    rng = np.random.default_rng([int(seed), _STREAM_OPTIONS])
    return {
        "num_boxes": int(rng.integers(2, 7)),
        "num_spheres": int(rng.integers(0, 4)),
        "num_cylinders": int(rng.integers(0, 4)),
        "ramp": bool(rng.uniform() < 0.6),
        "num_weak": int(rng.integers(0, 3)),
        "camera_radius": float(rng.uniform(3.5, 6.0)),
        "elevation_deg": float(rng.uniform(15.0, 40.0)),
        "step_deg": float(rng.uniform(5.0, 12.0)),
        "focal_factor": float(rng.uniform(0.8, 1.0)),
        "exposure_range": float(rng.uniform(0.05, 0.25)),
        "noise_sigma": float(rng.uniform(0.003, 0.02)),
        "ambient": float(rng.uniform(0.25, 0.5)),
    }


@dataclasses.dataclass
class SyntheticScene:
    """A built scene: geometry, materials, lights, cameras and per-view exposure."""

    geometry: SceneGeometry
    materials: list[Material]
    noise_table: NoiseTable
    light_direction: np.ndarray
    K: np.ndarray
    cams_from_world: np.ndarray  # (V, 3, 4)
    gains: np.ndarray  # (V, 3) per-view, per-channel exposure gain
    width: int
    height: int
    options: SceneOptions
    seed: int

    def albedo(self, points: np.ndarray, material: np.ndarray) -> np.ndarray:
        """Albedo of surface points (N, 3) of the given materials (N,); (N, 3) float32."""
        out = np.zeros((len(points), 3), dtype=np.float32)
        points_cm = np.ascontiguousarray(points.T)
        for index in np.unique(material):
            if index < 0:
                continue
            mine = np.flatnonzero(material == index)
            out[mine] = self.materials[index].albedo(points_cm[:, mine], self.noise_table)
        return out

    def radiance(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shaded colour and hit distance of rays (the distance is the z-depth for camera rays)."""
        hits = self.geometry.cast(origin, directions)
        albedo = self.albedo(hits.points, hits.material)
        lit = np.ones(len(hits.t), dtype=np.float32)
        if self.options.shadows:
            facing = self.light_direction @ hits.normals.T > 0
            idx = np.flatnonzero(facing)
            shadow_origins = hits.points[idx] + 1e-5 * hits.normals[idx]
            t, _ = self.geometry.nearest_t(
                shadow_origins, np.broadcast_to(self.light_direction, (idx.size, 3)), shadow_casters_only=True
            )
            lit[idx[np.isfinite(t)]] = 0.0
        return shade(albedo, hits.normals, self.light_direction, lit, self.options.ambient), hits.t

    def photo(self, radiance: np.ndarray, view: int) -> np.ndarray:
        """The stored photo of one view's radiance (:func:`to_image`). Shape: (H, W, 3) uint8."""
        return to_image(self, radiance, view)

    def meta_extra(self) -> dict[str, Any]:
        """Family-specific entries of ``gt/meta.json``."""
        return {"light_direction": self.light_direction.tolist()}


def _place_objects(rng: np.random.Generator, options: SceneOptions, material_ids) -> list:
    """Boxes, spheres, cylinders and a ramp on the ground around the origin, not overlapping much."""
    footprints: list[tuple[float, float, float]] = []  # (x, y, radius)
    # Close cameras see less: shrink the layout so that the objects stay in view.
    spread = float(np.clip(options.camera_radius / 4.5, 0.6, 1.0))

    def free_spot(radius: float) -> tuple[float, float]:
        for _ in range(200):
            x, y = spread * rng.uniform(-1.7, 1.7), spread * rng.uniform(-1.3, 1.5)
            if all(np.hypot(x - fx, y - fy) > 0.8 * (radius + fr) for fx, fy, fr in footprints):
                break
        footprints.append((x, y, radius))
        return x, y

    objects = []
    if options.ramp:
        half = np.array([rng.uniform(0.5, 0.8), rng.uniform(0.9, 1.3), 0.06])
        slope = rng.uniform(0.25, 0.45)
        rotation = rotation_zyx(rng.uniform(-0.6, 0.6), 0.0, slope)
        x, y = free_spot(0.8 * half[1])
        # The low end is sunk into the ground, the high end rises 1.6 * half-length * sin(slope).
        z = 0.6 * half[1] * np.sin(slope)
        objects.append(Box(np.array([x, y, z]), half, rotation, np.full(6, next(material_ids))))
    for _ in range(options.num_boxes):
        half = rng.uniform([0.15, 0.15, 0.15], [0.5, 0.5, 0.7])
        tilt = rng.uniform() < 0.35
        rotation = rotation_zyx(
            rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3) if tilt else 0.0, rng.uniform(-0.3, 0.3) if tilt else 0.0
        )
        x, y = free_spot(float(np.hypot(half[0], half[1])))
        corners = (np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * half) @ rotation.T
        z = -corners[:, 2].min() - (0.05 if tilt else 0.0)
        objects.append(Box(np.array([x, y, z]), half, rotation, np.full(6, next(material_ids))))
    for _ in range(options.num_spheres):
        radius = rng.uniform(0.2, 0.5)
        x, y = free_spot(radius)
        z = radius * rng.uniform(0.6, 1.6)  # resting, sunk, or floating a little
        objects.append(Sphere(np.array([x, y, z]), float(radius), np.array([next(material_ids)])))
    for _ in range(options.num_cylinders):
        radius = rng.uniform(0.12, 0.35)
        x, y = free_spot(radius)
        height = rng.uniform(0.4, 1.5)
        objects.append(Cylinder(np.array([x, y, 0.0]), float(radius), float(height), np.full(3, next(material_ids))))
    return objects


def build_scene(
    seed: int, num_views: int, width: int, height: int, options: SceneOptions
) -> SyntheticScene:
    """Geometry, materials, cameras and exposures of the scene of ``seed`` (no lens involved)."""
    geometry_rng = np.random.default_rng([seed, _STREAM_GEOMETRY])
    material_rng = np.random.default_rng([seed, _STREAM_MATERIALS])
    counter = iter(range(10_000))
    # Room: ground, back wall, side walls, ceiling, front wall (faces +x -x +y -y +z -z).
    back = geometry_rng.uniform(2.5, 3.5)
    side = geometry_rng.uniform(4.5, 6.0) + 0.5 * options.camera_radius
    front = -(options.camera_radius + geometry_rng.uniform(2.5, 4.0))
    ceiling = geometry_rng.uniform(4.0, 5.0) + 0.4 * options.camera_radius
    room_materials = np.array([next(counter) for _ in range(6)])
    objects = _place_objects(geometry_rng, options, counter)
    num_materials = next(counter)
    # Weak textures go to a side wall or an object, never to the ground or the back wall.
    weak_candidates = [int(room_materials[0]), int(room_materials[1])] + list(range(6, num_materials))
    weak = set(
        int(m)
        for m in geometry_rng.choice(
            weak_candidates, size=min(options.num_weak, len(weak_candidates)), replace=False
        )
    )
    materials = [random_material(material_rng, weak=index in weak) for index in range(num_materials)]

    camera_rng = np.random.default_rng([seed, _STREAM_CAMERAS])
    target = np.array([0.0, 0.2, 0.35])
    poses = arc_rig(
        camera_rng,
        num_views,
        target,
        options.camera_radius,
        options.elevation_deg,
        options.step_deg,
        options.views_per_row,
        options.row_step_deg,
        options.jitter,
    )
    # The room encloses every camera (with 1 m to spare), whatever the rig options.
    centres = np.einsum("vji,vj->vi", poses[:, :, :3], -poses[:, :, 3])
    side = max(side, float(np.abs(centres[:, 0]).max()) + 1.0)
    front = min(front, float(centres[:, 1].min()) - 1.0)
    ceiling = max(ceiling, float(centres[:, 2].max()) + 1.0)
    if centres[:, 1].max() > back - 1.0:
        raise ValueError(
            f"camera rig reaches behind the back wall (y up to {centres[:, 1].max():.2f}); "
            "use a smaller step_deg or views_per_row"
        )
    room = Room(np.array([-side, front, 0.0]), np.array([side, back, ceiling]), room_materials)
    focal = options.focal_factor * width
    principal = np.array([width, height]) * (0.5 + camera_rng.uniform(-0.01, 0.01, size=2))
    K = np.array([[focal, 0.0, principal[0]], [0.0, focal, principal[1]], [0.0, 0.0, 1.0]])
    light = np.array([camera_rng.uniform(-0.6, 0.6), camera_rng.uniform(-0.9, -0.3), 1.0])
    exposure_rng = np.random.default_rng([seed, _STREAM_EXPOSURE])
    gains = 1.0 + options.exposure_range * exposure_rng.uniform(-1.0, 1.0, size=(num_views, 1))
    gains = gains * (1.0 + 0.03 * exposure_rng.uniform(-1.0, 1.0, size=(num_views, 3)))  # white balance
    return SyntheticScene(
        geometry=SceneGeometry([room, *objects]),
        materials=materials,
        noise_table=noise_table(seed),
        light_direction=light / np.linalg.norm(light),
        K=K,
        cams_from_world=poses,
        gains=gains,
        width=width,
        height=height,
        options=options,
        seed=seed,
    )


def _pixel_grid(width: int, height: int, samples: int) -> np.ndarray:
    """Sample positions (x, y), ``samples``^2 per pixel, ordered (H, s, W, s) for averaging."""
    offsets = (np.arange(samples) + 0.5) / samples
    xs = (np.arange(width)[:, None] + offsets[None, :]).ravel()
    ys = (np.arange(height)[:, None] + offsets[None, :]).ravel()
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def render_radiance(scene: SyntheticScene, view: int, dist: np.ndarray | None) -> np.ndarray:
    """Anti-aliased radiance of one view (before exposure and noise). Shape: (H, W, 3) float32."""
    samples = scene.options.supersampling
    pixels = _pixel_grid(scene.width, scene.height, samples)
    colour = np.empty((len(pixels), 3), dtype=np.float32)
    for start in range(0, len(pixels), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        origin, directions = pixel_rays(pixels[chunk], scene.K, scene.cams_from_world[view], dist)
        colour[chunk], _ = scene.radiance(origin, directions)
    colour = colour.reshape(scene.height, samples, scene.width, samples, 3)
    return colour.mean(axis=(1, 3))


def render_depth(scene: SyntheticScene, view: int) -> np.ndarray:
    """Pinhole z-depth at pixel centres, 0 where nothing is hit. Shape: (H, W) float32."""
    return _depth_at_pixel_centres(scene.geometry, scene.K, scene.cams_from_world[view], scene.width, scene.height)


def _depth_at_pixel_centres(geometry: SceneGeometry, K, cam_from_world, width: int, height: int) -> np.ndarray:
    pixels = _pixel_grid(width, height, 1)
    depth = np.empty(len(pixels))
    for start in range(0, len(pixels), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        origin, directions = pixel_rays(pixels[chunk], K, cam_from_world)
        depth[chunk], _ = geometry.nearest_t(origin, directions)
    depth[~np.isfinite(depth)] = 0.0
    return depth.reshape(height, width).astype(np.float32)


def load_scene(scene_dir: str | os.PathLike) -> SyntheticScene:
    """Rebuild the scene of a rendered folder from its ``gt/meta.json`` (seed and options).

    Raises:
        FileNotFoundError: no ``gt/meta.json``.
        ValueError: the folder was written by another generator or generator version.
    """
    path = Path(scene_dir) / "gt" / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {scene_dir} a synthetic scene?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if meta.get("generator") != GENERATOR or meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(
            f"{path}: written by {meta.get('generator')!r} version {meta.get('generator_version')!r}; "
            f"this is {GENERATOR!r} version {GENERATOR_VERSION}, which cannot rebuild it"
        )
    options = dict(meta["options"])
    options["distortion_params"] = tuple(options["distortion_params"])
    family = meta.get("family", "object")
    if family == "indoor":
        from pipeline.synth.indoor import FAMILY_VERSION, IndoorOptions, build_indoor_scene

        if meta.get("family_version") != FAMILY_VERSION:
            raise ValueError(
                f"{path}: indoor scene of family version {meta.get('family_version')!r}; "
                f"this generator builds version {FAMILY_VERSION}, which cannot rebuild it"
            )
        return build_indoor_scene(meta["seed"], meta["num_views"], meta["width"], meta["height"], IndoorOptions(**options))
    if family != "object":
        raise ValueError(f"{path}: unknown scene family {family!r} (known: {list(FAMILIES)})")
    return build_scene(meta["seed"], meta["num_views"], meta["width"], meta["height"], SceneOptions(**options))


def depth_for_camera(
    scene_dir: str | os.PathLike, K: np.ndarray, cam_from_world: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Exact ground-truth z-depth of a rendered scene for any pinhole camera.

    For evaluating depth maps whose camera differs from ``gt/depth.h5`` (after undistortion
    with a new K, or at another resolution): the scene is rebuilt from ``gt/meta.json`` and
    ray-cast at the pixel centres of the given camera.

    Shape:
        K: (3, 3) pixels; cam_from_world: (3, 4) or (4, 4); returns (height, width) float32,
        0 where no surface.
    """
    K = np.asarray(K, dtype=np.float64)
    cam_from_world = np.asarray(cam_from_world, dtype=np.float64)
    if K.shape != (3, 3) or cam_from_world.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"expected K (3, 3) and cam_from_world (3, 4), got {K.shape} and {cam_from_world.shape}")
    return _depth_at_pixel_centres(load_scene(scene_dir).geometry, K, cam_from_world[:3], int(width), int(height))


def to_image(scene: SyntheticScene, radiance: np.ndarray, view: int) -> np.ndarray:
    """Exposure gain, sensor noise and 8-bit quantisation. Shape: (H, W, 3) uint8."""
    rng = np.random.default_rng([scene.seed, _STREAM_SENSOR, view])
    noise = rng.normal(0.0, scene.options.noise_sigma, size=radiance.shape)
    value = radiance * scene.gains[view] + noise
    return np.clip(np.round(value * 255.0), 0, 255).astype(np.uint8)


def _camera_centres(scene: SyntheticScene) -> np.ndarray:
    rotations, translations = scene.cams_from_world[:, :, :3], scene.cams_from_world[:, :, 3]
    return -np.einsum("vji,vj->vi", rotations, translations)


def visible_in_views(
    scene: SyntheticScene,
    points: np.ndarray,
    normals: np.ndarray,
    dist: np.ndarray | None,
    margin: float = 1.0,
    min_cosine: float = 0.0,
    any_view: bool = False,
) -> np.ndarray:
    """Which points each view sees unoccluded, inside both its pinhole and its lens image.

    A point is seen when it projects at least ``margin`` pixels inside the image (of the
    pinhole camera and, if ``dist`` is given, of the distorted one too, so both twins agree), is
    in front of the camera, faces it (cosine of the viewing angle > ``min_cosine``), and the ray
    from the camera centre to it hits nothing before it. With ``any_view`` a point already seen
    by an earlier view is not tested again (enough to know whether *some* view sees it).

    Shape:
        points, normals: (N, 3); returns (V, N) bool.
    """
    centres = _camera_centres(scene)
    points_cm = np.ascontiguousarray(points.T)
    normals_cm = np.ascontiguousarray(normals.T)
    visible = np.zeros((len(centres), len(points)), dtype=bool)
    seen = np.zeros(len(points), dtype=bool)
    for view, centre in enumerate(centres):
        candidates = ~seen if any_view else np.ones(len(points), dtype=bool)
        for lens in (None, dist) if dist is not None else (None,):
            pixels, depth = project(points, scene.K, scene.cams_from_world[view], lens)
            candidates &= (
                (depth > 1e-3)
                & (pixels[:, 0] >= margin)
                & (pixels[:, 0] <= scene.width - margin)
                & (pixels[:, 1] >= margin)
                & (pixels[:, 1] <= scene.height - margin)
            )
        idx = np.flatnonzero(candidates)
        to_camera = centre[:, None] - points_cm[:, idx]
        cosine = np.sum(normals_cm[:, idx] * to_camera, axis=0) / np.sqrt(np.sum(to_camera * to_camera, axis=0))
        idx = idx[cosine > min_cosine]
        for start in range(0, idx.size, _CHUNK):
            sub = idx[start : start + _CHUNK]
            t, _ = scene.geometry._nearest_t(centre[:, None], points_cm[:, sub] - centre[:, None])
            visible[view, sub] = t > 1.0 - 1e-6
        seen |= visible[view]
    return visible


def _sparse_model(scene: SyntheticScene, dist: np.ndarray | None, num_points: int):
    """COLMAP cameras, images and points3D: textured surface points with their full tracks."""
    from pipeline.colmap import Camera, Image, Point3D, rotmat_to_qvec

    rng = np.random.default_rng([scene.seed, _STREAM_SPARSE])
    num_views = len(scene.cams_from_world)
    count = 3 * num_points + 64
    views = rng.integers(0, num_views, size=count)
    pixels = rng.uniform([0.0, 0.0], [scene.width, scene.height], size=(count, 2))
    points, normals = np.zeros((count, 3)), np.zeros((count, 3))
    materials = np.full(count, -1, dtype=np.int64)
    for view in range(num_views):
        mine = np.flatnonzero(views == view)
        origin, directions = pixel_rays(pixels[mine], scene.K, scene.cams_from_world[view])
        hits = scene.geometry.cast(origin, directions)
        points[mine], normals[mine], materials[mine] = hits.points, hits.normals, hits.material
    textured = np.array([m >= 0 and not scene.materials[m].weak for m in materials])
    points, normals = points[textured], normals[textured]
    visible = visible_in_views(scene, points, normals, dist, margin=2.0, min_cosine=0.2)
    keep = np.flatnonzero(visible.sum(axis=0) >= 2)[:num_points]
    points, normals, visible = points[keep], normals[keep], visible[:, keep]
    noise = rng.normal(0.0, scene.options.keypoint_noise_px, size=(num_views, len(points), 2))
    # Colour of the point as a well exposed photo would show it.
    radiance = scene.radiance(points + 1e-4 * normals, -normals)[0]
    rgb = np.clip(np.round(radiance * 255), 0, 255).astype(np.uint8)
    # Unmatched keypoints (point3D id -1) as a real model has them; drawn independent of the lens.
    extra_counts = rng.integers(5, 20, size=num_views)
    extra_pixels = [rng.uniform([0, 0], [scene.width, scene.height], size=(n, 2)) for n in extra_counts]

    pinhole_params = np.array([scene.K[0, 0], scene.K[1, 1], scene.K[0, 2], scene.K[1, 2]])
    if dist is None:
        camera = Camera(1, "PINHOLE", scene.width, scene.height, pinhole_params)
    else:
        camera = Camera(1, "OPENCV", scene.width, scene.height, np.concatenate([pinhole_params, dist]))
    point_ids = np.arange(1, len(points) + 1, dtype=np.int64)
    images = {}
    track_images: list[list[int]] = [[] for _ in points]
    track_indices: list[list[int]] = [[] for _ in points]
    squared_error = np.zeros(len(points))
    for view in range(num_views):
        image_id = view + 1
        seen = np.flatnonzero(visible[view])
        projected, _ = project(points[seen], scene.K, scene.cams_from_world[view], dist)
        xys = np.concatenate([projected + noise[view, seen], extra_pixels[view]])
        ids = np.concatenate([point_ids[seen], np.full(extra_counts[view], -1, dtype=np.int64)])
        for index, point in enumerate(seen):
            track_images[point].append(image_id)
            track_indices[point].append(index)
        squared_error[seen] += np.sum(noise[view, seen] ** 2, axis=1)
        rotation = scene.cams_from_world[view][:, :3]
        images[image_id] = Image(
            id=image_id,
            qvec=rotmat_to_qvec(rotation),
            tvec=scene.cams_from_world[view][:, 3].copy(),
            camera_id=1,
            name=image_name(view),
            xys=xys,
            point3D_ids=ids,
        )
    track_lengths = visible.sum(axis=0)
    points3D = {
        int(point_ids[i]): Point3D(
            id=int(point_ids[i]),
            xyz=points[i].copy(),
            rgb=rgb[i],
            error=float(np.sqrt(squared_error[i] / track_lengths[i])),
            image_ids=np.array(track_images[i], dtype=np.int64),
            point2D_idxs=np.array(track_indices[i], dtype=np.int64),
        )
        for i in range(len(points))
    }
    return {1: camera}, images, points3D


def dense_points(scene: SyntheticScene, num_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-uniform samples of the surfaces that at least two views see, with normals and colours."""
    rng = np.random.default_rng([scene.seed, _STREAM_DENSE])
    primitives = scene.geometry.primitives
    # Most of the room is never seen: sample its faces only around what a coarse grid of rays
    # through every view hits (rejection below keeps the density uniform on what is seen).
    room = primitives[0]
    coarse = np.stack(np.meshgrid(np.linspace(0, scene.width, 33), np.linspace(0, scene.height, 25)), -1)
    wall_points = []
    for view in range(len(scene.cams_from_world)):
        origin, directions = pixel_rays(coarse.reshape(-1, 2), scene.K, scene.cams_from_world[view])
        hits = scene.geometry.cast(origin, directions)
        wall_points.append(hits.points[hits.primitive == 0])
    room.restrict_sampling(np.concatenate(wall_points), margin=0.1)
    areas = np.array([p.area() for p in primitives])
    collected: list[tuple[np.ndarray, np.ndarray]] = []
    total = 0
    for _ in range(50):
        batch = max(4 * (num_points - total), 20_000)
        counts = rng.multinomial(batch, areas / areas.sum())
        samples = [p.sample(rng, int(n)) for p, n in zip(primitives, counts) if n > 0]
        points = np.concatenate([s[0] for s in samples])
        normals = np.concatenate([s[1] for s in samples])
        # Only surfaces that two or more views see can be reconstructed by multi-view stereo;
        # ground truth beyond them would cap every method's recall.
        seen = visible_in_views(scene, points, normals, None, margin=0.0).sum(axis=0) >= 2
        points, normals = points[seen], normals[seen]
        collected.append((points, normals))
        total += len(points)
        if total >= num_points:
            break
    # Samples come grouped by primitive: keep a random subset, not the first primitives' samples.
    points = np.concatenate([c[0] for c in collected])
    normals = np.concatenate([c[1] for c in collected])
    keep = rng.permutation(len(points))[:num_points]
    points, normals = points[keep], normals[keep]
    radiance = scene.radiance(points + 1e-4 * normals, -normals)[0]
    rgb = np.clip(np.round(radiance * 255), 0, 255).astype(np.uint8)
    return points, normals, rgb


def image_name(view: int) -> str:
    return f"{view:06d}.png"


def _default_count(
    value: int | None, width: int, height: int, num_views: int, divisor: int, low: int, high: int
) -> int:
    if value is not None:
        if int(value) < 1:
            raise ValueError(f"point counts must be >= 1, got {value}")
        return int(value)
    return int(np.clip(width * height * num_views // divisor, low, high))


def render_scene(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    num_views: int = 10,
    width: int = 320,
    height: int = 240,
    distortion: bool = False,
    family: str = "object",
    **options: Any,
) -> Path:
    """Render a synthetic scene folder (images/, sparse/, gt/); see the module docstring.

    Args:
        out_dir: folder to create. An existing empty folder, or an earlier render (it has
            ``gt/meta.json``), is replaced; any other existing folder is an error.
        seed: seed of everything random (geometry, textures, poses, exposure, noise, points).
        num_views: number of cameras (>= 2).
        width, height: image size in pixels (>= 16).
        distortion: render through an OPENCV lens (``distortion_params``) and store an OPENCV
            camera; geometry, poses and ground truth are those of the distortion-free twin.
        family: ``"object"`` (objects on a ground plane seen from arcs of views) or ``"indoor"``
            (a furnished room seen by a hand-held camera: :mod:`pipeline.synth.indoor`).
        **options: fields of :class:`SceneOptions` (e.g. from :func:`random_scene_options`), or of
            :class:`pipeline.synth.indoor.IndoorOptions` for the indoor family.

    Returns:
        The output folder.

    Raises:
        ValueError: an unknown option, a value out of range, or an ``out_dir`` that is not ours.
    """
    out_dir = Path(out_dir)
    if family not in FAMILIES:
        raise ValueError(f"render_scene: unknown family {family!r}; known: {list(FAMILIES)}")
    if family == "indoor":
        from pipeline.synth.indoor import IndoorOptions, build_indoor_scene

        options_class, builder = IndoorOptions, build_indoor_scene
    else:
        options_class, builder = SceneOptions, build_scene
    known = {f.name for f in dataclasses.fields(options_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"render_scene: unknown option(s) {unknown} of the {family} family; known: {sorted(known)}")
    if "distortion_params" in options:
        options["distortion_params"] = tuple(float(v) for v in options["distortion_params"])
    scene_options = options_class(**options)
    if int(num_views) < 2:
        raise ValueError(f"render_scene: num_views must be >= 2, got {num_views}")
    if int(width) < 16 or int(height) < 16:
        raise ValueError(f"render_scene: width and height must be >= 16, got {width}x{height}")
    _check_target(out_dir)
    seed, num_views, width, height = int(seed), int(num_views), int(width), int(height)
    started = time.perf_counter()
    scene = builder(seed, num_views, width, height, scene_options)
    dist = np.array(scene_options.distortion_params, dtype=np.float64) if distortion else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published scene folder should not be
    try:
        _write_scene(tmp, scene, dist, num_views, width, height, distortion, started)
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    log.info("rendered %s (%d views %dx%d) in %.1f s", out_dir, num_views, width, height, seconds)
    return out_dir


def _write_scene(tmp: Path, scene: SyntheticScene, dist, num_views, width, height, distortion, started) -> None:
    from pipeline.colmap import write_model
    from pipeline.formats.depth_file import DepthView, write_depth_file
    from pipeline.formats.ply import write_ply

    options = scene.options
    (tmp / "images").mkdir()
    (tmp / "sparse").mkdir()
    (tmp / "gt").mkdir()
    depth_views = []
    depth_min, depth_max = np.inf, 0.0
    for view in range(num_views):
        image = scene.photo(render_radiance(scene, view, dist), view)
        PILImage.fromarray(image).save(tmp / "images" / image_name(view), optimize=False, compress_level=1)
        depth = render_depth(scene, view)
        valid = depth[depth > 0]
        if valid.size:
            depth_min, depth_max = min(depth_min, float(valid.min())), max(depth_max, float(valid.max()))
        depth_views.append(
            DepthView(
                image_id=view + 1,
                name=image_name(view),
                depth=depth,
                confidence=None,
                K=scene.K,
                cam_from_world=scene.cams_from_world[view],
            )
        )
    write_depth_file(
        tmp / "gt" / "depth.h5",
        depth_views,
        {"kind": "selfmvs.gt_depth", "units": "scene units (metres of the synthetic world)", "generator": GENERATOR},
    )
    num_sparse = _default_count(options.num_sparse_points, width, height, num_views, 200, 200, 4000)
    cameras, images, points3D = _sparse_model(scene, dist, num_sparse)
    write_model(cameras, images, points3D, tmp / "sparse", ext=".bin")
    num_dense = _default_count(options.num_gt_points, width, height, num_views, 4, 5000, 200_000)
    points, normals, rgb = dense_points(scene, num_dense)
    write_ply(
        tmp / "gt" / "points.ply",
        points.astype(np.float32),
        rgb,
        normals.astype(np.float32),
        comments=[f"{GENERATOR} v{GENERATOR_VERSION} seed {scene.seed}: visible surface samples"],
    )
    meta = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": scene.seed,
        "num_views": num_views,
        "width": width,
        "height": height,
        "distortion": bool(distortion),
        "options": dataclasses.asdict(options),
        "units": "scene units (metres of the synthetic world); z up, ground plane z = 0",
        "camera_model": cameras[1].model,
        "camera_params": [float(v) for v in cameras[1].params],
        "K": scene.K.tolist(),
        "image_names": [image_name(v) for v in range(num_views)],
        "exposure_gains": scene.gains.tolist(),
        **scene.meta_extra(),
        "depth_range": [depth_min, depth_max],
        "num_sparse_points": len(points3D),
        "num_gt_points": int(len(points)),
        "weak_materials": [i for i, m in enumerate(scene.materials) if m.weak],
        "render_seconds": round(time.perf_counter() - started, 3),
    }
    # meta.json is written last: its presence marks a complete render.
    (tmp / "gt" / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"render_scene: {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "gt" / "meta.json").is_file():
        raise ValueError(
            f"render_scene: {out_dir} exists, is not empty and is not a synthetic scene; refusing to replace it"
        )


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder into place; an earlier render is removed only after that."""
    if out_dir.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old / "scene")
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old / "scene", out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
