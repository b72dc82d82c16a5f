"""Analytic scene geometry: a room, boxes, spheres and cylinders, with vectorised ray casting.

World frame: z up, the ground plane is z = 0, the back wall is a plane y = const > 0 and the
cameras stand at negative y looking towards +y. The room is a closed box around everything, so
every ray from a camera hits a surface (ground-truth depth is defined at nearly every pixel).

Rays are given as origins ``(N, 3)`` and *unnormalised* directions ``(N, 3)``; hit distances ``t``
are in units of the direction's length, so a camera ray ``d = R^T K^-1 [x, y, 1]`` gives the
z-depth directly and a ray ``d = X - C`` towards a point gives ``t = 1`` at the point.
Internally rays are stored component-major, ``(3, N)`` (an origin shared by all rays as
``(3, 1)``): numpy's elementwise arithmetic on contiguous rows is an order of magnitude faster
than on ``(N, 3)`` columns and ``R @ directions`` goes to BLAS.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_EPS = 1e-9
T_MIN = 1e-6  # hits closer than this along a ray are ignored (self-intersection)


def rotation_zyx(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation ``world_from_local`` = Rz(yaw) @ Ry(pitch) @ Rx(roll) (radians)."""
    cz, sz = np.cos(yaw), np.sin(yaw)
    cy, sy = np.cos(pitch), np.sin(pitch)
    cx, sx = np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    return rz @ ry @ rx


