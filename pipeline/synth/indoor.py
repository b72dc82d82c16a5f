"""Indoor scenes: a furnished room photographed by a hand-held camera walking through it.

The second family of :func:`pipeline.synth.render_scene` (``family="indoor"``). Where the object
family puts textured objects on a ground plane and circles them, an indoor scene is a closed room
(walls, floor, ceiling) with furniture along the walls (cabinets, shelves, sofas, tables, a TV,
pictures, a rug), doors and bright windows, lamps, and a camera carried through the middle of the
room at eye height: a smooth walk with small jitter in position and rotation, turning to look
around. It also carries what phone photos of rooms carry and the object family lacks:

- large uniform surfaces: painted walls and ceiling with next to no texture;
- bright windows and lamps (emissive surfaces, radiance above white) and an auto exposure that
  follows them, so the gain changes from frame to frame and windows clip to white;
- glossy materials (varnished floor, lacquered furniture, a TV screen): a Blinn-Phong highlight
  per light, view-dependent, so the same surface point changes colour between views;
- shadows of the furniture from every light (``shadows``);
- vignetting, shot and read noise, a little motion blur along the image motion, a display gamma
  and JPEG compression (the decoded JPEG is stored as PNG, so file names match the object family).

Ground truth (``gt/depth.h5``, ``gt/points.ply``) is the exact geometry, as for the object family:
the photometric effects change the images only. Units are metres; z up, floor at z = 0, the room
spans ``[0, width] x [0, depth] x [0, height]``.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage

from pipeline.synth.cameras import look_at, pixel_rays, project
from pipeline.synth.geometry import Box, Cylinder, Room, SceneGeometry, Sphere, rotation_zyx
from pipeline.synth.textures import Material, NoiseTable, _hsv_to_rgb, noise_table, random_material

FAMILY = "indoor"
FAMILY_VERSION = 1
# Held-out rooms (bench/quality_heldout.py --family indoor): never trained on, never used to choose
# a setting. Training data takes its seeds elsewhere.
HELDOUT_SEEDS = (3000, 3001, 3002, 3003)

# Random streams: np.random.default_rng([seed, stream]); apart from the object family's 1..8.
_STREAM_ROOM, _STREAM_SURFACES, _STREAM_WALK, _STREAM_EXPOSURE = 21, 22, 23, 24
_STREAM_PHOTO, _STREAM_OPTIONS = 25, 26
_EYE_HEIGHT = (1.35, 1.7)
_WALK_MARGIN = 1.25  # metres between the walk and the walls: furniture is at most 1 m deep
_DISPLAY_GAMMA = 1.0 / 2.2


@dataclasses.dataclass(frozen=True)
class IndoorOptions:
    """Everything that shapes an indoor scene besides seed, view count, image size and lens.

    Attributes:
        num_furniture: pieces of furniture along the walls (cabinets, shelves, sofas, a TV, pictures).
        num_windows, num_doors: openings in the walls; windows glow (``window_radiance``).
        num_lamps: point lights besides the windows' (a ceiling fixture first, then floor lamps).
        table, rug: a free-standing table / a rug in the middle of the room.
        focal_factor: fx / width (0.8 is a phone's main camera, about 64 degrees across).
        step: mean distance between neighbouring camera centres (metres).
        turn_deg: mean yaw change between neighbouring views (looking around the room).
        position_jitter: hand shake of the camera centre (metres, standard deviation).
        rotation_jitter_deg: hand shake of the orientation (degrees, standard deviation per axis).
        window_radiance: radiance of the window panes (1 = white paper in full light; > 1 clips).
        lamp_power: intensity of the lamps (radiance of white paper facing them 1 m away).
        ambient: light from everywhere (stands in for the light the walls bounce).
        specular: glossy highlights (off: every material is Lambertian).
        shadows: furniture shadows from every light.
        auto_exposure: the gain follows the scene brightness of each view (off: a fixed gain).
        exposure_jitter: per-view gain variation on top of the auto exposure (relative).
        vignetting: relative darkening at the image corners (0 = none).
        noise_sigma: read noise standard deviation (linear intensity in [0, 1]).
        shot_noise: shot noise standard deviation at full white (scales with sqrt of the signal).
        motion_blur_px: longest blur streak in pixels, along the image motion (0 = none).
        jpeg_quality: JPEG quality the photos go through (0 = no compression).
        supersampling: samples per pixel along each axis (anti-aliasing).
        distortion_params: OPENCV k1, k2, p1, p2 used when ``distortion=True``.
        num_sparse_points: sparse points with tracks (None: from image size, 200..4000).
        num_gt_points: dense ground-truth samples (None: from image size, 5000..200000).
        keypoint_noise_px: standard deviation of the keypoint positions in the COLMAP model.
    """

    num_furniture: int = 8
    num_windows: int = 1
    num_doors: int = 1
    num_lamps: int = 1
    table: bool = True
    rug: bool = True
    focal_factor: float = 0.8
    step: float = 0.12
    turn_deg: float = 3.5
    position_jitter: float = 0.01
    rotation_jitter_deg: float = 0.5
    window_radiance: float = 3.0
    lamp_power: float = 1.5
    ambient: float = 0.25
    specular: bool = True
    shadows: bool = True
    auto_exposure: bool = True
    exposure_jitter: float = 0.08
    vignetting: float = 0.3
    noise_sigma: float = 0.004
    shot_noise: float = 0.012
    motion_blur_px: float = 1.5
    jpeg_quality: int = 90
    supersampling: int = 1
    distortion_params: tuple[float, float, float, float] = (-0.08, 0.02, 0.0008, -0.0005)
    num_sparse_points: int | None = None
    num_gt_points: int | None = None
    keypoint_noise_px: float = 0.3

    def __post_init__(self) -> None:
        ranges = {
            "num_furniture": (0, 12), "num_windows": (0, 3), "num_doors": (0, 2), "num_lamps": (0, 3),
            "focal_factor": (0.4, 3.0), "step": (0.01, 0.5), "turn_deg": (0.0, 15.0),
            "position_jitter": (0.0, 0.1), "rotation_jitter_deg": (0.0, 5.0), "window_radiance": (0.0, 20.0),
            "lamp_power": (0.0, 20.0), "ambient": (0.0, 1.0), "exposure_jitter": (0.0, 0.5),
            "vignetting": (0.0, 0.9), "noise_sigma": (0.0, 0.2), "shot_noise": (0.0, 0.2),
            "motion_blur_px": (0.0, 10.0), "jpeg_quality": (0, 100), "supersampling": (1, 4),
            "keypoint_noise_px": (0.0, 5.0),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        if len(self.distortion_params) != 4:
            raise ValueError(f"distortion_params must be (k1, k2, p1, p2), got {self.distortion_params}")


def random_indoor_options(seed: int) -> dict[str, Any]:
    """Varied indoor options for training data: furnishing, lights, walk and camera effects.

    Pass the result on as ``render_scene(out, seed=seed, family="indoor", **random_indoor_options(seed))``.
    """
    rng = np.random.default_rng([int(seed), _STREAM_OPTIONS])
    return {
        "num_furniture": int(rng.integers(5, 12)),
        "num_windows": int(rng.integers(0, 3)),
        "num_doors": int(rng.integers(0, 3)),
        "num_lamps": int(rng.integers(1, 3)),
        "table": bool(rng.uniform() < 0.6),
        "rug": bool(rng.uniform() < 0.5),
        "focal_factor": float(rng.uniform(0.7, 0.95)),
        "step": float(rng.uniform(0.07, 0.18)),
        "turn_deg": float(rng.uniform(1.5, 5.0)),
        "rotation_jitter_deg": float(rng.uniform(0.2, 1.0)),
        "window_radiance": float(rng.uniform(2.0, 5.0)),
        "lamp_power": float(rng.uniform(0.8, 2.5)),
        "ambient": float(rng.uniform(0.15, 0.35)),
        "exposure_jitter": float(rng.uniform(0.03, 0.12)),
        "vignetting": float(rng.uniform(0.1, 0.45)),
        "noise_sigma": float(rng.uniform(0.002, 0.008)),
        "shot_noise": float(rng.uniform(0.005, 0.02)),
        "motion_blur_px": float(rng.uniform(0.0, 2.5)),
        "jpeg_quality": int(rng.integers(75, 96)),
    }


# --- materials ----------------------------------------------------------------------------------


@dataclasses.dataclass
class WoodTexture:
    """Planks (floor boards, table tops, doors): a tone per plank, grain along it, dark seams.

    ``along`` is the world axis the planks run along, ``across`` the one they are laid side by
    side on; ``plank_width`` 0 gives grain without seams (one solid piece).
    """

    light: np.ndarray  # (3,)
    dark: np.ndarray  # (3,)
    along: int
    across: int
    plank_width: float
    plank_length: float
    grain: float  # grain lines per metre across the plank
    offset: np.ndarray  # (3,) shift of the noise domain
    weak: bool = False

    def albedo(self, points: np.ndarray, table: NoiseTable) -> np.ndarray:
        """Shape: points (3, N) world coordinates; returns (N, 3) float32 in [0, 1]."""
        from pipeline.synth.textures import fbm

        across = points[self.across]
        along = points[self.along]
        if self.plank_width > 0:
            u = across / self.plank_width
            plank = np.floor(u)
            # Staggered butt joints: each plank starts at its own offset along its length.
            stagger = table.values[(plank.astype(np.int64) * 7 + 13) & 1023] * self.plank_length
            v = (along + stagger) / self.plank_length
            piece = plank * 131.0 + np.floor(v)
            tone = table.values[(piece.astype(np.int64) * 17 + 5) & 1023]
            seam = np.minimum(np.minimum(u - plank, plank + 1 - u) * self.plank_width,
                              np.minimum(v - np.floor(v), np.floor(v) + 1 - v) * self.plank_length)
            seam_shade = 0.55 + 0.45 * np.clip(seam / 0.004, 0.0, 1.0)
        else:
            tone = np.full(points.shape[1], 0.5, dtype=np.float32)
            seam_shade = 1.0
        wobble = fbm(points * np.array([[4.0], [4.0], [4.0]]) + self.offset[:, None], table, 3)
        rings = 0.5 + 0.5 * np.sin(2 * np.pi * (across * self.grain + 6.0 * wobble))
        mix = np.clip(0.25 + 0.5 * rings * (0.6 + 0.8 * tone), 0.0, 1.0)[:, None]
        color = self.light * (1 - mix) + self.dark * mix
        color = color * (0.85 + 0.3 * tone)[:, None] * np.asarray(seam_shade)[..., None]
        return np.clip(color, 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass
class Surface:
    """An indoor material: a procedural albedo, a gloss and an emission.

    ``specular`` is the Blinn-Phong weight of the highlight, ``shininess`` its exponent; a surface
    with ``emission`` (linear RGB radiance) glows and is not lit. Emitting and nearly uniform
    surfaces are ``weak``: no sparse point lies on them.
    """

    texture: Material | WoodTexture
    specular: float = 0.0
    shininess: float = 40.0
    emission: np.ndarray | None = None

    @property
    def weak(self) -> bool:
        return bool(self.texture.weak) or self.emission is not None

    def albedo(self, points: np.ndarray, table: NoiseTable) -> np.ndarray:
        return self.texture.albedo(points, table)


def _paint(rng: np.random.Generator, light: bool = True) -> Material:
    """Wall paint: one colour with +-2 % of very slow variation (the hard case for matching)."""
    hue = rng.uniform(0, 1)
    color = _hsv_to_rgb(hue, rng.uniform(0.02, 0.25), rng.uniform(0.7, 0.92) if light else rng.uniform(0.25, 0.6))
    return Material(colors=np.stack([color, color, color]), scale=1.0, octaves=1,
                    offset=rng.uniform(-100, 100, size=3), weak=True)


def _wood(rng: np.random.Generator, along: int, across: int, plank_width: float) -> WoodTexture:
    hue = rng.uniform(0.05, 0.11)
    value = rng.uniform(0.35, 0.75)
    return WoodTexture(
        light=_hsv_to_rgb(hue, rng.uniform(0.35, 0.6), value),
        dark=_hsv_to_rgb(hue, rng.uniform(0.5, 0.8), value * rng.uniform(0.45, 0.7)),
        along=along, across=across, plank_width=plank_width, plank_length=rng.uniform(0.9, 1.8),
        grain=rng.uniform(15.0, 40.0), offset=rng.uniform(-100, 100, size=3),
    )


def _fabric(rng: np.random.Generator) -> Material:
    material = random_material(rng)
    material.scale *= 3.0  # a finer weave than the object family's patterns
    material.colors[1] = 0.6 * material.colors[1] + 0.4 * material.colors[0]  # lower contrast
    return material


# --- the room -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Light:
    """A point light at ``position`` (metres) with linear RGB ``power`` (radiance of white paper
    facing it 1 m away)."""

    position: np.ndarray
    power: np.ndarray


class _Furnisher:
    """Places furniture, openings and lights in a room, keeping wall stretches from overlapping."""

    def __init__(self, rng: np.random.Generator, size: np.ndarray) -> None:
        self.rng, self.size = rng, size
        self.primitives: list = []
        self.surfaces: list[Surface] = []
        self.lights: list[Light] = []
        self.footprints: list[tuple[float, float, float, float, float]] = []  # x0, y0, x1, y1, top
        self.taken: dict[int, list[tuple[float, float]]] = {wall: [] for wall in range(4)}

    def surface(self, surface: Surface) -> int:
        self.surfaces.append(surface)
        return len(self.surfaces) - 1

    def wall_frame(self, wall: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Origin at the wall's left end on the floor, along-wall axis, into-room axis, wall length."""
        w, d = self.size[0], self.size[1]
        frames = {
            0: (np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), w),  # y = 0
            1: (np.array([w, d, 0.0]), np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]), w),  # y = d
            2: (np.array([0.0, d, 0.0]), np.array([0.0, -1.0, 0.0]), np.array([1.0, 0.0, 0.0]), d),  # x = 0
            3: (np.array([w, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([-1.0, 0.0, 0.0]), d),  # x = w
        }
        return frames[wall]

    def claim(self, wall: int, width: float) -> float | None:
        """A free stretch of ``width`` on ``wall`` (0.15 m from corners); its start, or None."""
        _, _, _, length = self.wall_frame(wall)
        for _ in range(60):
            start = self.rng.uniform(0.15, max(length - width - 0.15, 0.16))
            if start + width > length - 0.1:
                continue
            if all(start + width + 0.05 < a or start > b + 0.05 for a, b in self.taken[wall]):
                self.taken[wall].append((start, start + width))
                return start
        return None

    def box_on_wall(self, wall: int, start: float, width: float, depth: float, z0: float, z1: float,
                    materials, bottom: bool = False) -> Box:
        """A box against ``wall`` from ``start`` along it, ``depth`` into the room, from z0 to z1."""
        origin, along, inward, _ = self.wall_frame(wall)
        centre = origin + along * (start + 0.5 * width) + inward * (0.5 * depth) + np.array([0, 0, 0.5 * (z0 + z1)])
        rotation = np.stack([along, inward, np.array([0.0, 0.0, 1.0])], axis=1)  # local x along, y inward
        box = Box(centre, np.array([0.5 * width, 0.5 * depth, 0.5 * (z1 - z0)]), rotation,
                  np.broadcast_to(np.asarray(materials), (6,)).copy(), sample_bottom=bottom)
        self.primitives.append(box)
        if z0 < 0.05:
            corners = [origin + along * start, origin + along * (start + width) + inward * depth]
            x0, x1 = sorted([corners[0][0], corners[1][0]])
            y0, y1 = sorted([corners[0][1], corners[1][1]])
            self.footprints.append((x0, y0, x1, y1, z1))
        return box


def _furnish(rng: np.random.Generator, size: np.ndarray, options: IndoorOptions) -> _Furnisher:
    """Room surfaces, openings, furniture and lights of an indoor scene."""
    f = _Furnisher(rng, size)
    width, depth, height = size
    wall_paint = f.surface(Surface(_paint(rng), specular=0.02, shininess=8.0))
    accent = f.surface(Surface(_paint(rng), specular=0.02, shininess=8.0)) if rng.uniform() < 0.4 else wall_paint
    ceiling = f.surface(Surface(_paint(rng, light=True)))
    floor_axis = int(rng.integers(0, 2))
    if rng.uniform() < 0.75:
        floor = f.surface(Surface(_wood(rng, floor_axis, 1 - floor_axis, rng.uniform(0.12, 0.22)),
                                  specular=rng.uniform(0.08, 0.3), shininess=rng.uniform(20.0, 80.0)))
    else:  # carpet or tiles: a rich texture
        floor = f.surface(Surface(_fabric(rng), specular=rng.uniform(0.0, 0.15), shininess=30.0))
    walls = [wall_paint] * 4
    walls[int(rng.integers(0, 4))] = accent
    # Room faces: +x (x = w), -x (x = 0), +y (y = d), -y (y = 0), +z (ceiling), -z (floor).
    room_materials = np.array([walls[3], walls[2], walls[1], walls[0], ceiling, floor])

    white_trim = f.surface(Surface(_paint(rng), specular=0.25, shininess=60.0))
    for _ in range(options.num_windows):
        wall = int(rng.integers(0, 4))
        pane_w = rng.uniform(0.8, 1.6)
        start = f.claim(wall, pane_w + 0.1)
        if start is None:
            continue
        z0 = rng.uniform(0.8, 1.0)
        z1 = min(z0 + rng.uniform(1.0, 1.4), height - 0.2)
        sky = options.window_radiance * np.array([0.9, 0.97, 1.08]) * rng.uniform(0.85, 1.15)
        pane = f.surface(Surface(_paint(rng), emission=sky))
        f.box_on_wall(wall, start + 0.05, pane_w, 0.02, z0, z1, pane).casts_shadow = False
        for a, b, c, e in ((start, start + 0.05, z0 - 0.05, z1 + 0.05), (start + pane_w + 0.05, start + pane_w + 0.1,
                           z0 - 0.05, z1 + 0.05), (start + 0.05, start + pane_w + 0.05, z0 - 0.05, z0),
                           (start + 0.05, start + pane_w + 0.05, z1, z1 + 0.05)):
            f.box_on_wall(wall, a, b - a, 0.05, c, e, white_trim, bottom=True)
        # Daylight enters through the pane: a bright light a little inside the room.
        origin, along, inward, _ = f.wall_frame(wall)
        centre = origin + along * (start + 0.05 + 0.5 * pane_w) + inward * 0.6 + np.array([0, 0, 0.5 * (z0 + z1)])
        f.lights.append(Light(centre, 0.25 * sky * pane_w * (z1 - z0)))
    # Skirting boards along every wall: the crisp line where the walls meet the floor.
    skirting_height = rng.uniform(0.06, 0.12)
    for wall in range(4):
        _, _, _, length = f.wall_frame(wall)
        f.box_on_wall(wall, 0.0, length, 0.015, 0.0, skirting_height, white_trim)
    for _ in range(options.num_doors):
        wall = int(rng.integers(0, 4))
        door_w = rng.uniform(0.8, 0.95)
        start = f.claim(wall, door_w)
        if start is None:
            continue
        door_height = min(rng.uniform(2.0, 2.15), height - 0.1)
        if rng.uniform() < 0.5:
            origin, along, inward, _ = f.wall_frame(wall)
            door_surface = Surface(_wood(rng, 2, int(np.argmax(np.abs(along))), 0.0), specular=0.15, shininess=40.0)
        else:
            door_surface = Surface(_paint(rng), specular=0.2, shininess=50.0)
        f.box_on_wall(wall, start, door_w, 0.04, 0.0, door_height, f.surface(door_surface))
        origin, along, inward, _ = f.wall_frame(wall)
        knob = origin + along * (start + door_w - 0.08) + inward * 0.08 + np.array([0, 0, 1.0])
        metal = f.surface(Surface(_paint(rng, light=False), specular=0.8, shininess=120.0))
        f.primitives.append(Sphere(knob, 0.035, np.array([metal])))

    kinds = ["cabinet", "shelf", "sofa", "tv", "picture", "cabinet", "picture", "shelf"]
    for index in range(options.num_furniture):
        kind = kinds[int(rng.integers(0, len(kinds)))] if index >= 2 else kinds[index * 2]
        wall = int(rng.integers(0, 4))
        if kind == "cabinet":
            w = rng.uniform(0.6, 1.6)
            start = f.claim(wall, w)
            if start is None:
                continue
            origin, along, _, _ = f.wall_frame(wall)
            texture = (_wood(rng, int(np.argmax(np.abs(along))), 2, 0.0) if rng.uniform() < 0.6 else _paint(rng))
            glossy = f.surface(Surface(texture, specular=rng.uniform(0.1, 0.6), shininess=rng.uniform(30.0, 150.0)))
            f.box_on_wall(wall, start, w, rng.uniform(0.35, 0.6), 0.0, rng.uniform(0.5, 1.1), glossy)
        elif kind == "shelf":
            w = rng.uniform(0.6, 1.2)
            start = f.claim(wall, w)
            if start is None:
                continue
            books = f.surface(Surface(random_material(rng), specular=0.05, shininess=20.0))
            frame = f.surface(Surface(_paint(rng), specular=0.1, shininess=30.0))
            # Local +y points into the room: the books are on that face.
            materials = np.array([frame, frame, books, frame, frame, frame])
            f.box_on_wall(wall, start, w, rng.uniform(0.28, 0.4), 0.0, rng.uniform(1.5, 2.1), materials)
        elif kind == "sofa":
            w = rng.uniform(1.5, 2.2)
            start = f.claim(wall, w)
            if start is None:
                continue
            cloth = f.surface(Surface(_fabric(rng), specular=0.0))
            d = rng.uniform(0.8, 0.95)
            f.box_on_wall(wall, start, w, d, 0.0, 0.42, cloth)
            f.box_on_wall(wall, start, w, 0.22, 0.42, 0.85, cloth)
            for a in (start, start + w - 0.18):
                f.box_on_wall(wall, a, 0.18, d, 0.42, 0.62, cloth)
        elif kind == "tv":
            w = rng.uniform(0.9, 1.4)
            start = f.claim(wall, w)
            if start is None:
                continue
            screen = f.surface(Surface(_paint(rng, light=False), specular=0.9, shininess=300.0))
            z0 = rng.uniform(0.9, 1.2)
            f.box_on_wall(wall, start, w, 0.05, z0, z0 + w * 9 / 16, screen, bottom=True)
        else:  # a picture on the wall
            w = rng.uniform(0.4, 1.0)
            start = f.claim(wall, w)
            if start is None:
                continue
            art = f.surface(Surface(random_material(rng), specular=rng.uniform(0.0, 0.4), shininess=80.0))
            z0 = rng.uniform(1.2, 1.6)
            f.box_on_wall(wall, start, w, 0.03, z0, min(z0 + w * rng.uniform(0.6, 1.2), height - 0.1), art, bottom=True)

    centre = np.array([0.5 * width, 0.5 * depth])
    if options.rug:
        rug = f.surface(Surface(_fabric(rng)))
        half = np.array([rng.uniform(0.6, 0.35 * width), rng.uniform(0.6, 0.35 * depth), 0.006])
        f.primitives.append(Box(np.array([*(centre + rng.uniform(-0.3, 0.3, 2)), 0.006]), half, np.eye(3),
                                np.full(6, rug)))
    if options.table:
        grain_axis = int(rng.integers(0, 2))
        top = f.surface(Surface(_wood(rng, grain_axis, 1 - grain_axis, 0.0), specular=rng.uniform(0.2, 0.6),
                                shininess=rng.uniform(40.0, 150.0)))
        legs = f.surface(Surface(_paint(rng, light=False), specular=0.3, shininess=60.0))
        table_h = rng.uniform(0.4, 0.76)  # a coffee table or a dining table
        at = centre + rng.uniform(-0.4, 0.4, 2)
        if rng.uniform() < 0.5:
            half = np.array([rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.45), 0.02])
            f.primitives.append(Box(np.array([*at, table_h - 0.02]), half, np.eye(3), np.full(6, top), sample_bottom=True))
            for sx in (-1, 1):
                for sy in (-1, 1):
                    leg = np.array([at[0] + sx * (half[0] - 0.05), at[1] + sy * (half[1] - 0.05), 0.5 * (table_h - 0.04)])
                    f.primitives.append(Box(leg, np.array([0.025, 0.025, 0.5 * (table_h - 0.04)]), np.eye(3),
                                            np.full(6, legs)))
        else:
            radius = rng.uniform(0.35, 0.6)
            f.primitives.append(Cylinder(np.array([*at, table_h - 0.04]), radius, 0.04, np.full(3, top)))
            f.primitives.append(Cylinder(np.array([*at, 0.0]), 0.05, table_h - 0.04, np.full(3, legs)))

    warm = np.array([1.0, 0.85, 0.65])
    for index in range(options.num_lamps):
        power = options.lamp_power * warm * rng.uniform(0.8, 1.2)
        glow = f.surface(Surface(_paint(rng), emission=np.minimum(3.0 * power, 6.0)))
        if index == 0:  # a ceiling fixture
            at = np.array([*(centre + rng.uniform(-0.5, 0.5, 2)), height])
            fixture = Cylinder(at - np.array([0.0, 0.0, 0.12]), rng.uniform(0.12, 0.25), 0.12, np.full(3, glow))
            fixture.casts_shadow = False
            f.primitives.append(fixture)
            f.lights.append(Light(at - np.array([0.0, 0.0, 0.2]), power * (height - 0.2) ** 2 / 1.5))
        else:  # a floor lamp in a corner
            corner = np.array([rng.choice([0.45, width - 0.45]), rng.choice([0.45, depth - 0.45])])
            pole = f.surface(Surface(_paint(rng, light=False), specular=0.6, shininess=100.0))
            lamp_h = rng.uniform(1.3, 1.7)
            f.primitives.append(Cylinder(np.array([*corner, 0.0]), 0.02, lamp_h, np.full(3, pole)))
            shade = Cylinder(np.array([*corner, lamp_h]), 0.18, 0.28, np.full(3, glow))
            shade.casts_shadow = False
            f.primitives.append(shade)
            f.footprints.append((corner[0] - 0.2, corner[1] - 0.2, corner[0] + 0.2, corner[1] + 0.2, lamp_h + 0.3))
            f.lights.append(Light(np.array([*corner, lamp_h + 0.14]), power))
    f.room_materials = room_materials
    return f


