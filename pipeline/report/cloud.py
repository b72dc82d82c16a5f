"""The fused point cloud as an interactive 3-D view (plotly): a page to turn and zoom, offline.

``cloud_page`` writes ``cloud.html`` and ``plotly.min.js`` beside it. plotly.js is written as a file
next to the page (plotly's ``include_plotlyjs="directory"``) rather than inlined: the report is
already a folder of files referenced by relative names (the PNGs), so one 4.7 MB copy of the library
serves the page and keeps ``cloud.html`` small (the data only); a relative ``<script src>`` loads from
disk with no network, opened as ``file://`` or served.

Like the PNG figures, nothing here reads selfmvs files: the report stage passes arrays.
"""

from __future__ import annotations

import dataclasses
import html
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.formats.atomic import atomic_path

PLOTLY_JS = "plotly.min.js"
_CAMERA_COLOUR = "#e8590c"
# Distance of the first view from the cloud's centre, in radii of its 1st-99th percentile box: the
# cloud fills about half the view's height with the nearer cameras around it (chosen on screenshots
# of DTU scan 24's 49 cameras and of a synthetic box scene, Chromium 156).
_VIEW_DISTANCE = 4.5


@dataclasses.dataclass
class CameraPose:
    """A photo's pinhole camera, enough to draw its frustum.

    Shape:
        K: (3, 3) pixels; cam_from_world: (3, 4) [R | t], world -> camera (x right, y down, z forward).
    """

    label: str
    K: np.ndarray
    cam_from_world: np.ndarray
    width: int
    height: int

    @property
    def centre_in_world(self) -> np.ndarray:
        rotation, translation = self.cam_from_world[:, :3], self.cam_from_world[:, 3]
        return -rotation.T @ translation

    def world_from_cam_directions(self, directions_in_cam: np.ndarray) -> np.ndarray:
        """Rotate camera-frame directions into the world frame. Shape: (N, 3) -> (N, 3)."""
        return directions_in_cam @ self.cam_from_world[:, :3]


