"""The scoring rule, once: every prediction and every top-N score comes from here.

The rule, for user ``j`` and item ``i``::

    score(j, i) = theta_j . x_i + b_j + offset_i
    offset_i    = mean_i + global_mean + b_i

``theta_j``/``x_i`` are the user's and the item's features, ``b_j``/``b_i`` the biases (0
without them), ``mean_i`` the item's normalisation mean (0 with biases or without
normalisation) and ``global_mean`` the biased model's centre (0 for the course's model).
A user the model never saw (index -1) has ``theta = 0`` and ``b_j = 0``: it scores
``offset_i``, the cold-start rule. An item the model never saw (index -1) scores NaN.

Two forms compute it, side by side:

- :func:`score_pairs`, for (user, item) index pairs: ``offset_i + (theta_j . x_i + b_j)``,
  the dot products row by row (predictions, evaluation, the NumPy reference);
- :func:`score_block`, for rows of users against every item: one matrix product
  ``Theta_rows @ X.T``, then ``+ offset`` and ``+ b_j`` (top-N).

They add the same terms; the block form's BLAS product may sum a dot product in another
order, so the two agree to about 1e-15 relative, not always to the last bit.
"""

from __future__ import annotations

import numpy as np

#: The rule as recorded in a model's metadata (names of the published columns).
SCORING_RULE = (
    "prediction = features(user) . features(item) + mean(item) + bias(item) + bias(user) "
    "+ global_mean"
)


def item_offsets(
    item_means: np.ndarray, global_mean: float, item_bias: np.ndarray | None = None
) -> np.ndarray:
    """What every score of an item adds to ``theta . x + b_user``.

    Parameters
    ----------
    item_means : (num_items,) normalisation means (zeros when none).
    global_mean : the biased model's centre (0.0 when none).
    item_bias : (num_items,) item biases, or None without biases.

    Returns
    -------
    (num_items,) ``mean_i + global_mean + b_i``.
    """
    out = np.asarray(item_means, dtype=np.float64) + global_mean
    return out + item_bias if item_bias is not None else out


def score_pairs(
    user_factors: np.ndarray,
    user_bias: np.ndarray | None,
    item_factors: np.ndarray,
    offsets: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
) -> np.ndarray:
    """The rule for index pairs (the pairwise form).

    Parameters
    ----------
    user_factors : (num_users, rank) Theta.
    user_bias : (num_users,) user biases, or None without biases.
    item_factors : (num_items, rank) X.
    offsets : (num_items,) from :func:`item_offsets`.
    users, items : dense indices of the pairs; -1 marks a user the model never saw (cold
        start: the item's offset) or an item it never saw (NaN).

    Returns
    -------
    (len(users),) float64 scores.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    out = np.full(users.shape, np.nan)
    known_item = items >= 0
    out[known_item] = offsets[items[known_item]]
    both = known_item & (users >= 0)
    u, i = users[both], items[both]
    dots = np.einsum("nk,nk->n", user_factors[u], item_factors[i])
    if user_bias is not None:
        dots = dots + user_bias[u]
    out[both] += dots
    return out


def score_block(
    user_factors: np.ndarray,
    user_bias: np.ndarray | None,
    item_factors: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """The rule for rows of users against every item (the matrix form).

    Parameters
    ----------
    user_factors : (rows, rank) the users' Theta rows.
    user_bias : (rows,) their biases, or None without biases.
    item_factors : (num_items, rank) X.
    offsets : (num_items,) from :func:`item_offsets`.

    Returns
    -------
    (rows, num_items) float64 scores: one matrix product, then the offsets and biases
    added in place.
    """
    scores = user_factors @ item_factors.T
    scores += offsets
    if user_bias is not None:
        scores += user_bias[:, None]
    return scores