# --- the walk -----------------------------------------------------------------------------------


def hand_held_walk(
    rng: np.random.Generator, num_views: int, size: np.ndarray, options: IndoorOptions, blocked
) -> np.ndarray:
    """Camera poses of a person walking through the room with a phone, looking around.

    The centres follow a smooth curve at eye height through the middle of the room (at least
    ``_WALK_MARGIN`` from the walls, outside the footprints ``blocked(x, y)`` marks), ``step``
    apart on average with a slow gait bob; the view turns by about ``turn_deg`` per frame, tilts a
    little down, and hand shake adds ``position_jitter`` and ``rotation_jitter_deg``.

    Returns:
        (num_views, 3, 4) cam_from_world.
    """
    low = np.array([_WALK_MARGIN, _WALK_MARGIN])
    high = size[:2] - _WALK_MARGIN
    step = options.step
    for attempt in range(400):
        if attempt and attempt % 100 == 0:
            step *= 0.7  # a small room: shorter steps
        start = rng.uniform(low, high)
        heading = rng.uniform(0, 2 * np.pi)
        lengths = step * (1.0 + 0.25 * rng.uniform(-1.0, 1.0, size=num_views - 1))
        walked = np.concatenate([[0.0], np.cumsum(lengths)])
        # A meandering course: the curvature (radians per metre) drifts along the walk.
        curvature = rng.uniform(-0.5, 0.5) + rng.uniform(0.3, 0.9) * np.sin(walked * rng.uniform(1.0, 2.5)
                                                                            + rng.uniform(0, 2 * np.pi))
        headings = heading + np.concatenate([[0.0], np.cumsum(curvature[:-1] * lengths)])
        moves = lengths[:, None] * np.stack([np.cos(headings[:-1]), np.sin(headings[:-1])], axis=1)
        path = start + np.concatenate([np.zeros((1, 2)), np.cumsum(moves, axis=0)])
        if np.all((path >= low) & (path <= high)) and not any(blocked(x, y) for x, y in path):
            break
    else:
        raise ValueError(f"no walk of {num_views} views fits a {size[0]:.1f} x {size[1]:.1f} m room")
    eye = rng.uniform(*_EYE_HEIGHT)
    frames = np.arange(num_views)
    bob = 0.015 * np.sin(frames * rng.uniform(1.5, 2.5) + rng.uniform(0, 2 * np.pi))
    centres = np.concatenate([path, (eye + bob)[:, None]], axis=1)
    centres = centres + rng.normal(0.0, options.position_jitter, size=centres.shape)
    # Looking around: the view faces into the room and turns steadily, with a slow sway.
    to_middle = np.arctan2(0.5 * size[1] - path[0, 1], 0.5 * size[0] - path[0, 0])
    direction = rng.choice([-1.0, 1.0])
    turn = np.deg2rad(options.turn_deg) * (1.0 + 0.3 * rng.uniform(-1.0, 1.0, size=num_views))
    yaw = (to_middle - direction * 0.5 * np.deg2rad(options.turn_deg) * (num_views - 1)
           + direction * np.concatenate([[0.0], np.cumsum(turn[1:])]))
    pitch = np.deg2rad(rng.uniform(-18.0, -6.0) + 3.0 * np.sin(frames * rng.uniform(0.2, 0.5)))
    shake = np.deg2rad(options.rotation_jitter_deg) * rng.normal(size=(num_views, 3))
    yaw, pitch, roll = yaw + shake[:, 0], pitch + shake[:, 1], shake[:, 2] + np.deg2rad(rng.uniform(-1.5, 1.5))
    forward = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=1)
    up = np.array([0.0, 0.0, 1.0])
    return np.stack([look_at(c, c + fwd, up, r) for c, fwd, r in zip(centres, forward, roll)])