def subsample(count: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` of ``count`` points, uniform without replacement, fixed by ``seed``
    (the same cloud gives the same page), in increasing order.

    Shape:
        returns (min(count, max_points),) int64.
    """
    if count <= max_points:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(count, size=max_points, replace=False))


def frustum_lines(cameras: Sequence[CameraPose], depth: float) -> np.ndarray:
    """World-frame polylines of each camera's pyramid: apex -> the image corners at ``depth`` along the
    optical axis, the image rectangle, and a small triangle on the image's top edge (which way is up).
    Polylines are separated by NaN rows (a gap in a plotly line trace).

    Shape:
        returns (L, 3) float64.
    """
    rows = []
    gap = np.full((1, 3), np.nan)
    for camera in cameras:
        w, h = camera.width, camera.height
        corners_px = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
        # The top-edge triangle sticks out of the image by 15 % of its height, upwards (-y in pixels).
        tip_px = np.array([[0.35 * w, 0, 1], [0.5 * w, -0.15 * h, 1], [0.65 * w, 0, 1]], dtype=np.float64)
        rays_in_cam = np.vstack([corners_px, tip_px]) @ np.linalg.inv(camera.K).T
        rays_in_cam *= depth / rays_in_cam[:, 2:3]
        points = camera.world_from_cam_directions(rays_in_cam) + camera.centre_in_world
        apex = camera.centre_in_world[None]
        corners, tip = points[:4], points[4:]
        for corner in corners:
            rows += [apex, corner[None], gap]
        rows += [corners, corners[:1], gap, tip, gap]
    return np.vstack(rows) if rows else np.zeros((0, 3))


def _hex_colours(rgb: np.ndarray) -> list[str]:
    # Per-point colours must be CSS strings in a scatter3d trace; '#rrggbb' is the shortest form.
    rgb = np.asarray(rgb, dtype=np.uint8)
    packed = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    return [f"#{value:06x}" for value in packed.tolist()]


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``vector`` about the unit ``axis`` by ``angle`` radians."""
    return (vector * np.cos(angle) + np.cross(axis, vector) * np.sin(angle)
            + axis * (axis @ vector) * (1 - np.cos(angle)))


def _view_directions(cameras: Sequence[CameraPose]) -> tuple[np.ndarray, np.ndarray]:
    """(up, towards the viewer) in world coordinates for the initial view: the photos' mean up
    (-y of each camera) and the reverse of their mean viewing direction, so that the cloud first
    appears roughly as the photos show it (COLMAP's world axes carry no meaning of their own)."""
    if not cameras:
        return np.array([0.0, 0.0, 1.0]), np.array([1.0, -1.0, 0.8]) / np.sqrt(2.64)
    ups = np.stack([c.world_from_cam_directions(np.array([[0.0, -1.0, 0.0]]))[0] for c in cameras])
    forwards = np.stack([c.world_from_cam_directions(np.array([[0.0, 0.0, 1.0]]))[0] for c in cameras])
    up = ups.mean(0)
    up /= max(np.linalg.norm(up), 1e-12)
    towards_viewer = -forwards.mean(0)
    towards_viewer -= up * (towards_viewer @ up)
    if np.linalg.norm(towards_viewer) < 0.3:
        # Photos taken all around the object: any horizontal direction will do.
        towards_viewer = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    towards_viewer /= np.linalg.norm(towards_viewer)
    # From 15 degrees above the photos' mean viewing direction: a little depth in the first picture.
    eye = np.cos(np.radians(15)) * towards_viewer + np.sin(np.radians(15)) * up
    return up, eye


def cloud_page(
    path: str | os.PathLike,
    xyz: np.ndarray,
    rgb: np.ndarray | None,
    cameras: Sequence[CameraPose] = (),
    max_points: int = 200_000,
    viewpoints: int = 3,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Write an interactive 3-D view of the cloud and the cameras (``path``, HTML) and ``plotly.min.js``
    beside it.

    The cloud is a deterministic subsample (:func:`subsample`) coloured by ``rgb`` (by height along the
    photos' up direction when None); cameras are pyramids drawn as lines. The axes share one scale
    (the 1st-99th percentile box of the points, grown to hold the cameras) and the first view looks
    the way the photos look; ``viewpoints`` buttons turn it about the up direction.

    Shape:
        xyz: (N, 3) world; rgb: (N, 3) uint8 or None.

    Raises:
        ValueError: ``xyz`` or ``rgb`` of the wrong shape.
    """
    import plotly.graph_objects as go
    import plotly.io as pio

    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"expected (N, 3) points, got {xyz.shape}")
    if rgb is not None and np.shape(rgb) != xyz.shape:
        raise ValueError(f"expected (N, 3) colours for {len(xyz)} points, got {np.shape(rgb)}")
    # Points without coordinates (none from our fusion, maybe from another tool's PLY) are left out,
    # not allowed to turn the axis ranges into NaN.
    finite = np.flatnonzero(np.isfinite(xyz).all(1))
    pick = finite[subsample(len(finite), max_points, seed)]
    shown = xyz[pick]
    up, eye = _view_directions(cameras)
    centres = np.stack([c.centre_in_world for c in cameras]) if cameras else np.zeros((0, 3))

    if len(shown):
        low, high = np.percentile(shown, [1, 99], axis=0)
    elif len(centres):
        low, high = centres.min(0), centres.max(0)
    else:
        low, high = -np.ones(3), np.ones(3)
    extent = max(float((high - low).max()), 1e-9)
    cloud_middle, cloud_radius = (low + high) / 2, max(float(np.linalg.norm(high - low)) / 2, 1e-9)
    # Pyramids a twentieth of the scene deep: visible, yet small beside the cloud.
    frusta = frustum_lines(cameras, 0.05 * extent if len(shown) else 0.2 * extent)
    if len(centres):
        low, high = np.minimum(low, np.nanmin(frusta, 0)), np.maximum(high, np.nanmax(frusta, 0))
    middle = (low + high) / 2
    half = np.maximum((high - low) / 2, 1e-3 * extent) * 1.05
    low, high = middle - half, middle + half

    traces = []
    if len(shown):
        marker = dict(size=2.0 if len(shown) > 20_000 else 3.0)
        if rgb is None:
            marker.update(color=shown @ up, colorscale="Viridis")
        # float32 halves the page (plotly writes numpy arrays as base64 typed arrays).
        points = shown.astype(np.float32)
        traces.append(go.Scatter3d(x=points[:, 0], y=points[:, 1], z=points[:, 2], mode="markers",
                                   marker=marker, name=f"{len(shown)} of {len(xyz)} points", hoverinfo="skip"))
    if len(centres):
        traces.append(go.Scatter3d(x=frusta[:, 0], y=frusta[:, 1], z=frusta[:, 2], mode="lines",
                                   line=dict(color=_CAMERA_COLOUR, width=3), name=f"{len(cameras)} cameras",
                                   hoverinfo="skip", connectgaps=False))
        traces.append(go.Scatter3d(x=centres[:, 0], y=centres[:, 1], z=centres[:, 2], mode="markers",
                                   marker=dict(size=3, color=_CAMERA_COLOUR), showlegend=False,
                                   text=[c.label for c in cameras], hoverinfo="text"))

    # Equal scale on all axes: each axis' share of the box is its share of the data's extent.
    aspect = (high - low) / (high - low).max()
    # plotly's camera lives in the box's normalised coordinates (the box spans aspectratio, centred on 0);
    # with one scale for all axes a world direction keeps its direction there. The view aims at the
    # cloud, not the box (cameras far away would make it a speck), from _VIEW_DISTANCE cloud radii.
    to_normalised = float(aspect.max() / (high - low).max())
    centre = (cloud_middle - middle) * to_normalised
    distance = _VIEW_DISTANCE * cloud_radius * to_normalised

    def camera(direction: np.ndarray) -> dict:
        point = centre + direction * distance
        return dict(eye=dict(x=point[0], y=point[1], z=point[2]), up=dict(x=up[0], y=up[1], z=up[2]),
                    center=dict(x=centre[0], y=centre[1], z=centre[2]))

    def axis(name: str, index: int) -> dict:
        grey = "#777"
        return dict(range=[float(low[index]), float(high[index])],
                    title=dict(text=name, font=dict(size=11, color=grey)),
                    showbackground=False, gridcolor="#e4e4e4", zerolinecolor="#ccc", tickfont=dict(size=9, color=grey))

    buttons = [dict(label=f"view {k + 1}", method="relayout",
                    args=[{"scene.camera": camera(_rotate(eye, up, 2 * np.pi * k / viewpoints))}])
               for k in range(max(viewpoints, 1))]
    layout = go.Layout(
        scene=dict(
            xaxis=axis("x", 0), yaxis=axis("y", 1), zaxis=axis("z", 2),
            aspectmode="manual", aspectratio=dict(x=aspect[0], y=aspect[1], z=aspect[2]),
            camera=camera(eye), dragmode="orbit",
        ),
        margin=dict(l=0, r=0, t=30 if title else 0, b=0),
        paper_bgcolor="white",
        legend=dict(x=0.01, y=0.99, bgcolor="rgba(255,255,255,0.7)", font=dict(size=11), itemsizing="constant"),
        updatemenus=[dict(type="buttons", direction="left", x=0.99, xanchor="right", y=0.01, yanchor="bottom",
                          buttons=buttons, font=dict(size=11), pad=dict(r=2, t=2))] if viewpoints > 1 else [],
        title=dict(text=html.escape(title), font=dict(size=13), x=0.01) if title else None,
    )
    if not len(shown):
        layout.annotations = [dict(text="no points", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                                   font=dict(size=16, color="#888"))]
    figure = go.Figure(data=traces, layout=layout).to_dict()
    if len(shown) and rgb is not None:
        # Set after plotly's checks, which take 70 us per colour string (14 s for 200k points), and
        # written unchecked below: each is '#rrggbb' by construction.
        figure["data"][0]["marker"]["color"] = _hex_colours(np.asarray(rgb)[pick])
    text = pio.to_html(
        figure, validate=False, include_plotlyjs="directory", full_html=True, div_id="cloud", default_width="100%", default_height="100%",
        config=dict(displaylogo=False, responsive=True, scrollZoom=True),
    )
    path = Path(path)
    with atomic_path(path, suffix=".html") as tmp:
        # The plot fills its frame: every box from <html> down to plotly's div takes the full height.
        style = "<style>html, body, body > div { height: 100%; margin: 0; }</style>"
        tmp.write_text(text.replace("<head>", "<head>" + style, 1), encoding="utf-8")
    write_plotly_js(path.parent)
    return path


def write_plotly_js(folder: str | os.PathLike) -> Path:
    """``plotly.min.js`` of the installed plotly into ``folder`` (rewritten only when it differs)."""
    from plotly.offline import get_plotlyjs

    target = Path(folder) / PLOTLY_JS
    source = get_plotlyjs()
    if not target.is_file() or target.stat().st_size != len(source.encode("utf-8")):
        with atomic_path(target, suffix=".js") as tmp:
            tmp.write_text(source, encoding="utf-8")
    return target
