"""Training with the user side on the executors (``train.user_side = "executors"``).

What lives where, from one iteration to the next:

========================  ===============================  =================================
                          driver                           executors (Spark's cache)
========================  ===============================  =================================
ratings                   nothing                          each user block's blocks
item features and biases  the point, gradient, curvature   the broadcast point being
                          and the optimiser's state        evaluated (read only)
user features and biases  nothing but at the start, at     each user block's slices: point,
                          checkpoints and at the end       gradient, curvature, state
L-BFGS pairs              their dot products; the item     the user blocks' slices
                          side's slices
========================  ===============================  =================================

One evaluation is one Spark job (:meth:`PartitionedObjective.evaluate`):

1. the driver moves the item slice (:func:`spark_cf.training.slices.apply_move`) and
   broadcasts the item point and the move;
2. each partition holds, for its user blocks, the ratings (cached once) and the state
   of the previous evaluation (cached); it applies the same move to each user slice,
   runs the per-block kernel at (item point, its user point), finishes the user
   gradient there (it has all of those users' ratings) and keeps the new state, cached
   (``new state = (ratings U old state).mapPartitions(step)``, partitioned alike);
3. the partial item gradients (and curvature) are cut into chunks, shuffled by chunk and
   summed on the executors in user-block order: one item-sized vector reaches the
   driver, with a few numbers per block (costs, counts, dot products);
4. the driver adds the regularisation (and the ranking objective's term over all pairs,
   whose user-side Gramian is summed from the blocks) and returns an
   :class:`~spark_cf.training.optimizers.Evaluation` without the gradient vector.

The sums are taken in a fixed order (blocks in block order, slices item side first then
user blocks in order), so the result is the same bits whatever the cores, executors
and partitions. For the ``ratings`` objective the gradient and curvature are the same
bits as :class:`~spark_cf.training.blocks.SparkObjective`'s, so the elementwise
optimisers follow the same trajectory bit for bit (only ``w . w``, in the cost, is
summed in another order).

A lost executor loses cached states; Spark recomputes them from their lineage (the
broadcasts are kept until a checkpoint). The lineage is cut every
:data:`LINEAGE_CHECKPOINT_EVERY` evaluations: to the SparkContext's checkpoint
directory when it has one (``spark.checkpoint.dir`` or ``sc.setCheckpointDir``), which
survives a lost executor, else with ``localCheckpoint`` (which does not).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pyspark import StorageLevel

from spark_cf.training import kernel, slices
from spark_cf.training.blocks import BlockedRatings, range_starts
from spark_cf.training.objective import (
    RATINGS_COST,
    CostSpec,
    augmented_items,
    augmented_users,
    gramian,
)
from spark_cf.training.optimizers import (
    ELEMENTWISE_RULES,
    LBFGS,
    Evaluation,
    Optimizer,
    OptimizerSettings,
    armijo,
    keep_pair,
    next_alpha,
)
from spark_cf.training.params import Layout

log = logging.getLogger(__name__)

#: evaluations between two cuts of the cached states' lineage
LINEAGE_CHECKPOINT_EVERY = 10
#: guards BlockedRatings.derived (the grid's fits start side by side)
_DERIVED = threading.Lock()


@dataclass
class UserBlockState:
    """One user block's slice of every vector (see :mod:`spark_cf.training.slices`), and
    after an evaluation the block's partial item gradient (``piece``) and sums."""

    block: int
    start: int
    size: int
    vecs: dict[str, np.ndarray]
    piece: np.ndarray | None = None
    sums: dict | None = None


@dataclass(frozen=True)
class _Static:
    """What every task needs and never changes."""

    rank: int
    biases: bool
    cost: CostSpec
    curvature: bool
    reg: float
    precondition: str
    item_flat: int  # length of the item slice


@dataclass(frozen=True)
class _Step:
    """What one evaluation broadcasts: the move and the item side's point."""

    move: slices.Move
    X: np.ndarray
    item_bias: np.ndarray | None
    gram_x: np.ndarray | None  # ranking: the augmented item Gramian
    user_row: np.ndarray | None  # ranking with curvature: the user rows' all-pairs term


def _split_rows(flat: np.ndarray, rows: int, rank: int, biases: bool):
    F = flat[: rows * rank].reshape(rows, rank)
    b = flat[rows * rank :] if biases else None
    return F, b


