"""Where the depth errors of a held-out scene are: share within 1 % / 2 % by how many of the 4 used
sources see a pixel (GT geometry, occlusion tested against the sources' GT depth) and by local texture.

    .venv/bin/python experiments/diag_error_breakdown.py DEPTH_H5 SCENE_DIR/gt/depth.h5 SCENE_H5
"""
import sys, numpy as np, h5py
from scipy.ndimage import uniform_filter
from pipeline.formats.depth_file import read_depth_view, list_depth_views
from pipeline.formats.scene_file import read_scene, read_view
from pipeline.evaluation import resample_nearest
pred_path, gt_path, scene_path = sys.argv[1:4]
scene = read_scene(scene_path, load_images=False)
gts = {v: read_depth_view(gt_path, v) for v in list_depth_views(gt_path)}
rows = []
for vid in list_depth_views(pred_path):
    e = read_depth_view(pred_path, vid); g = gts[vid]
    H, W = e.depth.shape
    gd = resample_nearest(g.depth, H, W, g.K, e.K)
    ref = read_view(scene_path, vid)
    img = ref.image.astype(np.float32).mean(-1) / 255.0
    tex = np.sqrt(np.maximum(uniform_filter(img**2, 5) - uniform_filter(img, 5)**2, 0))
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    pts = np.linalg.inv(e.K) @ np.stack([u.ravel(), v.ravel(), np.ones(H*W)]) * gd.ravel()
    R, t = e.cam_from_world[:, :3], e.cam_from_world[:, 3]
    world = R.T @ (pts - t[:, None])
    seen = np.zeros(H*W, int)
    for s in list(scene.views[vid].source_ids)[:4]:
        sg = gts[int(s)]; sK = sg.K; sR, st = sg.cam_from_world[:, :3], sg.cam_from_world[:, 3]
        c = sR @ world + st[:, None]; p = sK @ c
        x = p[0] / p[2]; y = p[1] / p[2]
        ok = (c[2] > 0) & (x >= 0) & (x < sg.depth.shape[1]) & (y >= 0) & (y < sg.depth.shape[0])
        xi = np.clip(x.astype(int), 0, sg.depth.shape[1]-1); yi = np.clip(y.astype(int), 0, sg.depth.shape[0]-1)
        ok &= np.abs(sg.depth[yi, xi] - c[2]) < 0.02 * c[2]
        seen += ok
    m = gd.ravel() > 0
    r = np.abs(e.depth.ravel() - gd.ravel()) / np.where(gd.ravel() > 0, gd.ravel(), 1)
    rows.append((r[m], seen[m], tex.ravel()[m]))
r = np.concatenate([a for a, _, _ in rows]); seen = np.concatenate([b for _, b, _ in rows]); tex = np.concatenate([c for _, _, c in rows])
print(f"all: <1% {100*(r<.01).mean():.1f} (n={r.size})")
for k in range(5):
    m = seen == k
    print(f"seen by {k} sources: {100*m.mean():5.1f}% of pixels, <1% {100*(r[m]<.01).mean():5.1f}, <2% {100*(r[m]<.02).mean():5.1f}")
q = np.quantile(tex, [0.1, 0.25, 0.5])
m2 = seen >= 2
for lo, hi, name in [(0, q[0], "tex <p10"), (q[0], q[1], "p10-25"), (q[1], q[2], "p25-50"), (q[2], 9, ">p50")]:
    m = m2 & (tex >= lo) & (tex < hi)
    print(f"seen>=2, {name} (std {lo:.3f}-{hi:.3f}): {100*m.mean():5.1f}% px, <1% {100*(r[m]<.01).mean():5.1f}")
