"""Named loss recipes: which terms a published method uses, with which weights, at which outputs.

The photometric (12), SSIM (6) and smoothness (0.18) weights are those of Unsup_MVS and JDACS.
The weights of the extra terms are our choices where the papers' values do not transfer to our
normalised terms (documented per recipe); ``train.loss.weights`` overrides any of them. No recipe
has the ``pseudo_label`` term (self-training needs label files): it is switched on by its weight.

"All stages" means every depth the network outputs (each PatchMatch iteration of stages 3, 2 and
1 and the refined depth), each at its own resolution; "final" means the refined depth only.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

TERMS = (
    "photometric", "ssim", "smoothness", "augmentation", "cosegmentation", "cross_view", "depth_normal", "pseudo_label",
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A set of weighted loss terms.

    Attributes:
        name: the recipe's name.
        weights: term -> weight (terms absent are off).
        final_only: terms applied to the refined depth only (the others to every output).
    """

    name: str
    weights: Mapping[str, float]
    final_only: frozenset[str] = frozenset()

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
    # Khot et al. 2019: robust photometric (best 3 of N per pixel) + SSIM + 2nd-order smoothness.
    "unsup_mvsnet": Recipe("unsup_mvsnet", dict(_BASE)),
    # Dai et al. 2019 (MVS^2): adds cross-view depth consistency (our weight: 1.0 on the relative error).
    "mvs2": Recipe("mvs2", {**_BASE, "cross_view": 1.0}, frozenset({"cross_view"})),
    # Huang et al. 2021 (M3VSNet): adds depth-normal consistency (our weight: 1.0).
    "m3vsnet": Recipe("m3vsnet", {**_BASE, "depth_normal": 1.0}, frozenset({"depth_normal"})),
    # Xu et al. 2021 (JDACS): + augmentation consistency (0.01, rising by schedule) + co-segmentation
    # (our weight: 0.1); these two on the refined depth only.
    "jdacs": Recipe(
        "jdacs",
        {**_BASE, "augmentation": 0.01, "cosegmentation": 0.1},
        frozenset({"augmentation", "cosegmentation"}),
    ),
    # JDACS-MS: the same terms, every one of them at every stage's output.
    "jdacs_ms": Recipe("jdacs_ms", {**_BASE, "augmentation": 0.01, "cosegmentation": 0.1}),
}


def get_recipe(name: str, overrides: Mapping[str, float | None] | None = None) -> Recipe:
    """The recipe called ``name`` with optional weight overrides.

    Raises:
        ValueError: for an unknown name or term.
    """
    if name not in RECIPES:
        raise ValueError(f"loss recipe: expected one of {sorted(RECIPES)}, got {name!r}")
    return RECIPES[name].with_weights(overrides or {})
