"""One optimizer step: every forward of the step (plain, augmented, cross-view) in one batched call."""

from __future__ import annotations

import contextlib

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
    scaler.scale(total).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total.detach(), {t: v.detach() for t, v in values.items()}
