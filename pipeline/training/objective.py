"""The loss a run minimises, built from ``train.loss`` (and ``train.finetune`` when fine-tuning)."""

from __future__ import annotations

import dataclasses
import logging

from pipeline.config import TrainConfig
from pipeline.losses import SelfSupervisedLoss, get_recipe
from pipeline.losses.cosegmentation import make_cosegmentation

log = logging.getLogger("selfmvs.train")


def build_objective(config: TrainConfig, mode: str, have_labels: bool, device):
    """The recipe, the loss module and the augmentation ranges of a run.

    Fine-tuning with ``train.finetune.objective: labels`` keeps the pseudo-label term alone, at
    ``train.finetune.label_weight``.

    Returns:
        ``(recipe, objective, augmentation_params)``.

    Raises:
        ValueError: the objective needs labels and none were given.
    """
    loss_config = config.loss
    overrides = dict(dataclasses.asdict(loss_config.weights))
    if mode == "finetune" and config.finetune.objective == "labels":
        overrides = {term: 0.0 for term in overrides} | {"pseudo_label": config.finetune.label_weight}
        if not have_labels:
            raise ValueError(
                "train --finetune: train.finetune.objective is 'labels' but no label file was given (--labels; "
                "made by selfmvs infer -> fuse --masks -> pseudo-labels --transfer, as the workflow does); "
                "set train.finetune.objective: photometric to fine-tune on the photos alone"
            )
    recipe = get_recipe(loss_config.recipe, overrides)
    cosegmentation = None
    if "cosegmentation" in recipe.weights:
        cosegmentation = make_cosegmentation(
            config.vgg16_weights, loss_config.cosegmentation.layer,
            loss_config.cosegmentation.num_segments, loss_config.cosegmentation.iterations,
        )
        if cosegmentation is not None:
            cosegmentation = cosegmentation.to(device)
    objective = SelfSupervisedLoss(
        recipe, top_k=loss_config.top_k, gradient_weight=loss_config.gradient_weight,
        robust=loss_config.robust, huber_delta=loss_config.huber_delta,
        smoothness_order=loss_config.smoothness_order, smoothness_inverse=loss_config.smoothness_inverse,
        cross_view_max_error=loss_config.cross_view_max_error, cosegmentation=cosegmentation,
    )
    aug_params = loss_config.augmentation  # the config section is the augmentation's parameters
    return recipe, objective, aug_params
