"""One optimizer step: every forward of the step (plain, augmented, cross-view) in one batched call.

Two kinds of step: :func:`train_step` (view 0 the reference, the objective's ``forward``) and
:func:`symmetric_train_step` (MVS^2: every view of the set the reference in turn, the objective's
``symmetric``).
"""

from __future__ import annotations

import contextlib
import inspect

import torch

from pipeline.losses import augment_images


def split_stages(stage_depths, chunks: int) -> list[dict[int, list[torch.Tensor]]]:
    parts = [dict() for _ in range(chunks)]
    for stage, depths in stage_depths.items():
        pieces = [d.chunk(chunks, 0) for d in depths]
        for c in range(chunks):
            parts[c][stage] = [p[c] for p in pieces]
    return parts


def train_step(net, objective, optimizer, scaler, batch, terms, aug_params, aug_weight, generator, amp_dtype, grad_clip, device):
    """One optimizer step; every forward of the step is one batched call (DDP needs one forward)."""
    images, K, poses, ranges = batch["images"], batch["K"], batch["cam_from_world"], batch["depth_range"]
    batch_size, views = images.shape[:2]
    inputs = [(images, K, poses, ranges[:, 0])]
    keep = None
    if "augmentation" in terms:
        augmented, keep = augment_images(images, generator, aug_params)
        inputs.append((augmented, K, poses, ranges[:, 0]))
    if "cross_view" in terms:
        order = [1, 0, *range(2, views)]  # the first source as reference, the reference as its source
        inputs.append((images[:, order], K[:, order], poses[:, order], ranges[:, 1]))
    stacked = [torch.cat(parts) for parts in zip(*inputs)]
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    with amp:
        output = net(
            [stacked[0][:, v] for v in range(views)],
            [stacked[1][:, v].float() for v in range(views)],
            [stacked[2][:, v].float() for v in range(views)],
            stacked[3][:, 0].float(),
            stacked[3][:, 1].float(),
        )
    parts = split_stages(output.stage_depths, len(inputs))
    index = 1
    augmented_depths = cross_depth = None
    if "augmentation" in terms:
        augmented_depths = parts[index]
        index += 1
    if "cross_view" in terms:
        cross_depth = parts[index][0][-1]
    total, values = objective(
        images, K.float(), poses.float(), parts[0], mask=batch["mask"], labels=batch.get("label"),
        augmented_stage_depths=augmented_depths, augmentation_keep=keep, cross_depth=cross_depth,
        generator=generator, weight_overrides={"augmentation": aug_weight} if "augmentation" in terms else None,
    )
    return _optimize(net, optimizer, scaler, total, values, grad_clip)


def _optimize(net, optimizer, scaler, total, values, grad_clip):
    scaler.scale(total).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total.detach(), {t: v.detach() for t, v in values.items()}


def symmetric_orders(views: int) -> list[list[int]]:
    """For each view v, the order of the set with v as the reference: ``[v, the others in their order]``."""
    return [[v] + [u for u in range(views) if u != v] for v in range(views)]


def shares_features(model) -> bool:
    """Whether the network takes precomputed per-view features (``extract_features`` + ``forward(features=)``)."""
    if not callable(getattr(model, "extract_features", None)):
        return False
    return "features" in inspect.signature(model.forward).parameters


def symmetric_forward(net, model, images, K, cam_from_world, depth_range):
    """The V forwards of MVS^2's symmetric training as one batched call: chunk v of the batch has
    view v as the reference. Where the network allows (:func:`shares_features`), the features of
    the V images are computed once and shared by the V forwards.

    Args:
        net: the network as called (DistributedDataParallel or the model itself).
        model: the unwrapped network.

    Returns:
        V ``stage_depths`` mappings, the v-th that of the forward with view v as the reference.

    Shape:
        - images: (B, V, 3, H, W); K: (B, V, 3, 3); cam_from_world: (B, V, 4, 4); depth_range: (B, V, 2)
    """
    batch, views = images.shape[:2]
    orders = symmetric_orders(views)

    def stacked(tensor):  # (B, V, ...) -> (V * B, V, ...), chunk v in v's order
        return torch.cat([tensor[:, order] for order in orders])

    s_images, s_K, s_poses = stacked(images), stacked(K).float(), stacked(cam_from_world).float()
    s_ranges = stacked(depth_range)[:, 0].float()  # each chunk's reference range
    kwargs = {}
    if shares_features(model):
        # One pass over the V images; BatchNorm (when training) sees them together. Under DDP this
        # runs outside its forward; the feature weights' gradients are still averaged (DDP hooks
        # every parameter's gradient; torchrun with 2 CPU processes, 2026-12-07).
        per_view = {stage: f.view(batch, views, *f.shape[1:]) for stage, f in model.extract_features(images.flatten(0, 1)).items()}
        kwargs["features"] = [
            {stage: torch.cat([f[:, order[position]] for order in orders]) for stage, f in per_view.items()}
            for position in range(views)
        ]
    output = net(
        [s_images[:, u] for u in range(views)], [s_K[:, u] for u in range(views)],
        [s_poses[:, u] for u in range(views)], s_ranges[:, 0], s_ranges[:, 1], **kwargs,
    )
    return split_stages(output.stage_depths, views)


def symmetric_train_step(net, model, objective, optimizer, scaler, batch, generator, amp_dtype, grad_clip, device):
    """One optimizer step of MVS^2's symmetric objective (:meth:`SelfSupervisedLoss.symmetric`).

    The batch needs ``view_masks`` (B, V, 1, H, W): the valid pixels of every view
    (``ViewSampler(view_masks=True)``). The augmentation and pseudo-label terms, defined for one
    reference, are not part of it (:func:`pipeline.training.objective.trains_symmetric` refuses them).
    """
    images, K, poses = batch["images"], batch["K"], batch["cam_from_world"]
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    with amp:
        view_stage_depths = symmetric_forward(net, model, images, K, poses, batch["depth_range"])
    total, values = objective.symmetric(
        images, K.float(), poses.float(), view_stage_depths, masks=batch["view_masks"], generator=generator,
    )
    return _optimize(net, optimizer, scaler, total, values, grad_clip)
