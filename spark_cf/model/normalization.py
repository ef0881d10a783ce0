"""What the model subtracts from the ratings before training and adds back to predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spark_cf.model.scoring import item_offsets


@dataclass(frozen=True)
class Normalization:
    """What is subtracted from each rating before training and added back to predictions.

    ``item_means`` per item (the course's model; the mean of all training ratings for
    items without one) and/or one ``global_mean`` (the biased model). A prediction adds
    back ``item_means[i] + global_mean``: the scoring rule's offset without the bias
    (:func:`spark_cf.model.scoring.item_offsets`).
    """

    item_means: np.ndarray
    global_mean: float

    def table(self) -> np.ndarray:
        """``item_means[i] + global_mean`` for every item: what is subtracted from its
        ratings before training."""
        return item_offsets(self.item_means, self.global_mean)

    def offsets(self, item_idx: np.ndarray) -> np.ndarray:
        """``item_means[i] + global_mean`` for each index of ``item_idx``."""
        return self.table()[item_idx]