# --- the scene ----------------------------------------------------------------------------------


@dataclasses.dataclass
class IndoorScene:
    """A built indoor scene: geometry, surfaces, lights, cameras and per-view exposure.

    Offers what :mod:`pipeline.synth.render` asks of a scene (``radiance``, ``albedo``, ``photo``,
    ``meta_extra``), so both families are written by the same code.
    """

    geometry: SceneGeometry
    materials: list[Surface]
    noise_table: NoiseTable
    lights: list[Light]
    K: np.ndarray
    cams_from_world: np.ndarray  # (V, 3, 4)
    gains: np.ndarray  # (V, 3) per-view, per-channel exposure gain
    width: int
    height: int
    options: IndoorOptions
    seed: int
    size: np.ndarray  # (3,) room width, depth, height

    def albedo(self, points: np.ndarray, material: np.ndarray) -> np.ndarray:
        """Albedo of surface points (N, 3) of the given materials (N,); (N, 3) float32."""
        out = np.zeros((len(points), 3), dtype=np.float32)
        points_cm = np.ascontiguousarray(points.T)
        for index in np.unique(material):
            if index >= 0:
                mine = np.flatnonzero(material == index)
                out[mine] = self.materials[index].albedo(points_cm[:, mine], self.noise_table)
        return out

    def radiance(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linear radiance and hit distance of rays (the distance is the z-depth for camera rays).

        Lambertian light from each point light (inverse-square, shadowed when ``shadows``), an
        ambient term, a Blinn-Phong highlight per light when ``specular``, and emission.
        """
        hits = self.geometry.cast(origin, directions)
        count = len(hits.t)
        albedo = self.albedo(hits.points, hits.material)
        material = np.maximum(hits.material, 0)
        specular = np.array([m.specular for m in self.materials])[material] * self.options.specular
        shininess = np.array([m.shininess for m in self.materials])[material]
        # Component-major (3, N) rows: elementwise arithmetic on them is far faster than on (N, 3).
        points = np.ascontiguousarray(hits.points.T)
        normals = np.ascontiguousarray(hits.normals.T)
        view = -np.asarray(directions, dtype=np.float64).T
        view = view / np.sqrt(np.sum(view * view, axis=0))
        diffuse = np.full((3, count), self.options.ambient)
        glossy = np.zeros((3, count))
        for light in self.lights:
            to_light = light.position[:, None] - points
            distance2 = np.sum(to_light * to_light, axis=0)
            to_light_unit = to_light / np.sqrt(distance2)
            # A lamp is not a point: closer than ~0.5 m its light stops growing as 1 / d^2.
            distance2 = np.maximum(distance2, 0.25)
            cosine = np.sum(normals * to_light_unit, axis=0)
            lit = np.flatnonzero(cosine > 0)
            if self.options.shadows and lit.size:
                # Cast from the light towards the points: rays sharing an origin take the geometry's
                # fast path. Something hit before t = 1 (the point itself, up to 1 mm) shadows it.
                t, _ = self.geometry.nearest_t(light.position, -to_light[:, lit].T, shadow_casters_only=True)
                lit = lit[~(t < 1.0 - 1e-3 / np.sqrt(distance2[lit]))]
            irradiance = cosine[lit] / distance2[lit]
            diffuse[:, lit] += light.power[:, None] * irradiance
            if self.options.specular:
                lit = lit[specular[lit] > 0]
                halfway = to_light_unit[:, lit] + view[:, lit]
                n_dot_h = np.sum(normals[:, lit] * halfway, axis=0) / np.sqrt(np.sum(halfway * halfway, axis=0))
                # (n + 8) / 8 keeps the highlight's energy roughly independent of its sharpness.
                lobe = specular[lit] * (shininess[lit] + 8.0) / 8.0 * np.clip(n_dot_h, 0.0, 1.0) ** shininess[lit]
                glossy[:, lit] += light.power[:, None] * (lobe * cosine[lit] / distance2[lit])
        colour = albedo * diffuse.T + glossy.T
        for index, surface in enumerate(self.materials):
            if surface.emission is not None:
                colour[hits.material == index] = surface.emission
        return colour.astype(np.float32), hits.t

    def photo(self, radiance: np.ndarray, view: int) -> np.ndarray:
        """The camera's processing of one view's radiance: motion blur, vignetting, exposure,
        shot and read noise, clipping, display gamma, 8 bits and JPEG. Shape: (H, W, 3) uint8."""
        options = self.options
        rng = np.random.default_rng([self.seed, _STREAM_PHOTO, view])
        value = radiance.astype(np.float32)
        blur = self.blur_vector(view, rng)
        if np.hypot(*blur) > 0.25:
            kernel = _streak_kernel(blur)
            value = np.stack([ndimage.correlate(value[:, :, c], kernel, mode="nearest") for c in range(3)], axis=2)
        if options.vignetting > 0:
            cols = (np.arange(self.width) + 0.5 - self.K[0, 2]) ** 2
            rows = (np.arange(self.height) + 0.5 - self.K[1, 2]) ** 2
            r2 = (rows[:, None] + cols[None, :]) / (0.25 * (self.width**2 + self.height**2))
            value = value * (1.0 - options.vignetting * r2).astype(np.float32)[:, :, None]
        value = value * self.gains[view].astype(np.float32)
        sigma = np.sqrt(options.noise_sigma**2 + options.shot_noise**2 * np.clip(value, 0.0, 1.0))
        value = value + sigma * rng.standard_normal(size=value.shape, dtype=np.float32)
        image = np.clip(np.round(np.clip(value, 0.0, 1.0) ** _DISPLAY_GAMMA * 255.0), 0, 255).astype(np.uint8)
        if options.jpeg_quality > 0:
            buffer = io.BytesIO()
            PILImage.fromarray(image).save(buffer, format="JPEG", quality=int(options.jpeg_quality))
            image = np.asarray(PILImage.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        return image

    def blur_vector(self, view: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Motion blur streak of a view in pixels (dx, dy): along the image motion of the point at
        the image centre towards the next view, its length up to ``motion_blur_px``."""
        if self.options.motion_blur_px <= 0 or len(self.cams_from_world) < 2:
            return np.zeros(2)
        rng = rng if rng is not None else np.random.default_rng([self.seed, _STREAM_PHOTO, view])
        other = view + 1 if view + 1 < len(self.cams_from_world) else view - 1
        centre_pixel = self.K[:2, 2][None, :]
        origin, direction = pixel_rays(centre_pixel, self.K, self.cams_from_world[view])
        t, _ = self.geometry.nearest_t(origin, direction)
        point = origin + direction * t[:, None]
        moved, _ = project(point, self.K, self.cams_from_world[other])
        flow = moved[0] - centre_pixel[0]
        norm = np.hypot(*flow)
        if not np.isfinite(norm) or norm < 1e-9:
            return np.zeros(2)
        return flow / norm * self.options.motion_blur_px * rng.uniform(0.3, 1.0)

    def meta_extra(self) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "family_version": FAMILY_VERSION,
            "room_size": self.size.tolist(),
            "lights": [{"position": light.position.tolist(), "power": light.power.tolist()} for light in self.lights],
        }