class Primitive:
    """A surface with analytic ray intersection and area-uniform sampling.

    Rays here are component-major: ``origins`` (3, N) or (3, 1), ``directions`` (3, N).
    Subclasses set ``materials``: one material index per face (the ``face`` ids returned by
    :meth:`normal_and_face`), and ``bound_centre``/``bound_radius``, a sphere containing the
    primitive (``bound_radius = inf`` for none) used to skip rays that cannot hit it.
    """

    materials: np.ndarray
    casts_shadow: bool = True
    bound_centre = np.zeros(3)
    bound_radius = np.inf

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Nearest hit distance ``t > T_MIN`` per ray, ``inf`` where the ray misses.

        Shape:
            origins: (3, N) or (3, 1); directions: (3, N); returns (N,).
        """
        raise NotImplementedError

    def normal_and_face(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outward unit normal and face index of surface points (the caller orients normals).

        Shape:
            points: (3, N); returns normals (3, N) and faces (N,) int.
        """
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` points area-uniformly on the sampleable surface and their normals, (N, 3) each."""
        raise NotImplementedError

    def area(self) -> float:
        """Area of the sampleable surface."""
        raise NotImplementedError


def _box_slabs(origins, directions, half):
    """Entry and exit distances of rays through the axis-aligned box [-half, half] (slab method)."""
    t_near = np.full(directions.shape[1], -np.inf)
    t_far = np.full(directions.shape[1], np.inf)
    for axis in range(3):
        d = directions[axis]
        inverse = 1.0 / np.where(np.abs(d) < _EPS, _EPS, d)
        t1 = (-half[axis] - origins[axis]) * inverse
        t2 = (half[axis] - origins[axis]) * inverse
        t_near = np.maximum(t_near, np.minimum(t1, t2))
        t_far = np.minimum(t_far, np.maximum(t1, t2))
    return t_near, t_far


def _box_face(local_points, half):
    """Face index 0..5 (+x, -x, +y, -y, +z, -z) of points (3, N) on the box [-half, half]."""
    ratio = np.abs(local_points) / half[:, None]
    axis = np.argmax(ratio, axis=0)
    negative = local_points[axis, np.arange(local_points.shape[1])] < 0
    return 2 * axis + negative


_FACE_NORMALS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)


@dataclasses.dataclass
class Box(Primitive):
    """An oriented box: ``centre``, ``half`` extents along its local axes, ``rotation`` world_from_local.

    Faces 0..5: +x, -x, +y, -y, +z, -z of the local frame (-z, the bottom, is not sampled
    unless ``sample_bottom``: it rests on the ground).
    """

    centre: np.ndarray
    half: np.ndarray
    rotation: np.ndarray
    materials: np.ndarray
    sample_bottom: bool = False

    def __post_init__(self):
        self.bound_centre = self.centre
        self.bound_radius = float(np.linalg.norm(self.half))

    def intersect(self, origins, directions):
        local_o = self.rotation.T @ (origins - self.centre[:, None])
        local_d = self.rotation.T @ directions
        t_near, t_far = _box_slabs(local_o, local_d, self.half)
        return np.where((t_near <= t_far) & (t_near > T_MIN), t_near, np.inf)

    def normal_and_face(self, points):
        face = _box_face(self.rotation.T @ (points - self.centre[:, None]), self.half)
        return self.rotation @ _FACE_NORMALS[face].T, face

    def _face_areas(self):
        hx, hy, hz = 2 * self.half
        areas = np.array([hy * hz, hy * hz, hx * hz, hx * hz, hx * hy, hx * hy])
        if not self.sample_bottom:
            areas[5] = 0.0
        return areas

    def area(self):
        return float(self._face_areas().sum())

    def sample(self, rng, count):
        areas = self._face_areas()
        face = rng.choice(6, size=count, p=areas / areas.sum())
        local = rng.uniform(-1.0, 1.0, size=(count, 3)) * self.half
        axis = face // 2
        local[np.arange(count), axis] = np.where(face % 2 == 0, 1.0, -1.0) * self.half[axis]
        return local @ self.rotation.T + self.centre, _FACE_NORMALS[face] @ self.rotation.T


@dataclasses.dataclass
class Room(Primitive):
    """The inside of the axis-aligned box ``lower``..``upper``: ground, walls and ceiling.

    Faces as for :class:`Box` (+x, -x, +y, -y, +z, -z walls; -z is the ground); rays must start
    inside.
    """

    lower: np.ndarray
    upper: np.ndarray
    materials: np.ndarray
    casts_shadow: bool = False
    # Optional (6, 2, 3) per-face sampling boxes (lower, upper corners); a face whose box is
    # empty is not sampled. Set by :meth:`restrict_sampling`.
    sample_boxes: np.ndarray | None = None

    def restrict_sampling(self, points: np.ndarray, margin: float) -> None:
        """Sample only around ``points`` (N, 3) seen on the walls: per face, their bounding box
        grown by ``margin`` (relative to its size, plus ``margin`` scene units), within the room."""
        _, face = self.normal_and_face(points.T)
        boxes = np.zeros((6, 2, 3))
        for f in range(6):
            mine = points[face == f]
            if len(mine) == 0:
                boxes[f] = self.lower  # empty: never sampled
                continue
            low, high = mine.min(axis=0), mine.max(axis=0)
            grow = margin * (high - low) + margin
            boxes[f, 0] = np.maximum(low - grow, self.lower)
            boxes[f, 1] = np.minimum(high + grow, self.upper)
        self.sample_boxes = boxes

    def intersect(self, origins, directions):
        centre = 0.5 * (self.lower + self.upper)
        half = 0.5 * (self.upper - self.lower)
        t_near, t_far = _box_slabs(origins - centre[:, None], directions, half)
        # Rays start inside: the exit distance is the wall they hit.
        return np.where((t_far > T_MIN) & (t_near <= t_far), t_far, np.inf)

    def normal_and_face(self, points):
        centre = 0.5 * (self.lower + self.upper)
        half = 0.5 * (self.upper - self.lower)
        face = _box_face(points - centre[:, None], half)
        return -_FACE_NORMALS[face].T, face

    def _boxes(self) -> np.ndarray:
        if self.sample_boxes is not None:
            return self.sample_boxes
        return np.broadcast_to(np.stack([self.lower, self.upper]), (6, 2, 3))

    def _face_areas(self):
        size = self._boxes()[:, 1] - self._boxes()[:, 0]
        other_axes = np.array([[1, 2], [1, 2], [0, 2], [0, 2], [0, 1], [0, 1]])
        return np.prod(np.take_along_axis(size, other_axes, axis=1), axis=1)

    def area(self):
        return float(self._face_areas().sum())

    def sample(self, rng, count):
        areas = self._face_areas()
        face = rng.choice(6, size=count, p=areas / areas.sum())
        boxes = self._boxes()[face]
        points = boxes[:, 0] + rng.uniform(size=(count, 3)) * (boxes[:, 1] - boxes[:, 0])
        axis = face // 2
        points[np.arange(count), axis] = np.where(face % 2 == 0, self.upper[axis], self.lower[axis])
        return points, -_FACE_NORMALS[face]


def _sphere_t(origins, directions, centre, radius):
    """Both roots of |o + t d - c|^2 = r^2 and the discriminant (>= 0 where the ray meets it)."""
    ox, oy, oz = (origins[i] - centre[i] for i in range(3))
    dx, dy, dz = directions
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - radius * radius
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    return (-b - root) / a, (-b + root) / a, disc


@dataclasses.dataclass
class Sphere(Primitive):
    centre: np.ndarray
    radius: float
    materials: np.ndarray

    def __post_init__(self):
        self.bound_centre = self.centre
        self.bound_radius = float(self.radius)

    def intersect(self, origins, directions):
        t0, t1, disc = _sphere_t(origins, directions, self.centre, self.radius)
        t = np.where(t0 > T_MIN, t0, np.where(t1 > T_MIN, t1, np.inf))
        return np.where(disc >= 0, t, np.inf)

    def normal_and_face(self, points):
        return (points - self.centre[:, None]) / self.radius, np.zeros(points.shape[1], dtype=np.int64)

    def area(self):
        return float(4 * np.pi * self.radius**2)

    def sample(self, rng, count):
        normals = rng.normal(size=(count, 3))
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        return self.centre + self.radius * normals, normals


@dataclasses.dataclass
class Cylinder(Primitive):
    """A vertical solid cylinder standing on ``base`` (x, y, z0) with ``radius`` and ``height``.

    Faces: 0 = side, 1 = top cap, 2 = bottom cap (not sampled: it rests on the ground).
    """

    base: np.ndarray
    radius: float
    height: float
    materials: np.ndarray

    def __post_init__(self):
        self.bound_centre = self.base + np.array([0.0, 0.0, 0.5 * self.height])
        self.bound_radius = float(np.hypot(self.radius, 0.5 * self.height))

    def intersect(self, origins, directions):
        ox, oy, oz = (origins[i] - self.base[i] for i in range(3))
        dx, dy, dz = directions
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - self.radius**2
        disc = b * b - a * c
        safe_a = np.where(a < _EPS, 1.0, a)
        root = np.sqrt(np.maximum(disc, 0.0))
        best = np.full(directions.shape[1], np.inf)
        for t in ((-b - root) / safe_a, (-b + root) / safe_a):
            z = oz + t * dz
            ok = (disc >= 0) & (a >= _EPS) & (t > T_MIN) & (z >= 0) & (z <= self.height)
            best = np.where(ok & (t < best), t, best)
        safe_dz = np.where(np.abs(dz) < _EPS, _EPS, dz)
        for cap_z in (0.0, self.height):
            t = (cap_z - oz) / safe_dz
            x, y = ox + t * dx, oy + t * dy
            ok = (np.abs(dz) >= _EPS) & (t > T_MIN) & (x * x + y * y <= self.radius**2)
            best = np.where(ok & (t < best), t, best)
        return best

    def normal_and_face(self, points):
        local = points - self.base[:, None]
        radial = np.hypot(local[0], local[1]) / self.radius
        half_height = 0.5 * self.height
        axial = np.abs(local[2] - half_height) / half_height
        cap = axial > radial
        top = local[2] > half_height
        normals = np.stack([local[0] / self.radius, local[1] / self.radius, np.zeros_like(radial)])
        normals[:, cap] = 0.0
        normals[2, cap] = np.where(top[cap], 1.0, -1.0)
        normals /= np.maximum(np.linalg.norm(normals, axis=0, keepdims=True), _EPS)
        return normals, np.where(cap, np.where(top, 1, 2), 0)

    def area(self):
        return float(2 * np.pi * self.radius * self.height + np.pi * self.radius**2)

    def sample(self, rng, count):
        side = 2 * np.pi * self.radius * self.height
        on_side = rng.uniform(size=count) < side / self.area()
        angle = rng.uniform(0, 2 * np.pi, size=count)
        radius = np.where(on_side, self.radius, self.radius * np.sqrt(rng.uniform(size=count)))
        z = np.where(on_side, rng.uniform(0, self.height, size=count), self.height)
        points = np.stack([radius * np.cos(angle), radius * np.sin(angle), z], axis=1) + self.base
        normals = np.where(
            on_side[:, None],
            np.stack([np.cos(angle), np.sin(angle), np.zeros(count)], axis=1),
            np.array([0.0, 0.0, 1.0]),
        )
        return points, normals


@dataclasses.dataclass
class Hits:
    """Result of casting rays (row-major, one row per ray).

    Shape:
        t: (N,) hit distance in direction units (inf = miss); points, normals: (N, 3), normals
        unit and facing the ray's origin; material: (N,) int (-1 = miss); primitive: (N,) int
        (-1 = miss).
    """

    t: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    material: np.ndarray
    primitive: np.ndarray


def _as_rays(origins, directions):
    """(N, 3) or (3,) origins and (N, 3) directions -> component-major (3, N|1) and (3, N)."""
    directions = np.ascontiguousarray(np.asarray(directions, dtype=np.float64).T)
    origins = np.asarray(origins, dtype=np.float64)
    origins = origins.reshape(3, 1) if origins.ndim == 1 else np.ascontiguousarray(origins.T)
    return origins, directions


class SceneGeometry:
    """A list of primitives with nearest-hit ray casting."""

    def __init__(self, primitives: list[Primitive]) -> None:
        self.primitives = list(primitives)

    def nearest_t(
        self, origins: np.ndarray, directions: np.ndarray, shadow_casters_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit distance and primitive index per ray (inf / -1 where nothing is hit).

        Shape:
            origins: (3,) shared by all rays, or (N, 3); directions: (N, 3); returns (N,), (N,).
        """
        return self._nearest_t(*_as_rays(origins, directions), shadow_casters_only)

    def _nearest_t(self, origins, directions, shadow_casters_only=False):
        count = directions.shape[1]
        best = np.full(count, np.inf)
        index = np.full(count, -1, dtype=np.int64)
        shared_origin = origins.shape[1] == 1
        if shared_origin:
            dx, dy, dz = directions
            length2 = dx * dx + dy * dy + dz * dz
        for i, primitive in enumerate(self.primitives):
            if shadow_casters_only and not primitive.casts_shadow:
                continue
            if np.isfinite(primitive.bound_radius):
                # Only rays that meet the bounding sphere in front of the origin can hit.
                if shared_origin:
                    offset = origins[:, 0] - primitive.bound_centre
                    b = offset[0] * dx + offset[1] * dy + offset[2] * dz
                    c = offset @ offset - primitive.bound_radius**2
                    # Meets the sphere (b^2 >= a c) and not only behind the origin (b < 0 or inside).
                    rays = np.flatnonzero((b * b >= length2 * c) & ((b < 0) | (c < 0)))
                else:
                    _, t_far, disc = _sphere_t(origins, directions, primitive.bound_centre, primitive.bound_radius)
                    rays = np.flatnonzero((disc >= 0) & (t_far > T_MIN))
                if rays.size == 0:
                    continue
                sub_origins = origins if origins.shape[1] == 1 else origins[:, rays]
                t = primitive.intersect(sub_origins, directions[:, rays])
                closer = t < best[rays]
                best[rays[closer]] = t[closer]
                index[rays[closer]] = i
            else:
                t = primitive.intersect(origins, directions)
                closer = t < best
                best[closer] = t[closer]
                index[closer] = i
        return best, index

    def cast(self, origins: np.ndarray, directions: np.ndarray) -> Hits:
        """Nearest hits with points, normals facing the ray, and material ids.

        Shape:
            origins: (3,) shared by all rays, or (N, 3); directions: (N, 3).
        """
        origins, directions = _as_rays(origins, directions)
        t, index = self._nearest_t(origins, directions)
        hit = np.isfinite(t)
        points = origins + directions * np.where(hit, t, 0.0)
        normals = np.zeros_like(points)
        material = np.full(len(t), -1, dtype=np.int64)
        for i, primitive in enumerate(self.primitives):
            mine = np.flatnonzero(index == i)
            if mine.size == 0:
                continue
            n, face = primitive.normal_and_face(points[:, mine])
            normals[:, mine] = n
            material[mine] = primitive.materials[face]
        # Face the normals towards the ray's origin (the inside of the room, the outside of objects).
        flip = np.einsum("ij,ij->j", normals, directions) > 0
        normals[:, flip] *= -1.0
        return Hits(t=t, points=points.T, normals=normals.T, material=material, primitive=index)