def _advance(state: UserBlockState, blocks: list, step: _Step, static: _Static) -> UserBlockState:
    """One user block's part of an evaluation (see the module docstring, step 2)."""
    move = step.move
    v = state.vecs
    point = slices.apply_move(v, move, static.precondition)
    k, biased, cost = static.rank, static.biases, static.cost
    n = state.size
    T, bu = _split_rows(point, n, k, biased)
    g = np.zeros_like(point)
    dT, dbu = _split_rows(g, n, k, biased)
    c = np.zeros_like(point) if static.curvature else None
    X, bi = step.X, step.item_bias
    ni = X.shape[0]
    piece = np.zeros(static.item_flat * (2 if static.curvature else 1))
    dX, dbi = _split_rows(piece[: static.item_flat], ni, k, biased)
    if c is not None:
        cT, cbu = _split_rows(c, n, k, biased)
        cX, cbi = _split_rows(piece[static.item_flat :], ni, k, biased)
    per_block = []
    for block in blocks:
        r = kernel.block_gradients(
            block,
            X,
            T,
            bi,
            bu,
            cost=cost,
            curvature=static.curvature,
            user_offset=state.start,
        )
        i0, i1 = block.item_start, block.item_start + block.num_items
        dX[i0:i1] += r.d_item_factors
        dT += r.d_user_factors
        if biased:
            dbi[i0:i1] += r.d_item_bias
            dbu += r.d_user_bias
        if c is not None:
            cX[i0:i1] += r.c_item_factors
            cT += r.c_user_factors
            if biased:
                cbi[i0:i1] += r.c_item_bias
                cbu += r.c_user_bias
        per_block.append((r.block_id, r.loss, r.sse, r.count, r.val_sse, r.val_count))
    extra: dict[str, object] = {}
    if cost.ranking:
        Ta = augmented_users(T, bu)
        dTa = np.einsum("ik,kl->il", Ta, step.gram_x, optimize=False)
        dT += dTa[:, :k]
        if biased:
            dbu += dTa[:, k + 1]
        extra["gram_theta"] = gramian(Ta)
        if c is not None:
            cT += step.user_row[:k]
            if biased:
                cbu += step.user_row[k]
            item_row = np.einsum("uk,uk->k", T, T, optimize=False)
            extra["item_row"] = np.append(item_row, float(n)) if biased else item_row
    g += static.reg * point
    if c is not None:
        c += static.reg
    slices.record(v, move, g, c)
    sums = slices.slice_sums(v, move, static.precondition, point)
    sums.update(extra)
    sums["blocks"] = per_block
    return UserBlockState(state.block, state.start, state.size, v, piece, sums)


@dataclass
class _StateChunk:
    """A range of a user block's state vectors, as Spark caches it: many records of about
    :data:`CHUNK_VALUES` values each read several times faster from Spark's cache into a
    Python worker than one large record."""

    part: int
    start: int
    size: int
    vecs: dict[str, np.ndarray]


@dataclass
class _BlockOutput:
    """A user block's partial item vector and sums of one evaluation (for the reduce)."""

    piece: np.ndarray
    sums: dict


#: values of each state vector per cached record (1 MiB of float64)
CHUNK_VALUES = 131_072


def _to_records(state: UserBlockState) -> Iterator:
    """The cached records of a user block's state: its outputs first, then its chunks."""
    b = state.block
    if state.piece is not None:
        yield b, _BlockOutput(state.piece, state.sums)
    length = len(state.vecs["w"])
    for part, lo in enumerate(range(0, max(length, 1), CHUNK_VALUES)):
        hi = lo + CHUNK_VALUES
        vecs = {name: vec[lo:hi] for name, vec in state.vecs.items()}
        yield b, _StateChunk(part, state.start, state.size, vecs)


def _from_chunks(b: int, chunks: list[_StateChunk]) -> UserBlockState:
    chunks.sort(key=lambda c: c.part)
    first = chunks[0]
    vecs = {
        name: np.concatenate([c.vecs[name] for c in chunks]) if len(chunks) > 1 else vec.copy()
        for name, vec in first.vecs.items()
    }
    return UserBlockState(b, first.start, first.size, vecs)


@dataclass
class _RatingsChunk:
    """A range of one block's ratings, as Spark caches them for this path (in chunks, like
    the states: :class:`_StateChunk`)."""

    part: int
    payload: kernel.BlockPayload


