"""Procedural solid textures (3D value noise) and Lambertian shading.

Textures are functions of the 3D surface point, so every view sees exactly the same albedo at
the same point (no UV seams, no view dependence). A material is either *rich* (multi-octave
value noise mixing two colours, blotches of a third colour, optional stripes, a slow colour
drift) or *weak* (a nearly uniform colour: the hard case for matching).
"""

from __future__ import annotations

import dataclasses

import numpy as np

_TABLE_SIZE = 1024  # lattice period: 1024 cells, far beyond any scene at the lowest octave


@dataclasses.dataclass(frozen=True)
class NoiseTable:
    """Ken Perlin's permutation hash: ``values[perm[perm[perm[x] + y] + z]]`` on a periodic lattice.

    ``perm`` is doubled so sums of a table entry and a coordinate need no second modulo.
    """

    perm: np.ndarray  # (2 * _TABLE_SIZE,) int32
    values: np.ndarray  # (2 * _TABLE_SIZE,) float32 in [0, 1]


def noise_table(seed: int) -> NoiseTable:
    rng = np.random.default_rng([seed, 7919])
    perm = rng.permutation(_TABLE_SIZE).astype(np.int32)
    values = rng.uniform(0.0, 1.0, size=_TABLE_SIZE).astype(np.float32)
    return NoiseTable(np.concatenate([perm, perm]), np.concatenate([values, values]))


def value_noise(points: np.ndarray, table: NoiseTable) -> np.ndarray:
    """Smooth 3D value noise in [0, 1]: hashed lattice values, trilinear with a smoothstep fade.

    Shape:
        points: (3, N) in lattice units (component-major); returns (N,) float32.
    """
    floor = np.floor(points)
    frac = (points - floor).astype(np.float32)
    fade = frac * frac * (3.0 - 2.0 * frac)
    cell = (floor.astype(np.int64) & (_TABLE_SIZE - 1)).astype(np.int32)
    cell_next = (cell + 1) & (_TABLE_SIZE - 1)
    perm, values = table.perm, table.values
    hash_x = (perm[cell[0]], perm[cell_next[0]])
    ys = (cell[1], cell_next[1])
    zs = (cell[2], cell_next[2])
    corner = {}
    for i in (0, 1):
        for j in (0, 1):
            hash_xy = perm[hash_x[i] + ys[j]]
            for k in (0, 1):
                corner[i, j, k] = values[hash_xy + zs[k]]
    u, v, w = fade

    def lerp(a, b, s):
        return a + (b - a) * s

    c00 = lerp(corner[0, 0, 0], corner[1, 0, 0], u)
    c10 = lerp(corner[0, 1, 0], corner[1, 1, 0], u)
    c01 = lerp(corner[0, 0, 1], corner[1, 0, 1], u)
    c11 = lerp(corner[0, 1, 1], corner[1, 1, 1], u)
    return lerp(lerp(c00, c10, v), lerp(c01, c11, v), w)