def _streak_kernel(blur: np.ndarray) -> np.ndarray:
    """Normalised 2-D kernel of a straight streak ``blur`` = (dx, dy) pixels long, centred.

    The streak is sampled at sub-pixel steps and each sample spread bilinearly on the grid.
    Shape: returns (2r + 1, 2r + 1) float32.
    """
    radius = int(np.ceil(0.5 * np.hypot(*blur))) + 1
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
    for s in np.linspace(-0.5, 0.5, 4 * radius + 1):
        x, y = radius + s * blur[0], radius + s * blur[1]
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    return (kernel / kernel.sum()).astype(np.float32)


def _auto_exposure(scene: IndoorScene, rng: np.random.Generator) -> np.ndarray:
    """Per-view gains of a camera metering each view: mean linear brightness of a coarse grid of
    rays brought to 0.2 (bright windows in view darken the photo), following with some lag, times
    ``exposure_jitter`` and a slight white-balance drift. Shape: (V, 3)."""
    num_views = len(scene.cams_from_world)
    options = scene.options
    if options.auto_exposure:
        grid = np.stack(np.meshgrid(np.linspace(0, scene.width, 32), np.linspace(0, scene.height, 24)), -1).reshape(-1, 2)
        metered = np.empty(num_views)
        for view in range(num_views):
            origin, directions = pixel_rays(grid, scene.K, scene.cams_from_world[view])
            colour, _ = scene.radiance(origin, directions)
            metered[view] = np.mean(np.minimum(colour.mean(axis=1), 8.0))
        target = 0.2 / np.maximum(metered, 1e-3)
        gain = np.empty(num_views)
        gain[0] = target[0]
        for view in range(1, num_views):
            gain[view] = np.exp(0.6 * np.log(target[view]) + 0.4 * np.log(gain[view - 1]))
        gain = np.clip(gain, 0.25, 4.0)
    else:
        gain = np.full(num_views, 1.0)
    gain = gain * (1.0 + options.exposure_jitter * rng.uniform(-1.0, 1.0, size=num_views))
    white_balance = 1.0 + 0.03 * rng.uniform(-1.0, 1.0, size=(num_views, 3))
    return gain[:, None] * white_balance


