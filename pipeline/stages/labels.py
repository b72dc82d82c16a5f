"""``selfmvs pseudo-labels DEPTH_H5 MASKS_H5 OUT_H5``: depth the fusion kept -> self-training labels.

The labels are the network's own depth (``depth.h5`` of ``selfmvs infer``) on the pixels that
``selfmvs fuse`` kept (``fused_masks.h5``: photometrically confident and consistent with enough
sources), 0 elsewhere — no ground truth. Training on them (``selfmvs train --labels``, weight
``train.loss.weights.pseudo_label``) is self-training in the manner of KD-MVS. With ``--transfer``
a pixel the view's own fusion did not keep is labelled from other views' kept depth carried into it
(``pipeline.fusion.transfer``): the surface that some of its sources do not see is often kept from
other views. The file has the ``depth.h5`` layout with kind ``selfmvs.depth_labels`` and no
confidence (docs/formats.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.formats.paths import check_outputs_distinct

log = logging.getLogger(__name__)

#: With ``transfer``: views that give depth to a view (those that see most of it).
DEFAULT_NEIGHBOURS = 10
#: With ``transfer``: views that must at least agree (within 1 %) on a carried depth.
DEFAULT_SUPPORT = 2


class LabelsInputError(ValueError):
    """Depth and mask files that do not belong together; names the files and the view."""


def run_pseudo_labels(
    depth_h5: str | os.PathLike,
    masks_h5: str | os.PathLike,
    out_h5: str | os.PathLike,
    transfer: bool = False,
    neighbours: int = DEFAULT_NEIGHBOURS,
    support: int = DEFAULT_SUPPORT,
) -> dict:
    """Write ``out_h5``: each view's depth where its fusion mask is set, 0 elsewhere.

    With ``transfer``, pixels without a label of their own get the depth other views kept, carried
    into the view (``neighbours`` views at most; the depth most of them agree on within 1 %, at least
    ``support``).

    Returns:
        ``{"views": n, "labelled": fraction of pixels with a label, "own": fraction labelled by
        the view's own fusion}``.

    Raises:
        LabelsInputError, ``DepthFormatError``, FileNotFoundError: each naming the file at fault.
    """
    # numpy and h5py are imported here, not at module level: ``selfmvs --help`` stays fast.
    import numpy as np

    from pipeline.formats.depth_file import DepthView, list_depth_views, read_depth_attrs, read_depth_view
    from pipeline.formats.fused_masks import FusedMasksError, read_fused_masks
    from pipeline.formats.labels_file import write_labels_file

    if neighbours < 1 or support < 1:
        raise ValueError(
            f"pseudo-labels: --neighbours and --support must be at least 1, got {neighbours} and {support}"
        )
    depth_h5, masks_h5, out_h5 = Path(depth_h5), Path(masks_h5), Path(out_h5)
    check_outputs_distinct({"depth": depth_h5, "masks": masks_h5}, {"labels": out_h5})
    if not masks_h5.is_file():
        raise FileNotFoundError(f"{masks_h5}: fusion mask file not found")
    attrs = read_depth_attrs(depth_h5)
    if attrs.get("kind") != "selfmvs.depth":
        raise LabelsInputError(f"{depth_h5}: kind {attrs.get('kind')!r}; labels are made from a depth.h5 of selfmvs infer")
    try:
        masks = read_fused_masks(masks_h5)
    except FusedMasksError as error:
        raise LabelsInputError(str(error)) from None
    kept, meta = {}, {}
    for image_id in list_depth_views(depth_h5):
        view = read_depth_view(depth_h5, image_id)
        if image_id not in masks:
            raise LabelsInputError(f"{masks_h5}: no mask of view {image_id} (fuse the same depth.h5 first)")
        if masks[image_id].shape != view.depth.shape:
            raise LabelsInputError(f"{masks_h5}: view {image_id}: mask {masks[image_id].shape} but depth "
                                   f"{view.depth.shape}: not fused from this depth.h5")
        keep = masks[image_id] & np.isfinite(view.depth) & (view.depth > 0)
        kept[image_id] = np.where(keep, view.depth, 0).astype(np.float32)
        meta[image_id] = view
    labels = kept
    if transfer:
        from pipeline.fusion.transfer import transfer_labels  # torch: not at import time

        labels = transfer_labels(kept, {i: (v.K, v.cam_from_world) for i, v in meta.items()}, neighbours, support)
    views = [DepthView(i, meta[i].name, labels[i], None, meta[i].K, meta[i].cam_from_world) for i in kept]
    pixels = max(sum(d.size for d in kept.values()), 1)
    own = sum(int((d > 0).sum()) for d in kept.values()) / pixels
    fraction = sum(int((d > 0).sum()) for d in labels.values()) / pixels
    write_labels_file(out_h5, views, {
        "depth_file": str(depth_h5), "masks_file": str(masks_h5),
        "checkpoint": str(attrs.get("checkpoint", "")), "labelled_fraction": fraction,
        "transfer": bool(transfer), "own_fraction": own,
    })
    log.info("%d views, %.1f %% of the pixels labelled (%.1f %% by their own view's fusion) -> %s",
             len(views), 100 * fraction, 100 * own, out_h5)
    if fraction < 0.01:
        log.warning("%s: only %.2f %% of the pixels have a label (fusion kept almost nothing of %s): training on "
                    "these labels has little to learn from; check %s's consistency settings or the depth itself",
                    out_h5, 100 * fraction, depth_h5, masks_h5)
    return {"views": len(views), "labelled": fraction, "own": own}
