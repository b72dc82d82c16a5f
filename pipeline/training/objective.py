"""The loss a run minimises, built from ``train.loss`` (and ``train.finetune`` when fine-tuning)."""

from __future__ import annotations

import dataclasses
import logging

from pipeline.config import TrainConfig
from pipeline.losses import SelfSupervisedLoss, get_recipe
from pipeline.losses.cosegmentation import make_cosegmentation
from pipeline.losses.feature import make_feature_extractor

log = logging.getLogger("selfmvs.train")


def build_objective(config: TrainConfig, mode: str, have_labels: bool, device):
    """The recipe, the loss module and the augmentation ranges of a run.

    Fine-tuning with ``train.finetune.objective: labels`` keeps the pseudo-label term alone, at
    ``train.finetune.label_weight``. The co-segmentation and feature terms get their frozen VGG16
    from the local file ``train.vgg16_weights`` (never downloaded); without it they are off, with
    a WARNING.

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
    feature_extractor = None
    if "feature" in recipe.weights:
        feature_extractor = make_feature_extractor(config.vgg16_weights)
        if feature_extractor is not None:
            feature_extractor = feature_extractor.to(device)
    objective = SelfSupervisedLoss(
        recipe, top_k=loss_config.top_k, gradient_weight=loss_config.gradient_weight,
        robust=loss_config.robust, huber_delta=loss_config.huber_delta,
        smoothness_order=loss_config.smoothness_order, smoothness_inverse=loss_config.smoothness_inverse,
        cross_view_max_error=loss_config.cross_view_max_error,
        cross_view_max_reprojection_error=loss_config.cross_view_max_reprojection_error,
        cosegmentation=cosegmentation, feature_extractor=feature_extractor,
    )
    aug_params = loss_config.augmentation  # the config section is the augmentation's parameters
    return recipe, objective, aug_params


# Terms defined for one reference (its augmented copy, its label map): not part of a symmetric step.
ONE_REFERENCE_TERMS = ("augmentation", "pseudo_label")


def trains_symmetric(config: TrainConfig, mode: str, recipe, terms) -> bool:
    """Whether the run trains MVS^2's symmetric objective: recipe ``mvs2`` (every view of a sample
    the reference in turn, :meth:`pipeline.losses.SelfSupervisedLoss.symmetric`), except when
    fine-tuning on labels (``train.finetune.objective: labels`` keeps the pseudo-label term alone).

    Raises:
        ValueError: ``mvs2`` with a one-reference term (augmentation, pseudo_label) switched on.
    """
    if recipe.name != "mvs2" or (mode == "finetune" and config.finetune.objective == "labels"):
        return False
    one_reference = [t for t in terms if t in ONE_REFERENCE_TERMS]
    if one_reference:
        raise ValueError(
            f"train.loss.recipe mvs2 takes every view of a sample as the reference in turn (MVS^2's symmetric "
            f"objective); the {', '.join(one_reference)} term(s) are defined for one reference: set "
            + " and ".join(f"train.loss.weights.{t}: 0" for t in one_reference) + ", or use another recipe"
        )
    return True
