"""The model's parameters as one flat float64 vector, and their seeded initialisation.

The optimisers work on a flat vector ``w``; :class:`Layout` says where each part lives::

    w = [ X (num_items x rank, row-major) | Theta (num_users x rank, row-major)
          | b_item (num_items) | b_user (num_users) ]      # the biases only when enabled

Both the NumPy reference and the Spark path start from :func:`initial_parameters`, so
they begin at the same point, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Where X, Theta and the biases sit in the flat parameter vector."""

    num_items: int
    num_users: int
    rank: int
    biases: bool = False

    @property
    def size(self) -> int:
        n = (self.num_items + self.num_users) * self.rank
        if self.biases:
            n += self.num_items + self.num_users
        return n

    @property
    def _x_end(self) -> int:
        return self.num_items * self.rank

    @property
    def _theta_end(self) -> int:
        return self._x_end + self.num_users * self.rank

    def X(self, w: np.ndarray) -> np.ndarray:
        """Item features (num_items x rank), a view into ``w``."""
        return w[: self._x_end].reshape(self.num_items, self.rank)

    def Theta(self, w: np.ndarray) -> np.ndarray:
        """User parameters (num_users x rank), a view into ``w``."""
        return w[self._x_end : self._theta_end].reshape(self.num_users, self.rank)

    def item_bias(self, w: np.ndarray) -> np.ndarray:
        """Item biases (num_items), a view into ``w``; zeros when biases are off."""
        if not self.biases:
            return np.zeros(self.num_items)
        return w[self._theta_end : self._theta_end + self.num_items]

    def user_bias(self, w: np.ndarray) -> np.ndarray:
        """User biases (num_users), a view into ``w``; zeros when biases are off."""
        if not self.biases:
            return np.zeros(self.num_users)
        return w[self._theta_end + self.num_items :]

    def pack(
        self,
        X: np.ndarray,
        Theta: np.ndarray,
        item_bias: np.ndarray | None = None,
        user_bias: np.ndarray | None = None,
    ) -> np.ndarray:
        """Build the flat vector from its parts (biases default to zero)."""
        parts = [np.asarray(X, dtype=np.float64).ravel(), np.asarray(Theta, np.float64).ravel()]
        if self.biases:
            bi = np.zeros(self.num_items) if item_bias is None else item_bias
            bu = np.zeros(self.num_users) if user_bias is None else user_bias
            parts += [np.asarray(bi, np.float64).ravel(), np.asarray(bu, np.float64).ravel()]
        w = np.concatenate(parts)
        if w.size != self.size:
            raise ValueError(f"parts give {w.size} values, layout needs {self.size}")
        return w


def initial_parameters(layout: Layout, *, init_scale: float, seed: int) -> np.ndarray:
    """Small seeded random X and Theta (standard normal times ``init_scale``), zero biases.

    The random start breaks the symmetry between the features; the biases start at zero
    since they have no symmetry to break. X is drawn first, then Theta, from one
    ``numpy.random.default_rng(seed)``, so the values depend only on the sizes and the seed.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((layout.num_items, layout.rank)) * init_scale
    Theta = rng.standard_normal((layout.num_users, layout.rank)) * init_scale
    return layout.pack(X, Theta)


def row_preconditioner(
    layout: Layout, item_counts: np.ndarray, user_counts: np.ndarray
) -> np.ndarray:
    """L-BFGS's diagonal: ``1 / (training ratings of the row + 1)`` for every parameter of
    an item's row (its features and bias) and of a user's row."""
    D = np.empty(layout.size)
    item = 1.0 / (np.asarray(item_counts, dtype=np.float64) + 1.0)
    user = 1.0 / (np.asarray(user_counts, dtype=np.float64) + 1.0)
    layout.X(D)[:] = item[:, None]
    layout.Theta(D)[:] = user[:, None]
    if layout.biases:
        layout.item_bias(D)[:] = item
        layout.user_bias(D)[:] = user
    return D