def _payload_chunks(p: kernel.BlockPayload, item_blocks: int) -> Iterator:
    b = p.block_id // item_blocks
    n = len(p.y)
    for part, lo in enumerate(range(0, max(n, 1), CHUNK_VALUES)):
        hi = lo + CHUNK_VALUES
        yield (
            b,
            _RatingsChunk(
                part,
                kernel.BlockPayload(
                    p.key,
                    p.block_id,
                    p.user_start,
                    p.num_users,
                    p.item_start,
                    p.num_items,
                    p.users[lo:hi],
                    p.items[lo:hi],
                    p.y[lo:hi],
                    p.is_val[lo:hi],
                ),
            ),
        )


def _blocks_of(chunks: list[_RatingsChunk]) -> list[kernel.Block]:
    """A user block's ratings blocks (in block order) from their cached chunks."""
    by_block: dict[int, list[_RatingsChunk]] = {}
    for c in chunks:
        by_block.setdefault(c.payload.block_id, []).append(c)
    out = []
    for bid in sorted(by_block):
        parts = [c.payload for c in sorted(by_block[bid], key=lambda c: c.part)]
        p = parts[0]
        out.append(
            kernel.Block(
                kernel.BlockPayload(
                    p.key,
                    bid,
                    p.user_start,
                    p.num_users,
                    p.item_start,
                    p.num_items,
                    np.concatenate([q.users for q in parts]),
                    np.concatenate([q.items for q in parts]),
                    np.concatenate([q.y for q in parts]),
                    np.concatenate([q.is_val for q in parts]),
                )
            )
        )
    return out


def _states(records: Iterator, ratings: dict | None = None) -> dict[int, UserBlockState]:
    """The user blocks' states in these records (their ratings' blocks go to ``ratings``;
    the outputs of the evaluation that made the states are dropped)."""
    chunks: dict[int, list[_StateChunk]] = {}
    rating_chunks: dict[int, list[_RatingsChunk]] = {}
    for key, value in records:
        if isinstance(value, _StateChunk):
            chunks.setdefault(key, []).append(value)
        elif isinstance(value, _RatingsChunk):
            rating_chunks.setdefault(key, []).append(value)
    if ratings is not None:
        for b, parts in rating_chunks.items():
            ratings[b] = _blocks_of(parts)
    return {b: _from_chunks(b, c) for b, c in chunks.items()}


def _step_partition(records: Iterator, bc, static: _Static) -> Iterator:
    """The tasks' body: ratings and states of this partition's user blocks, matched."""
    ratings: dict[int, list] = {}
    states = _states(records, ratings)
    step = bc.value
    for b in sorted(states):
        yield from _to_records(_advance(states[b], ratings.get(b, []), step, static))


def _pieces(record, chunks: np.ndarray) -> Iterator:
    """A block's partial item vector cut into chunks, and its sums, keyed for the reduce."""
    b, value = record
    if not isinstance(value, _BlockOutput):
        return
    for c in range(len(chunks) - 1):
        yield c, (b, value.piece[chunks[c] : chunks[c + 1]])
    yield 0, (b, value.sums)


def _reduce_chunk(records: Iterator) -> Iterator:
    """Sum each chunk's pieces in user-block order (from zeros, as the driver's path
    does); pass the sums through."""
    pieces: dict[int, list] = {}
    sums = []
    for c, (b, value) in records:
        if isinstance(value, dict):
            sums.append((b, value))
        else:
            pieces.setdefault(c, []).append((b, value))
    for c, parts in sorted(pieces.items()):
        parts.sort(key=lambda p: p[0])
        total = np.zeros_like(parts[0][1])
        for _, piece in parts:
            total += piece
        yield "piece", c, total
    for b, s in sums:
        yield "sums", b, s


def _gather(records: Iterator, names: tuple[str, ...], commit: slices.Move | None) -> Iterator:
    for b, s in _states(records).items():
        v = s.vecs
        if commit is not None:
            slices.apply_move(v, commit, "none")
        yield b, {n: v[n] for n in names if n in v}


