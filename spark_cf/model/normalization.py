"""What the model subtracts from the ratings before training and adds back to predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """What is subtracted from each rating before training and added back to predictions.

    ``item_means`` per item (the course's model; 0 for items without ratings) and/or one
    ``global_mean`` (the biased model). A prediction is ``... + item_means[i] + global_mean``.
    """

    item_means: np.ndarray
    global_mean: float

    def offsets(self, item_idx: np.ndarray) -> np.ndarray:
        return self.item_means[item_idx] + self.global_mean
