"""The fitted model: factors, offsets, the raw-id index, and the one scoring rule.

The rule is :mod:`spark_cf.model.scoring`'s (its docstring states it); the model only
holds the arrays it reads::

    prediction(user j, item i) = theta_j . x_i + b_j + mean_i + global_mean + b_i

A user the model has never seen gets ``mean_i + global_mean + b_i``: the cold-start rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_cf.data.indexing import IdIndex
from spark_cf.model import scoring

log = logging.getLogger(__name__)


@dataclass
class CFModel:
    """Item features, user parameters, biases and offsets, with the raw-id index, and the
    items' training rating counts when known (they do not score: the evaluation's
    most-popular baseline ranks by them)."""

    index: IdIndex
    item_factors: np.ndarray  # (num_items, rank)
    user_factors: np.ndarray  # (num_users, rank)
    item_means: np.ndarray  # (num_items,) normalisation means, 0 when none
    global_mean: float
    item_bias: np.ndarray | None = None
    user_bias: np.ndarray | None = None
    #: (num_items,) training ratings per item (the most-popular baseline ranks by them);
    #: None for a model saved without them
    item_counts: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.item_factors.shape[1])

    @property
    def biases(self) -> bool:
        return self.item_bias is not None

    def item_offsets(self) -> np.ndarray:
        """What every prediction of an item adds to ``theta . x + b_user``:
        mean + global mean + bias (:func:`spark_cf.model.scoring.item_offsets`)."""
        return scoring.item_offsets(self.item_means, self.global_mean, self.item_bias)

    def predict_indices(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predictions for dense indices (:func:`spark_cf.model.scoring.score_pairs`); a
        user index of -1 is a user the model never saw (cold start), an item index of -1
        an item it never saw (NaN)."""
        return scoring.score_pairs(
            self.user_factors,
            self.user_bias,
            self.item_factors,
            self.item_offsets(),
            user_idx,
            item_idx,
        )