class PartitionedObjective:
    """The user slices on the executors and the item slice on the driver; one Spark job
    per evaluation (see the module docstring)."""

    def __init__(
        self,
        blocks: BlockedRatings,
        layout: Layout,
        reg: float,
        cost: CostSpec = RATINGS_COST,
        *,
        curvature: bool = False,
        precondition: str = "none",
    ) -> None:
        blocks.check(layout, cost)
        self.blocks = blocks
        self.layout = layout
        self.reg = float(reg)
        self.cost = cost
        self.curvature = curvature
        self.precondition = precondition
        self.sc = blocks.sc
        k = layout.rank
        ni = layout.num_items
        self.item_flat = ni * k + (ni if layout.biases else 0)
        self.static = _Static(
            k, layout.biases, cost, curvature, self.reg, precondition, self.item_flat
        )
        self.user_starts = range_starts(layout.num_users, blocks.user_blocks)
        self.partitions = max(1, min(blocks.user_blocks, 2 * self.sc.defaultParallelism))
        piece_len = self.item_flat * (2 if curvature else 1)
        self.chunks = range_starts(piece_len, max(1, min(self.partitions, piece_len)))
        item_blocks = blocks.item_blocks
        # one cached copy per set of blocks, shared by every fit over them (the models of
        # model.reg = "auto" train side by side)
        key = ("ratings by user block", self.partitions)
        with _DERIVED:
            if key not in blocks.derived:
                rdd = (
                    blocks.rdd.flatMap(lambda p: _payload_chunks(p, item_blocks))
                    .partitionBy(self.partitions)
                    .persist(StorageLevel.MEMORY_AND_DISK)
                )
                rdd.setName(f"spark-cf ratings by user block ({blocks.user_blocks})")
                blocks.derived[key] = rdd
            self.ratings = blocks.derived[key]
        if not self.sc.getCheckpointDir():
            log.info(
                "user side on the executors without spark.checkpoint.dir: the states' "
                "lineage is cut with localCheckpoint, which a lost executor does not "
                "survive; set spark.checkpoint.dir (a folder every executor can reach) on "
                "a cluster"
            )
        self.item: dict[str, np.ndarray] = {}
        self.state = None
        self._pending: list = []  # broadcasts the cached states' lineage still needs
        self._evaluations = 0
        #: bytes that reached the driver (chunks and sums) and that were broadcast, by the
        #: last evaluation
        self.last_bytes = {"to_driver": 0, "broadcast": 0}

    # -------------------------------------------------------------- moving vectors

    def _item_part(self, full: np.ndarray) -> np.ndarray:
        L = self.layout
        parts = [L.X(full).ravel()]
        if L.biases:
            parts.append(L.item_bias(full))
        return np.concatenate(parts)

    def _user_part(self, full: np.ndarray, b: int) -> np.ndarray:
        L = self.layout
        u0, u1 = int(self.user_starts[b]), int(self.user_starts[b + 1])
        parts = [L.Theta(full)[u0:u1].ravel()]
        if L.biases:
            parts.append(L.user_bias(full)[u0:u1])
        return np.concatenate(parts)

    def start(self, vectors: dict[str, np.ndarray], counts: bool = False) -> None:
        """Scatter full-length vectors (``w`` and the optimiser's state, laid out like
        :class:`~spark_cf.training.params.Layout`) into the slices. The only time the
        user side travels from the driver."""
        self._release_state()
        L = self.layout
        self.item = {name: self._item_part(vec) for name, vec in vectors.items()}
        records = []
        for b in range(self.blocks.user_blocks):
            u0, u1 = int(self.user_starts[b]), int(self.user_starts[b + 1])
            vecs = {name: self._user_part(vec, b) for name, vec in vectors.items()}
            records.append(UserBlockState(b, u0, u1 - u0, vecs))
        if counts:
            from spark_cf.training.params import row_preconditioner

            D = row_preconditioner(L, self.blocks.item_counts, self.blocks.user_counts)
            self.item["D"] = self._item_part(D)
            for st in records:
                st.vecs["D"] = self._user_part(D, st.block)
        self.state = (
            self.sc.parallelize([r for st in records for r in _to_records(st)], self.partitions)
            .partitionBy(self.partitions)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )

    def evaluate(self, move: slices.Move) -> Evaluation:
        """One evaluation after ``move`` (see the module docstring)."""
        L = self.layout
        k, biased = L.rank, L.biases
        v = self.item
        point = slices.apply_move(v, move, self.precondition)
        ni = L.num_items
        X, bi = _split_rows(point, ni, k, biased)
        gram_x = user_row = None
        if self.cost.ranking:
            gram_x = gramian(augmented_items(X, bi))
            if self.curvature:
                user_row = np.einsum("ik,ik->k", X, X, optimize=False)
                if biased:
                    user_row = np.append(user_row, float(ni))
        step = _Step(move, X, bi, gram_x, user_row)
        bc = self.sc.broadcast(step)
        static = self.static
        previous = self.state
        new_state = (
            self.ratings.union(previous)
            .mapPartitions(lambda it: _step_partition(it, bc, static), preservesPartitioning=True)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        self._evaluations += 1
        cut = self._evaluations % LINEAGE_CHECKPOINT_EVERY == 0
        if cut:
            if self.sc.getCheckpointDir():
                new_state.checkpoint()
            else:
                new_state.localCheckpoint()
        chunks = self.chunks
        outputs = new_state.flatMap(lambda r: _pieces(r, chunks))
        if self.blocks.user_blocks == 1:  # one block: its piece is the sum, no shuffle
            results = outputs.mapPartitions(_reduce_chunk).collect()
        else:
            results = (
                outputs.partitionBy(len(chunks) - 1, lambda c: c)
                .mapPartitions(_reduce_chunk)
                .collect()
            )
        self._pending.append(bc)
        self.state = new_state
        previous.unpersist()
        if cut:  # the new states no longer need the older broadcasts (their own, which
            # their tasks still carry, stays until the next cut)
            for old in self._pending[:-1]:
                old.destroy()
            self._pending = self._pending[-1:]
        pieces = sorted((c, arr) for kind, c, arr in results if kind == "piece")
        user_sums = sorted((b, s) for kind, b, s in results if kind == "sums")
        if len(user_sums) != self.blocks.user_blocks:
            raise RuntimeError(f"{len(user_sums)} of {self.blocks.user_blocks} user blocks")
        total = np.concatenate([arr for _, arr in pieces])
        self.last_bytes = {
            "to_driver": int(total.nbytes) + sum(_sums_bytes(s) for _, s in user_sums),
            "broadcast": int(X.nbytes + (bi.nbytes if bi is not None else 0)),
        }
        return self._finish(move, point, total, [s for _, s in user_sums])

    def _finish(self, move, point, total, user_sums) -> Evaluation:
        """The item side's gradient, the totals and the cost (step 4)."""
        L = self.layout
        k, biased, ni = L.rank, L.biases, L.num_items
        v = self.item
        g = total[: self.item_flat].copy()
        c = total[self.item_flat :].copy() if self.curvature else None
        rows = sorted(r for s in user_sums for r in s["blocks"])
        loss = sse = val_sse = 0.0
        count = val_count = 0
        for _, r_loss, r_sse, r_count, r_val_sse, r_val_count in rows:
            loss += r_loss
            sse += r_sse
            count += r_count
            val_sse += r_val_sse
            val_count += r_val_count
        cost = 0.5 * loss
        if self.cost.ranking:
            X, bi = _split_rows(point, ni, k, biased)
            gram_theta = user_sums[0]["gram_theta"].copy()
            for s in user_sums[1:]:
                gram_theta += s["gram_theta"]
            Xa = augmented_items(X, bi)
            G_X = gramian(Xa)
            dXa = np.einsum("ik,kl->il", Xa, gram_theta, optimize=False)
            cost += 0.5 * float(np.sum(G_X * gram_theta))
            dX, dbi = _split_rows(g, ni, k, biased)
            dX += dXa[:, :k]
            if biased:
                dbi += dXa[:, k]
            if c is not None:
                item_row = user_sums[0]["item_row"].copy()
                for s in user_sums[1:]:
                    item_row += s["item_row"]
                cX, cbi = _split_rows(c, ni, k, biased)
                cX += item_row[:k]
                if biased:
                    cbi += item_row[k]
        g += self.reg * point
        if c is not None:
            c += self.reg
        slices.record(v, move, g, c)
        sums = slices.slice_sums(v, move, self.precondition, point)
        for s in user_sums:
            sums = slices.add_sums(sums, {key: s[key] for key in sums})
        cost += 0.5 * self.reg * sums["ww"]
        return Evaluation(
            cost,
            np.zeros(0),
            sse,
            count,
            val_sse,
            val_count,
            grad_norm_sq=float(sums["gg"]),
            finite=bool(sums["finite"]),
            sums=sums,
        )

    def gather(self, names: tuple[str, ...], commit: slices.Move | None = None) -> dict:
        """Full-length vectors ``names`` (laid out like ``w``), from the item slice and
        every user slice; ``commit``: as they will be once the pending commit is applied.
        Only for checkpoints and the final model."""
        L = self.layout
        item = dict(self.item)
        if commit is not None:
            slices.apply_move(item, commit, "none")
        users = dict(self.state.mapPartitions(lambda it: _gather(it, names, commit)).collect())
        out = {}
        for name in names:
            if name not in item:
                continue
            full = np.zeros(L.size)
            X, bi = _split_rows(item[name], L.num_items, L.rank, L.biases)
            L.X(full)[:] = X
            if L.biases:
                L.item_bias(full)[:] = bi
            for b, vecs in users.items():
                u0, u1 = int(self.user_starts[b]), int(self.user_starts[b + 1])
                T, bu = _split_rows(vecs[name], u1 - u0, L.rank, L.biases)
                L.Theta(full)[u0:u1] = T
                if L.biases:
                    L.user_bias(full)[u0:u1] = bu
            out[name] = full
        return out

    def _release_state(self) -> None:
        if self.state is not None:
            self.state.unpersist()
            self.state = None
        for bc in self._pending:
            bc.destroy()
        self._pending = []

    def close(self) -> None:
        """Drop the cached states and broadcasts (the ratings go with the blocks:
        :meth:`~spark_cf.training.blocks.BlockedRatings.unpersist`)."""
        self._release_state()


def _sums_bytes(sums: dict) -> int:
    """About how many bytes a block's sums take (arrays, numbers, per-block rows)."""
    n = 0
    for value in sums.values():
        if isinstance(value, np.ndarray):
            n += value.nbytes
        elif isinstance(value, list):
            n += 48 * len(value)
        else:
            n += 8
    return n


class PartitionedPoint:
    """A handle on parameters kept on the executors: gathered only when asked."""

    def __init__(self, optimizer: PartitionedOptimizer, finite: bool = True) -> None:
        self.optimizer = optimizer
        self.finite = finite

    def all_finite(self) -> bool:
        return self.finite

    def to_array(self) -> np.ndarray:
        return self.optimizer.current_w()


class PartitionedOptimizer(Optimizer):
    """An optimiser whose vectors live in a :class:`PartitionedObjective`'s slices; the
    training loop (:func:`spark_cf.training.loop.minimize`) drives it as any other. Its
    ``objective`` starts (or resumes) from a full-length vector and evaluates there."""

    def __init__(
        self, name: str, settings: OptimizerSettings, engine: PartitionedObjective
    ) -> None:
        if name != LBFGS.name and name not in ELEMENTWISE_RULES:
            raise ValueError(
                f"unknown optimizer {name!r}; use one of {', '.join([*ELEMENTWISE_RULES, 'lbfgs'])}"
            )
        super().__init__(settings, engine.layout.size)
        self.name = name
        self.engine = engine
        self.lbfgs = name == LBFGS.name
        self.monotone = name in ("gd", "lbfgs")
        self.needs_curvature = engine.curvature
        self.t = 0
        self.velocity_names = () if self.lbfgs else ELEMENTWISE_RULES[name][1]
        self.plan = (
            slices.CompactLBFGS(settings.lbfgs_memory, settings.lbfgs_precondition)
            if self.lbfgs
            else None
        )
        self._loaded: dict | None = None
        self._pending_commit: slices.Move | None = None
        self._renamed: dict[str, str] = {}

    # the objective the loop calls at the start (and on resume)
    def objective(self, w) -> Evaluation:
        if not isinstance(w, np.ndarray):
            raise TypeError("the partitioned objective starts from a full parameter vector")
        vectors = {"w": np.asarray(w, dtype=np.float64)}
        resume = self._loaded is not None
        if self.lbfgs:
            if resume:
                st = self._loaded
                for slot in range(self.plan.memory):
                    vectors[f"s{slot}"] = st["s"][slot]
                    vectors[f"y{slot}"] = st["y"][slot]
            u_names, w_names = self.plan.names(pair=False, resume=resume)
        else:
            for name in self.velocity_names:
                vectors[name] = (
                    np.asarray(self._loaded[name], dtype=np.float64)
                    if resume
                    else np.zeros(self.size)
                )
            u_names = w_names = ()
        self.engine.start(vectors, counts=self.lbfgs and self.plan.precondition == "counts")
        self._loaded = None
        move = slices.Move("stay", lbfgs=self.lbfgs, u_names=u_names, w_names=w_names)
        ev = self.engine.evaluate(move)
        if self.lbfgs:
            if resume:
                self.plan.learn_pairs(ev.sums["U"], u_names)
            self._pending_commit = slices.Move("lbfgs", lbfgs=True, commit=True)
            self._renamed = {}
            self._last = (u_names, w_names)
        return ev

    def step(self, w, ev, f):
        if not self.lbfgs:
            self.t += 1
            move = slices.Move("rule", rule=self.name, settings=self.settings, t=self.t)
            new_ev = self._eval(self.engine.evaluate, move)
            return PartitionedPoint(self, new_ev.is_finite()), new_ev
        plan = self.plan
        u_names, w_names = self._last
        direction, slope, alpha = plan.plan(
            ev.sums["U"], u_names, ev.sums["W"], w_names, self._renamed
        )
        nu, nw = plan.names(pair=True)
        commit = self._pending_commit
        move = slices.Move(
            "lbfgs",
            lbfgs=True,
            commit=commit is not None,
            store=commit.store if commit is not None else -1,
            direction=direction,
            alpha=alpha,
            u_names=nu,
            w_names=nw,
        )
        self._pending_commit = None
        new_ev = None
        for _ in range(LBFGS.max_line_search):
            new_ev = self._eval(self.engine.evaluate, move)
            if armijo(new_ev, ev.cost, alpha, slope):
                break
            alpha = next_alpha(alpha, slope, ev.cost, new_ev.cost)
            move = slices.Move("lbfgs", lbfgs=True, alpha=alpha, u_names=nu, w_names=nw)
        else:
            # no sufficient decrease: stay at the current point (the trial is dropped)
            self.stalled = True
            self._last = (u_names, w_names)
            return PartitionedPoint(self, True), ev
        U = new_ev.sums["U"]
        at = {n: i for i, n in enumerate(nu)}
        keep = keep_pair(new_ev, float(U[at["snew"], at["ynew"]]), float(U[at["snew"], at["snew"]]))
        slot = plan.accept(U, nu, keep)
        self._pending_commit = slices.Move("lbfgs", lbfgs=True, commit=True, store=slot)
        self._renamed = {"snew": f"s{slot}", "ynew": f"y{slot}"} if slot >= 0 else {}
        self._last = (nu, nw)
        return PartitionedPoint(self, new_ev.is_finite()), new_ev

    def _eval(self, f, w):
        self.evaluations += 1
        return f(w)

    def current_w(self) -> np.ndarray:
        return self.engine.gather(("w",), self._commit_only())["w"]

    def _commit_only(self) -> slices.Move | None:
        c = self._pending_commit
        if c is None:
            return None
        return slices.Move(
            "lbfgs",
            lbfgs=True,
            commit=True,
            store=c.store,
            alpha=0.0,
            direction=slices.Direction(scaled=False),
        )

    def state_dict(self):
        state = super().state_dict()
        if self.lbfgs:
            m = self.plan.memory
            names = tuple(f"{p}{i}" for i in range(m) for p in "sy")
            full = self.engine.gather(names, self._commit_only())
            state.update(
                s=np.stack([full.get(f"s{i}", np.zeros(self.size)) for i in range(m)]),
                y=np.stack([full.get(f"y{i}", np.zeros(self.size)) for i in range(m)]),
                rho=self.plan.rho.copy(),
                stored=self.plan.stored,
                head=self.plan.head,
            )
        else:
            full = self.engine.gather(self.velocity_names)
            state.update({n: full[n] for n in self.velocity_names})
            if self.name == "adam":
                state["t"] = self.t
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._loaded = dict(state)
        if self.lbfgs:
            self.plan.rho = np.array(state["rho"], dtype=np.float64)
            self.plan.stored = int(state["stored"])
            self.plan.head = int(state["head"])
        elif self.name == "adam":
            self.t = int(state["t"])