def fbm(points: np.ndarray, table: NoiseTable, octaves: int, gain: float = 0.6) -> np.ndarray:
    """Fractal sum of ``octaves`` of value noise (lacunarity 2), normalised to [0, 1]."""
    total = np.zeros(points.shape[1], dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    # A fixed irrational shift per octave keeps lattices of different octaves from aligning.
    shift = np.array([[17.31], [-5.77], [3.13]])
    for octave in range(octaves):
        total += amplitude * value_noise(points * (2.0**octave) + octave * shift, table)
        norm += amplitude
        amplitude *= gain
    return total / norm


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


@dataclasses.dataclass
class Material:
    """Parameters of one procedural material (all colours linear RGB in [0, 1]).

    ``scale`` is the base noise frequency in cycles per scene unit.
    """

    colors: np.ndarray  # (3, 3): base A, base B, blotch colour
    scale: float
    octaves: int
    offset: np.ndarray  # (3,) shift of the noise domain, decorrelates materials
    weak: bool = False
    blotch: float = 0.0  # fraction-ish of area covered by blotches (0 = none)
    stripes: float = 0.0  # stripe frequency in cycles per unit (0 = none)
    stripe_direction: np.ndarray = dataclasses.field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    tint: float = 0.1  # colour variation amplitude
    tint_direction: np.ndarray = dataclasses.field(default_factory=lambda: np.array([1.0, -0.5, 0.5]))

    def albedo(self, points: np.ndarray, table: NoiseTable) -> np.ndarray:
        """Albedo at surface points.

        Shape:
            points: (3, N) world coordinates (component-major); returns (N, 3) float32 in [0, 1].
        """
        p = points * self.scale + self.offset[:, None]
        if self.weak:
            # Nearly uniform: +-2 % of very low-frequency variation.
            n = value_noise(p * 0.3, table)
            return np.clip(self.colors[0][None, :] * (0.98 + 0.04 * n[:, None]), 0, 1).astype(np.float32)
        base = fbm(p, table, self.octaves)
        # Stretch the fbm (which concentrates around 0.5) to use the full A..B range.
        mix = np.clip((base - 0.5) * 2.2 + 0.5, 0.0, 1.0)[:, None]
        color = self.colors[0] * (1 - mix) + self.colors[1] * mix
        if self.blotch > 0:
            blob = fbm(p * 0.45 + 31.7, table, 2)
            weight = _smoothstep(0.62 - 0.25 * self.blotch, 0.68 - 0.25 * self.blotch, blob)[:, None]
            color = color * (1 - weight) + self.colors[2] * weight
        if self.stripes > 0:
            phase = (self.stripe_direction @ points) * self.stripes + 2.0 * base
            color = color * (0.72 + 0.28 * (0.5 + 0.5 * np.sin(2 * np.pi * phase)))[:, None]
        if self.tint > 0:
            # Slow colour drift along a per-material direction in RGB.
            tint = value_noise(p * 0.7 + 101.0, table)
            color = color * (1.0 + self.tint * (2.0 * tint[:, None] - 1.0) * self.tint_direction)
        return np.clip(color, 0.0, 1.0).astype(np.float32)


def random_material(rng: np.random.Generator, weak: bool = False) -> Material:
    """A random material; rich ones get two contrasting colours and a random pattern mix."""
    hue_a = rng.uniform(0, 1)
    colors = np.stack(
        [
            _hsv_to_rgb(hue_a, rng.uniform(0.2, 0.7), rng.uniform(0.15, 0.4)),
            _hsv_to_rgb((hue_a + rng.uniform(0.1, 0.5)) % 1, rng.uniform(0.2, 0.8), rng.uniform(0.6, 0.95)),
            _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.9)),
        ]
    )
    if weak:
        colors[0] = _hsv_to_rgb(hue_a, rng.uniform(0.05, 0.3), rng.uniform(0.5, 0.8))
    direction = rng.normal(size=3)
    return Material(
        colors=colors,
        scale=float(rng.uniform(3.0, 7.0)),
        octaves=int(rng.integers(3, 6)),
        offset=rng.uniform(-100, 100, size=3),
        weak=weak,
        blotch=float(rng.uniform(0.3, 1.0)) if rng.uniform() < 0.6 else 0.0,
        stripes=float(rng.uniform(1.5, 5.0)) if rng.uniform() < 0.35 else 0.0,
        stripe_direction=direction / np.linalg.norm(direction),
        tint=float(rng.uniform(0.05, 0.2)),
        tint_direction=rng.uniform(-1.0, 1.0, size=3),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def shade(
    albedo: np.ndarray, normals: np.ndarray, light_direction: np.ndarray, lit: np.ndarray, ambient: float
) -> np.ndarray:
    """Lambertian shading from a directional light plus ambient light.

    Args:
        albedo: (N, 3); normals: (N, 3) unit, facing the viewer; light_direction: (3,) unit, from
            the surface towards the light; lit: (N,) float in [0, 1], 0 in shadow; ambient: in [0, 1].

    Returns:
        (N, 3) float32 radiance (1 = white paper in full light).
    """
    cosine = np.clip(light_direction @ normals.T, 0.0, 1.0) * lit
    return (albedo * (ambient + (1.0 - ambient) * cosine)[:, None]).astype(np.float32)
