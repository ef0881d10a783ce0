"""The fitted model: factors, offsets, the raw-id index, and the one scoring rule.

Scoring rule (the same for every consumer of the saved tables)::

    prediction(user j, item i) = theta_j . x_i + mean_i + b_i + b_j + global_mean

``mean_i`` is the item's normalisation mean (0 with biases or without normalisation),
``b_i``/``b_j`` the biases (0 without them), ``global_mean`` the biased model's centre
(0 for the course's model). A user the model has never seen has ``theta = 0`` and
``b_j = 0``, so gets ``mean_i + b_i + global_mean``: the item mean, the cold-start rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_cf.data.indexing import IdIndex

log = logging.getLogger(__name__)


@dataclass
class CFModel:
    """Item features, user parameters, biases and offsets, with the raw-id index."""

    index: IdIndex
    item_factors: np.ndarray  # (num_items, rank)
    user_factors: np.ndarray  # (num_users, rank)
    item_means: np.ndarray  # (num_items,) normalisation means, 0 when none
    global_mean: float
    item_bias: np.ndarray | None = None
    user_bias: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.item_factors.shape[1])

    @property
    def biases(self) -> bool:
        return self.item_bias is not None

    def item_offsets(self) -> np.ndarray:
        """What every prediction of an item adds to ``theta . x``: mean + bias + global."""
        out = self.item_means + self.global_mean
        return out + self.item_bias if self.item_bias is not None else out

    def predict_indices(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predictions for dense indices; a user index of -1 is a user the model never saw."""
        user_idx = np.asarray(user_idx, dtype=np.int64)
        item_idx = np.asarray(item_idx, dtype=np.int64)
        known = user_idx >= 0
        out = self.item_offsets()[item_idx].astype(np.float64)
        u, i = user_idx[known], item_idx[known]
        dots = np.einsum("nk,nk->n", self.user_factors[u], self.item_factors[i])
        if self.user_bias is not None:
            dots = dots + self.user_bias[u]
        out[known] += dots
        return out