def build_indoor_scene(seed: int, num_views: int, width: int, height: int, options: IndoorOptions) -> IndoorScene:
    """Geometry, surfaces, lights, hand-held cameras and exposures of the indoor scene of ``seed``."""
    room_rng = np.random.default_rng([seed, _STREAM_ROOM])
    size = np.array([room_rng.uniform(3.6, 6.5), room_rng.uniform(4.0, 7.0), room_rng.uniform(2.4, 3.0)])
    furnished = _furnish(np.random.default_rng([seed, _STREAM_SURFACES]), size, options)
    room = Room(np.zeros(3), size.copy(), furnished.room_materials)

    def blocked(x: float, y: float) -> bool:
        return any(x0 - 0.35 < x < x1 + 0.35 and y0 - 0.35 < y < y1 + 0.35 and top > _EYE_HEIGHT[0] - 0.3
                   for x0, y0, x1, y1, top in furnished.footprints)

    walk_rng = np.random.default_rng([seed, _STREAM_WALK])
    poses = hand_held_walk(walk_rng, num_views, size, options, blocked)
    focal = options.focal_factor * width
    principal = np.array([width, height]) * (0.5 + walk_rng.uniform(-0.01, 0.01, size=2))
    K = np.array([[focal, 0.0, principal[0]], [0.0, focal, principal[1]], [0.0, 0.0, 1.0]])
    scene = IndoorScene(
        geometry=SceneGeometry([room, *furnished.primitives]),
        materials=furnished.surfaces,
        noise_table=noise_table(seed),
        lights=furnished.lights,
        K=K,
        cams_from_world=poses,
        gains=np.ones((num_views, 3)),
        width=width,
        height=height,
        options=options,
        seed=seed,
        size=size,
    )
    scene.gains = _auto_exposure(scene, np.random.default_rng([seed, _STREAM_EXPOSURE]))
    return scene
