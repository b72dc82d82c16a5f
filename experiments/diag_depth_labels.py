"""Diagnostic: fine-tune the shipped weights on depth labels of the 14 training scenes, then score
them on the held-out scenes with `quality_heldout.py`. Two kinds of labels:

- ``gt``: the renderer's ground-truth depth (an upper bound: what any better training signal on these
  scenes could give the network in the same steps);
- ``pseudo``: no ground truth — the shipped network's own depth where `selfmvs fuse` keeps it (the
  pixels of `fused_masks.h5`: photometrically confident and consistent with >= 3 sources), i.e.
  self-training on multi-view-consistent depth (the idea of KD-MVS); generated here with
  `selfmvs infer` + `selfmvs fuse` + `selfmvs pseudo-labels` when missing. The workflow's own
  version of this is `snakemake train_self` (config/train_self.yaml).

The loss is the package's ``pseudo_label`` term (smooth-L1 of the relative depth error in %, labelled
pixels only), averaged over the stage outputs; BatchNorm frozen, AdamW, batch 2, whole views (400x296),
4 sources, gradient clipping 1.
Checkpoints every 100 steps into --out (plain network checkpoints with the shipped inference
settings: `bench/quality_heldout.py OUT/step_N.pt`). Runs of 2026-11-27: docs/benchmarks.md.

    .venv/bin/python experiments/diag_depth_labels.py --labels pseudo --steps 500 --out /tmp/pl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.formats.loss_log import write_loss_log

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pipeline" / "checkpoints" / "selfmvs_synthetic.pt"


def labels_of(seed: int, scene, kind: str, work: Path, checkpoint: Path) -> dict[int, torch.Tensor]:
    """image_id -> (H, W) label depth at the prepared view's pixels (0: no label)."""
    from pipeline.formats.depth_file import read_depth_view
    sys.path.insert(0, str(REPO / "bench"))  # quality_heldout.py lives in bench/
    from quality_heldout import selfmvs

    labels = {}
    if kind == "gt":
        gt_h5 = REPO / f"results/_training/scenes/{seed}/gt/depth.h5"
        for image_id, view in scene.views.items():
            gt = read_depth_view(gt_h5, image_id)
            # the prepared view is a crop of the rendered one: the offset is the principal points' difference
            dx, dy = (int(round(float(gt.K[a, 2] - view.K[a, 2]))) for a in (0, 1))
            if abs(gt.K[0, 0] - view.K[0, 0]) > 1e-6 or abs(gt.K[1, 1] - view.K[1, 1]) > 1e-6:
                raise SystemExit(f"{gt_h5}: view {image_id}: focal lengths differ from the prepared view's")
            labels[image_id] = torch.from_numpy(np.ascontiguousarray(gt.depth[dy : dy + view.height, dx : dx + view.width])).float()
        return labels
    depth_h5, ply = work / f"{seed}_depth.h5", work / f"{seed}.ply"
    masks_h5, labels_h5 = ply.with_name(f"{seed}_masks.h5"), ply.with_name(f"{seed}_labels.h5")
    if not masks_h5.is_file():
        scene_h5 = str(REPO / f"results/_training/h5/{seed}.h5")
        selfmvs("infer", scene_h5, str(checkpoint), str(depth_h5))
        selfmvs("fuse", scene_h5, str(depth_h5), str(ply))
    if not labels_h5.is_file():
        selfmvs("pseudo-labels", str(depth_h5), str(masks_h5), str(labels_h5))
    for image_id in scene.views:
        labels[image_id] = torch.from_numpy(read_depth_view(labels_h5, image_id).depth)
    return labels


def main(argv: list[str] | None = None) -> int:
    from pipeline.formats.scene_file import read_scene
    from pipeline.losses import pseudo_label_loss
    from pipeline.model import load_checkpoint, save_checkpoint
    from pipeline.training.sampler import ViewSampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", choices=("gt", "pseudo"), required=True)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED, help="initial weights (and pseudo-label source)")
    parser.add_argument("--seeds", default=",".join(str(s) for s in range(1000, 1014)),
                        help="training scenes (results/_training, `snakemake train_base` renders them)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the network draws its training-mode hypotheses from the global generator
    args.out.mkdir(parents=True, exist_ok=True)
    scenes, labels = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        scene = read_scene(REPO / f"results/_training/h5/{seed}.h5")
        scenes.append(scene)
        labels.append(labels_of(seed, scene, args.labels, args.out, args.checkpoint))
    sampler = ViewSampler(scenes, num_sources=4, size=None)
    model, _ = load_checkpoint(args.checkpoint, strict=True, map_location="cpu")
    model.freeze_batchnorm(True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    rows = []
    for step in range(1, args.steps + 1):
        tic = time.perf_counter()
        items = sampler.item_indices(step, 2, 0, 1, 0)
        samples = [sampler.sample(i, generator) for i in items]
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        height, width = batch["images"].shape[-2:]  # size=None: the view from its top-left corner
        target = torch.stack([labels[sampler.items[i][0]][sampler.items[i][1]][:height, :width] for i in items])[:, None]
        images, K, poses, ranges = batch["images"], batch["K"], batch["cam_from_world"], batch["depth_range"]
        views = images.shape[1]
        output = model([images[:, v] for v in range(views)], [K[:, v].float() for v in range(views)],
                       [poses[:, v].float() for v in range(views)], ranges[:, 0, 0].float(), ranges[:, 0, 1].float())
        target = torch.where(batch["mask"], target, torch.zeros_like(target))  # no label outside the valid pixels
        loss = torch.stack([pseudo_label_loss(depth, target) for depths in output.stage_depths.values() for depth in depths]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        rows.append({"step": step, "loss": loss.item(), "seconds": time.perf_counter() - tic})
        write_loss_log(args.out / "losses.csv", rows, ["step", "loss", "seconds"])
        if step % 100 == 0:
            save_checkpoint(args.out / f"step_{step}.pt", model.eval())
            model.train()
            print(f"step {step}: loss {loss.item():.4f}, {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
