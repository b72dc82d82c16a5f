"""Named loss recipes: which terms a published method uses, with which weights, at which outputs.

The photometric (12), SSIM (6) and smoothness (0.18) weights are those of Unsup_MVS and JDACS.
The weights of the extra terms are our choices where the papers' values do not transfer to our
normalised terms (documented per recipe); ``train.loss.weights`` overrides any of them. No recipe
has the ``pseudo_label`` term (self-training needs label files): it is switched on by its weight.

"All stages" means every depth the network outputs (each PatchMatch iteration of stages 3, 2 and
1 and the refined depth), each at its own resolution; "final" means the refined depth only.

Every system is trained on our PatchmatchNet backbone (``model:``), not on the paper's own
network; the recipes reproduce the papers' objectives. Each recipe's ``doc`` cites its paper and
says what differs from it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

TERMS = (
    "photometric", "ssim", "smoothness", "augmentation", "cosegmentation", "cross_view", "depth_normal", "feature",
    "pseudo_label",
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A set of weighted loss terms.

    Attributes:
        name: the recipe's name.
        weights: term -> weight (terms absent are off).
        final_only: terms applied to the refined depth only (the others to every output).
        doc: the paper it reproduces and what, if anything, differs from it.
        model: ``ModelConfig`` options of the paper's network, used for a network trained from scratch
            unless ``train.model`` sets them (``jdacs_ms``: the CVP-MVSNet backbone).
    """

    name: str
    weights: Mapping[str, float]
    final_only: frozenset[str] = frozenset()
    doc: str = ""
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def with_weights(self, overrides: Mapping[str, float | None]) -> "Recipe":
        """A copy with the given weights replaced (None keeps the recipe's; 0 turns a term off)."""
        unknown = set(overrides) - set(TERMS)
        if unknown:
            raise ValueError(f"loss weights: unknown term(s) {sorted(unknown)}; known: {list(TERMS)}")
        weights = dict(self.weights)
        for term, value in overrides.items():
            if value is not None:
                weights[term] = float(value)
        return dataclasses.replace(self, weights={t: w for t, w in weights.items() if w != 0})


_BASE = {"photometric": 12.0, "ssim": 6.0, "smoothness": 0.18}

RECIPES: dict[str, Recipe] = {
    "unsup_mvsnet": Recipe(
        "unsup_mvsnet", dict(_BASE),
        doc="Khot et al., 'Learning Unsupervised Multi-View Stereopsis via Robust Photometric Consistency', "
        "arXiv:1905.02706, 2019: robust photometric consistency (per pixel the best top_k of the sources) + SSIM "
        "+ edge-aware smoothness, at every output. Differs: the paper trains MVSNet; here the backbone is ours.",
    ),
    "mvs2": Recipe(
        "mvs2", {**_BASE, "cross_view": 1.0}, frozenset({"cross_view"}),
        doc="Dai et al., 'MVS^2: Deep Unsupervised Multi-view Stereo with Multi-View Symmetry', 3DV 2019: the "
        "pixel-wise terms + symmetric multi-view depth consistency (cross_view; weight 1.0 on the relative depth "
        "error, ours) on the refined depths. Symmetric as in the paper through SelfSupervisedLoss.symmetric (a "
        "depth for every view of the set, every ordered pair checked); SelfSupervisedLoss.forward checks the "
        "reference against view 1 only, both ways. Differs: occlusions are a geometric forward-backward check "
        "(pipeline.losses.multi_view) where the paper learns occlusion maps; the paper's spatial-propagation "
        "refinement is `train.model: {refinement: spn}` (pipeline.model.spn).",
    ),
    "m3vsnet": Recipe(
        "m3vsnet", {**_BASE, "feature": 1.0, "depth_normal": 1.0}, frozenset({"feature", "depth_normal"}),
        doc="Huang et al., 'M3VSNet: Unsupervised Multi-metric Multi-view Stereo Network', 2021 "
        "(arXiv:2005.00363): pixel-wise (photometric + SSIM + smoothness, every output) + feature-wise "
        "consistency (feature: frozen ImageNet VGG16 at relu2_2, relu3_3, relu4_3 from train.vgg16_weights; "
        "weight 1.0, ours) + normal-depth consistency (depth_normal; weight 1.0, ours), these two on the refined "
        "depth. Without train.vgg16_weights the feature term compares the network's own feature maps (PatchmatchNet: "
        "1/2, 1/4, 1/8; CVP-MVSNet: 1, 1/2), a frozen copy taken before the first step (the --init weights'; from "
        "scratch a fixed random projection, with a WARNING). Differs: feature errors are divided by each layer's mean activation (the "
        "paper compares raw activations); the backbone is ours.",
    ),
    "jdacs": Recipe(
        "jdacs", {**_BASE, "augmentation": 0.01, "cosegmentation": 0.1}, frozenset({"augmentation", "cosegmentation"}),
        doc="Xu et al., 'Self-supervised Multi-view Stereo via Effective Co-Segmentation and Data-Augmentation', "
        "AAAI 2021 (JDACS): the pixel-wise terms + data-augmentation consistency (0.01, rising by schedule) + "
        "co-segmentation consistency (0.1, ours), these two on the refined depth. Co-segmentation needs "
        "train.vgg16_weights and is off (with a WARNING) without it. Differs: the backbone is ours.",
    ),
    "jdacs_ms": Recipe(
        "jdacs_ms", {**_BASE, "augmentation": 0.01, "cosegmentation": 0.1},
        doc="JDACS-MS, the multi-scale system of the same paper (Xu et al., AAAI 2021): the jdacs terms at every "
        "level of a CVP-MVSNet (Yang et al., CVPR 2020; pipeline.model.cvp), the backbone a network trained from "
        "scratch gets with this recipe. Differs: the cost is group-wise correlation (the paper: variance), and "
        "fine-tuning keeps the backbone of its --init checkpoint.",
        model={"backbone": "cvp"},
    ),
}


def get_recipe(name: str, overrides: Mapping[str, float | None] | None = None) -> Recipe:
    """The recipe called ``name`` with optional weight overrides.

    Raises:
        ValueError: for an unknown name or term.
    """
    if name not in RECIPES:
        raise ValueError(f"loss recipe: expected one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name].with_weights(overrides or {})
