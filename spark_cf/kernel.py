"""The per-block kernel: partial cost and gradients of one user-block x item-block.

No Spark import: a :class:`BlockPayload` is plain NumPy arrays, cached by Spark; a Python
worker turns it once into a :class:`Block` and keeps that between jobs. Within a block the
training ratings, sorted by (item, user), are the pattern of a sparse residual matrix
``E`` (items x users, CSR); each evaluation writes the residuals into ``E``'s values and
gets both gradients as sparse-dense products (SciPy, no n x k temporaries)::

    dX_block = E @ Theta_block          dTheta_block = E.T @ X_block

This is deliberately a different summation from the reference's ``bincount``. Measured on
one 500,000-rating block, rank 10: 47 ms, against 161 ms for NumPy segment sums
(``add.reduceat`` with a user-order permutation).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.sparse


@dataclass
class BlockPayload:
    """What Spark caches for one (user block, item block): compact arrays, nothing derived.

    Attributes
    ----------
    key : identifies the cached data set (a worker keeps prepared blocks under it).
    block_id : position in the grid, ``user_block * num_item_blocks + item_block``.
    user_start, item_start : the first global index of the block's user and item ranges.
    num_users, num_items : the sizes of those ranges.
    users, items : local indices (int32), ratings sorted by (item, user).
    y : normalised ratings (float64).
    is_val : True for held-out ratings (scored, never in the gradient).
    """

    key: str
    block_id: int
    user_start: int
    num_users: int
    item_start: int
    num_items: int
    users: np.ndarray
    items: np.ndarray
    y: np.ndarray
    is_val: np.ndarray


class Block:
    """A payload prepared for the kernel: training ratings with their segment structure."""

    def __init__(self, p: BlockPayload) -> None:
        self.block_id = p.block_id
        self.user_start, self.num_users = p.user_start, p.num_users
        self.item_start, self.num_items = p.item_start, p.num_items
        train = ~p.is_val
        self.num_train = int(train.sum())
        self.t_users = np.ascontiguousarray(p.users[train])
        self.t_items = np.ascontiguousarray(p.items[train])
        self.t_y = np.ascontiguousarray(p.y[train])
        # The residual matrix's pattern: rows = local items, columns = local users; the
        # payload is sorted by (item, user), which is CSR order.
        indptr = np.searchsorted(self.t_items, np.arange(p.num_items + 1)).astype(np.int64)
        self.residuals = scipy.sparse.csr_matrix(
            (np.zeros(self.num_train), self.t_users, indptr), shape=(p.num_items, p.num_users)
        )
        self.v_users = p.users[p.is_val]
        self.v_items = p.items[p.is_val]
        self.v_y = p.y[p.is_val]


#: Prepared blocks kept by a Python worker between Spark jobs: data key -> block id ->
#: Block. Spark reuses its Python workers, so from the second iteration on a worker finds
#: the sparse pattern here instead of rebuilding it. Only the most recently used
#: ``MAX_CACHED_DATASETS`` data sets are kept, so memory stays bounded.
_PREPARED: OrderedDict[str, dict[int, Block]] = OrderedDict()
MAX_CACHED_DATASETS = 4


def prepared_block(payload: BlockPayload) -> Block:
    """The :class:`Block` for ``payload``, from this process's cache when it is there."""
    blocks = _PREPARED.get(payload.key)
    if blocks is None:
        blocks = _PREPARED[payload.key] = {}
        while len(_PREPARED) > MAX_CACHED_DATASETS:
            _PREPARED.popitem(last=False)
    else:
        _PREPARED.move_to_end(payload.key)
    block = blocks.get(payload.block_id)
    if block is None:
        block = blocks[payload.block_id] = Block(payload)
    return block


def block_gradients_flat(payload: BlockPayload, w: np.ndarray, layout) -> BlockResult:
    """:func:`block_gradients` for a payload and a flat parameter vector (the Spark task)."""
    block = prepared_block(payload)
    if layout.biases:
        return block_gradients(
            block, layout.X(w), layout.Theta(w), layout.item_bias(w), layout.user_bias(w)
        )
    return block_gradients(block, layout.X(w), layout.Theta(w))


@dataclass
class BlockResult:
    """What one block adds to the totals (regularisation is added on the driver)."""

    block_id: int
    sse: float
    count: int
    val_sse: float
    val_count: int
    d_item_factors: np.ndarray  # (block's num_items, rank): rows of dX in its item range
    d_user_factors: np.ndarray  # (block's num_users, rank)
    d_item_bias: np.ndarray | None
    d_user_bias: np.ndarray | None


def block_gradients(
    block: Block,
    X: np.ndarray,
    Theta: np.ndarray,
    item_bias: np.ndarray | None = None,
    user_bias: np.ndarray | None = None,
) -> BlockResult:
    """Partial data cost and gradients of ``block`` at the given parameters.

    ``X``, ``Theta`` (and the biases) are the *full* parameter arrays; the block reads the
    rows in its ranges. The data term is ``1/2 sum e^2`` with ``e = prediction - y``.
    """
    Xb = X[block.item_start : block.item_start + block.num_items]
    Tb = Theta[block.user_start : block.user_start + block.num_users]
    biased = item_bias is not None and user_bias is not None
    if biased:
        bib = item_bias[block.item_start : block.item_start + block.num_items]
        bub = user_bias[block.user_start : block.user_start + block.num_users]
    rank = X.shape[1]

    err = np.einsum("nk,nk->n", Xb[block.t_items], Tb[block.t_users])
    if biased:
        err += bib[block.t_items] + bub[block.t_users]
    err -= block.t_y
    sse = float(err @ err)
    E = block.residuals
    E.data = err
    d_items = np.asarray(E @ Tb) if block.num_train else np.zeros((block.num_items, rank))
    d_users = np.asarray(E.T @ Xb) if block.num_train else np.zeros((block.num_users, rank))
    d_ib = d_ub = None
    if biased:
        d_ib = np.bincount(block.t_items, weights=err, minlength=block.num_items)
        d_ub = np.bincount(block.t_users, weights=err, minlength=block.num_users)

    val_sse = 0.0
    if len(block.v_y):
        verr = np.einsum("nk,nk->n", Xb[block.v_items], Tb[block.v_users])
        if biased:
            verr += bib[block.v_items] + bub[block.v_users]
        verr -= block.v_y
        val_sse = float(verr @ verr)
    return BlockResult(
        block.block_id,
        sse,
        block.num_train,
        val_sse,
        len(block.v_y),
        d_items,
        d_users,
        d_ib,
        d_ub,
    )
