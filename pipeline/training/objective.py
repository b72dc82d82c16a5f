"""The loss a run minimises, built from ``train.loss`` (and ``train.finetune`` when fine-tuning)."""

from __future__ import annotations

import dataclasses
import logging

from pipeline.config import TrainConfig
from pipeline.losses import SelfSupervisedLoss, get_recipe
from pipeline.losses.cosegmentation import make_cosegmentation
from pipeline.losses.feature import FrozenNetworkFeatures, make_feature_extractor

log = logging.getLogger("selfmvs.train")


def build_objective(
    config: TrainConfig, mode: str, have_labels: bool, device, model=None, *,
    from_scratch: bool = True, initial_features: dict | None = None,
):
    """The recipe, the loss module and the augmentation ranges of a run.

    Fine-tuning with ``train.finetune.objective: labels`` keeps the pseudo-label term alone, at
    ``train.finetune.label_weight``. The co-segmentation term gets its frozen VGG16 from the local
    file ``train.vgg16_weights`` (never downloaded); without it the term is off, with a WARNING.
    The feature term takes the same VGG16 when the file is given, else a frozen copy of ``model``'s
    feature maps (``model.multiscale_features()``) as they are now, before the first step
    (:func:`pipeline.losses.feature.make_feature_extractor`).

    Args:
        model: the network about to be trained (unwrapped, on ``device``, its starting weights).
        from_scratch: the run started from the seeded random initialisation (no ``--init``): the
            frozen copy is then a fixed random projection, logged at WARNING level.
        initial_features: :func:`feature_reference` of the checkpoint a resumed run continues:
            the frozen copy as it was at the run's start, not the resumed weights'.

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
        network_features = model.multiscale_features() if model is not None else None
        feature_extractor = make_feature_extractor(config.vgg16_weights, network_features=network_features)
        if isinstance(feature_extractor, FrozenNetworkFeatures):
            if initial_features is not None:
                try:
                    feature_extractor.load_state_dict(initial_features)
                except RuntimeError as error:
                    raise ValueError(
                        f"train --resume: the checkpoint's feature_reference (the feature term's frozen copy of the "
                        f"network's features) does not fit this network: {error}"
                    ) from None
            if from_scratch:
                log.warning(
                    "feature-wise consistency (M3VSNet): the frozen features are the network's seeded random "
                    "initialisation, a fixed random projection of the image (no --init, no train.vgg16_weights); "
                    "give train.vgg16_weights for the paper's ImageNet VGG16"
                )
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


def feature_reference(objective) -> dict | None:
    """The state of the feature term's frozen copy of the network's features (CPU tensors), which a
    checkpoint keeps so that a resumed run compares with the features of the run's start; None
    with VGG16 or without the term."""
    extractor = getattr(objective, "feature_extractor", None)
    if not isinstance(extractor, FrozenNetworkFeatures):
        return None
    return {key: value.detach().cpu() for key, value in extractor.state_dict().items()}


# Terms defined for one reference (its augmented copy, its label map): not part of a symmetric step.
ONE_REFERENCE_TERMS = ("augmentation", "pseudo_label")


def trains_symmetric(config: TrainConfig, mode: str, recipe, terms) -> bool:
    """Whether the run trains MVS^2's symmetric objective: recipe ``mvs2`` (every view of a sample
    the reference in turn, :meth:`pipeline.losses.SelfSupervisedLoss.symmetric`), except when
    fine-tuning on labels (``train.finetune.objective: labels`` keeps the pseudo-label term alone) and
    when only one-reference terms are left on.

    Raises:
        ValueError: ``mvs2`` with a one-reference term (augmentation, pseudo_label) switched on.
    """
    if recipe.name != "mvs2" or (mode == "finetune" and config.finetune.objective == "labels"):
        return False
    one_reference = [t for t in terms if t in ONE_REFERENCE_TERMS]
    if one_reference and len(one_reference) == len(terms):
        return False  # every MVS^2 term switched off (e.g. self-training on labels alone): nothing symmetric left
    if one_reference:
        raise ValueError(
            f"train.loss.recipe mvs2 takes every view of a sample as the reference in turn (MVS^2's symmetric "
            f"objective); the {', '.join(one_reference)} term(s) are defined for one reference: set "
            + " and ".join(f"train.loss.weights.{t}: 0" for t in one_reference) + ", or use another recipe"
        )
    return True
