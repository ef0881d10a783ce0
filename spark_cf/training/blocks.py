"""The Spark side of training: ratings cached as NumPy blocks, one Spark job per evaluation.

Users are cut into ``num_user_blocks`` contiguous index ranges and items into
``num_item_blocks``; block ``(b_u, b_i)`` holds the ratings of users in range ``b_u`` on items
in range ``b_i`` as compact NumPy arrays (built once, cached by Spark). An evaluation of
the objective at ``w``:

1. broadcasts ``w`` (X, Theta and the biases, one float64 vector);
2. runs the per-block kernel (:func:`spark_cf.training.kernel.block_gradients`) on every block. A
   Python worker keeps each block it has prepared, and the job's tasks carry only block
   ids; the blocks a worker has not seen yet (the first evaluation, a new or restarted
   worker) are then evaluated by a second job over Spark's cached blocks, which ships
   just those partitions (``SparkContext.runJob``). Which worker computes a block does
   not change the result;
3. collects the partial sums and adds them on the driver *in block order*, so the result
   does not depend on which task finished first or how many cores there are;
4. adds the regularisation (and, for the ranking objective, the term over all pairs from
   the two Gramians, augmented with the biases when the model has them:
   :func:`spark_cf.training.objective.all_pairs_term`), destroys
   the broadcast and returns an :class:`~spark_cf.training.optimizers.Evaluation`.

No lineage grows across iterations: each job reads the same cached RDD.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_cf.model.normalization import Normalization
from spark_cf.schema import IS_VAL, ITEM_IDX, RATING, USER_IDX
from spark_cf.training import kernel
from spark_cf.training.objective import (
    RATINGS_COST,
    CostSpec,
    add_rows_curvature,
    all_pairs_curvature,
    all_pairs_term,
)
from spark_cf.training.optimizers import Evaluation
from spark_cf.training.params import Layout

log = logging.getLogger(__name__)

#: ratings per user block when the number of blocks is chosen automatically
AUTO_RATINGS_PER_BLOCK = 1_000_000
AUTO_MAX_BLOCKS = 16


def choose_blocks(
    num_ratings: int, num_user_blocks: int, num_item_blocks: int, cores: int
) -> tuple[int, int]:
    """The block grid: the configured numbers, or for 0 one chosen from the data and cores.

    Automatic: at least one user block per core (so every core works), and more for
    large inputs (about one million ratings per block, at most 16); one item block.
    Different grids sum the partial gradients in a different order, so results agree to
    rounding (about 1e-12) but not to the bit: set the numbers explicitly to get
    bit-identical models on machines with different core counts.
    """
    users = num_user_blocks or max(
        1, min(AUTO_MAX_BLOCKS, max(cores, math.ceil(num_ratings / AUTO_RATINGS_PER_BLOCK)))
    )
    items = num_item_blocks or 1
    return users, items


def range_starts(size: int, blocks: int) -> np.ndarray:
    """Start of each of ``blocks`` near-equal contiguous ranges over ``size`` (and the end).

    Element ``u`` falls in block ``u * blocks // size``.
    """
    return np.array([-(-b * size // blocks) for b in range(blocks + 1)], dtype=np.int64)


def _payload_rows(
    batches: Iterator,
    *,
    num_users: int,
    num_items: int,
    user_blocks: int,
    item_blocks: int,
    offsets: np.ndarray,
) -> Iterator:
    """mapInArrow body: Arrow batches of ratings to one row per (block, batch) with the
    block's local indices and normalised ratings as raw bytes."""
    import pyarrow as pa

    u_starts = range_starts(num_users, user_blocks)
    i_starts = range_starts(num_items, item_blocks)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        users = batch.column(USER_IDX).to_numpy().astype(np.int64)
        items = batch.column(ITEM_IDX).to_numpy().astype(np.int64)
        y = batch.column(RATING).to_numpy().astype(np.float64) - offsets[items]
        val = batch.column(IS_VAL).to_numpy(zero_copy_only=False).astype(bool)
        ub = users * user_blocks // num_users
        ib = items * item_blocks // num_items
        block = ub * item_blocks + ib
        order = np.argsort(block, kind="stable")
        block_sorted = block[order]
        ids, starts = np.unique(block_sorted, return_index=True)
        ends = np.append(starts[1:], len(order))
        out_ids, out_u, out_i, out_y, out_v = [], [], [], [], []
        for bid, s, e in zip(ids, starts, ends):
            sel = order[s:e]
            b_u, b_i = divmod(int(bid), item_blocks)
            out_ids.append(int(bid))
            out_u.append((users[sel] - u_starts[b_u]).astype(np.int32).tobytes())
            out_i.append((items[sel] - i_starts[b_i]).astype(np.int32).tobytes())
            out_y.append(y[sel].tobytes())
            out_v.append(val[sel].tobytes())
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(out_ids, pa.int32()),
                pa.array(out_u, pa.binary()),
                pa.array(out_i, pa.binary()),
                pa.array(out_y, pa.binary()),
                pa.array(out_v, pa.binary()),
            ],
            names=["block", "users", "items", "y", "val"],
        )


def _assemble(
    chunks: Iterator,
    *,
    key: str,
    num_users: int,
    num_items: int,
    user_blocks: int,
    item_blocks: int,
) -> Iterator:
    """Concatenate a block's chunks into one payload tuple, ratings sorted by (item, user),
    or by (user, item) when the block spans more users than items (:func:`rating_order`)."""
    u_starts = range_starts(num_users, user_blocks)
    i_starts = range_starts(num_items, item_blocks)
    grouped: dict[int, list] = {}
    for bid, parts in chunks:
        grouped.setdefault(bid, []).append(parts)
    for bid in sorted(grouped):
        parts = grouped[bid]
        users = np.concatenate([np.frombuffer(p[0], dtype=np.int32) for p in parts])
        items = np.concatenate([np.frombuffer(p[1], dtype=np.int32) for p in parts])
        y = np.concatenate([np.frombuffer(p[2], dtype=np.float64) for p in parts])
        val = np.concatenate([np.frombuffer(p[3], dtype=bool) for p in parts])
        b_u, b_i = divmod(bid, item_blocks)
        order = rating_order(
            users, items, u_starts[b_u + 1] - u_starts[b_u], i_starts[b_i + 1] - i_starts[b_i]
        )
        yield kernel.BlockPayload(
            key=key,
            block_id=bid,
            user_start=int(u_starts[b_u]),
            num_users=int(u_starts[b_u + 1] - u_starts[b_u]),
            item_start=int(i_starts[b_i]),
            num_items=int(i_starts[b_i + 1] - i_starts[b_i]),
            users=users[order],
            items=items[order],
            y=y[order],
            is_val=val[order],
        )


def rating_order(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int):
    """The order of a block's ratings for the kernel: grouped by the larger of its two
    ranges, so that the larger factor table is read and written in order and only the
    smaller one (which stays in the CPU's cache) at random. With 250,000 users and 20,000
    items in a block of 1M ratings, rank 10, the kernel takes 0.13 s grouped by user
    against 0.25 s grouped by item. The order fixes the summation order: it depends only
    on the block grid, so results stay the same bits whatever the cores."""
    if num_users > num_items:
        return np.lexsort((items, users))
    return np.lexsort((users, items))


def _block_summary(p: kernel.BlockPayload) -> tuple:
    train = ~p.is_val
    return (
        p.block_id,
        len(p.y),
        int(p.is_val.sum()),
        float(np.sum(p.y)),
        (p.user_start, np.bincount(p.users[train], minlength=p.num_users)),
        (p.item_start, np.bincount(p.items[train], minlength=p.num_items)),
    )


class BlockedRatings:
    """The training ratings cached in Spark as NumPy blocks, and the objective over them.

    The blocks hold each rating minus ``normalization``'s offset for its item; the offsets
    subtracted are kept as ``offsets`` (the ranking objective needs raw values: zeros).
    """

    def __init__(
        self,
        data: DataFrame,
        *,
        num_users: int,
        num_items: int,
        normalization: Normalization,
        user_blocks: int,
        item_blocks: int,
    ) -> None:
        self.num_users = num_users
        self.num_items = num_items
        self.user_blocks = user_blocks
        self.item_blocks = item_blocks
        self.num_blocks = user_blocks * item_blocks
        self.key = uuid.uuid4().hex
        spark = data.sparkSession
        self.sc = spark.sparkContext
        offsets = normalization.table()  # the normalisation's rule, subtracted once
        #: what was subtracted from each item's ratings (num_items)
        self.offsets = np.array(offsets, dtype=np.float64, copy=True)
        sizes = dict(
            num_users=num_users,
            num_items=num_items,
            user_blocks=user_blocks,
            item_blocks=item_blocks,
        )

        def to_payload(batches):
            return _payload_rows(batches, offsets=offsets, **sizes)

        schema = "block int, users binary, items binary, y binary, val binary"
        chunks = (
            data.select(F.col(USER_IDX).cast("int"), F.col(ITEM_IDX).cast("int"), RATING, IS_VAL)
            .mapInArrow(to_payload, schema)
            .rdd.map(lambda r: (r["block"], (r["users"], r["items"], r["y"], r["val"])))
        )
        partitions = min(self.num_blocks, max(self.sc.defaultParallelism, 1) * 2)
        key = self.key
        self.rdd = (
            chunks.partitionBy(partitions, lambda bid: bid)
            .mapPartitions(lambda it: _assemble(it, key=key, **sizes), preservesPartitioning=True)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        self.rdd.setName(f"spark-cf blocks {user_blocks}x{item_blocks}")
        summary = self.rdd.map(_block_summary).collect()
        # training ratings per user and per item (L-BFGS's preconditioner)
        self.user_counts = np.zeros(num_users, dtype=np.int64)
        self.item_counts = np.zeros(num_items, dtype=np.int64)
        for _, _, _, _, (u0, users), (i0, items) in summary:
            self.user_counts[u0 : u0 + len(users)] += users
            self.item_counts[i0 : i0 + len(items)] += items
        summary = [row[:4] for row in summary]
        self.block_sizes = {bid: n for bid, n, _, _ in summary}
        self.partitions = partitions
        #: cached RDDs other training paths derive from the blocks (the ratings by user
        #: block of :mod:`spark_cf.training.partitioned`), shared by the fits over these
        #: blocks and dropped with them
        self.derived: dict[object, object] = {}
        # The per-evaluation job runs over the block ids (a few bytes), one task per core,
        # and finds the blocks in its Python worker; see SparkObjective.evaluate_many.
        tasks = max(1, min(len(self.block_sizes), self.sc.defaultParallelism))
        ids = [sorted(self.block_sizes)[t::tasks] for t in range(tasks)]
        self.ids_rdd = self.sc.parallelize(ids, tasks)
        self.num_ratings = sum(n for _, n, _, _ in summary)
        self.num_val = sum(v for _, _, v, _ in summary)
        self.checksum = math.fsum(s for _, _, _, s in summary)
        log.info(
            "cached %d ratings in %d blocks (%dx%d) over %d partitions",
            self.num_ratings,
            len(summary),
            user_blocks,
            item_blocks,
            partitions,
        )

    def objective(
        self,
        layout: Layout,
        reg: float,
        cost: CostSpec = RATINGS_COST,
        *,
        curvature: bool = False,
    ):
        """``f(w) -> Evaluation``: one Spark job over the cached blocks. ``cost`` chooses
        the objective (and the ranking one's ``alpha``): one set of blocks serves several.
        ``curvature``: each evaluation also returns the diagonal of the Gauss-Newton
        curvature (``Evaluation.curvature``; L-BFGS's preconditioner)."""
        return SparkObjective(self, layout, reg, cost, curvature=curvature)

    def check(self, layout: Layout, cost: CostSpec) -> None:
        """Refuse a model ``layout`` of other sizes, or the ranking objective on blocks that
        subtracted a normalisation (``ValueError``)."""
        if (layout.num_users, layout.num_items) != (self.num_users, self.num_items):
            raise ValueError("layout sizes differ from the blocked ratings")
        if cost.ranking and self.offsets.any():
            raise ValueError(
                "blocks: the ranking objective needs the raw values, but these blocks "
                "subtracted a normalisation; build them with "
                "Normalization(np.zeros(num_items), 0.0)"
            )

    def unpersist(self) -> None:
        """Drop the cached blocks, and (best effort: the workers this job reaches) the
        workers' prepared copies; the others age out of their LRU (kernel.MAX_CACHED_DATASETS)."""
        key = self.key
        try:
            self.ids_rdd.foreach(lambda _: kernel.forget(key))
        except Exception as exc:  # noqa: BLE001 - freeing memory must not fail a run
            log.warning("could not drop the workers' copies of the blocks: %s", exc)
        for rdd in self.derived.values():
            rdd.unpersist()
        self.derived = {}
        self.rdd.unpersist()


#: Python workers are taken from an idle queue in turn, so with fewer tasks than workers the
#: id-only job can keep landing on a worker that lacks the block the previous fallback job
#: gave another one (seen with one block on local[2]: every evaluation took two jobs). After
#: this many evaluations in a row with a fallback, the blocks are shipped in one job for
#: PAYLOAD_ROUNDS evaluations, then the id-only job is tried again.
MISS_STREAK = 8
PAYLOAD_ROUNDS = 50


class SparkObjective:
    """The objective over :class:`BlockedRatings`; see the module docstring."""

    def __init__(
        self,
        blocks: BlockedRatings,
        layout: Layout,
        reg: float,
        cost: CostSpec = RATINGS_COST,
        *,
        curvature: bool = False,
    ) -> None:
        blocks.check(layout, cost)
        self.blocks = blocks
        self.layout = layout
        self.reg = float(reg)
        self.cost = cost
        self.curvature = curvature
        #: evaluations that had to send some blocks from Spark's cache to a Python worker
        self.payload_jobs = 0
        self._miss_streak = 0
        self._payload_rounds = 0

    def __call__(self, w: np.ndarray) -> Evaluation:
        return self.evaluate_many([w])[0]

    def evaluate_many(
        self, points: Sequence[np.ndarray], regs: Sequence[float | None] | None = None
    ) -> list[Evaluation]:
        """Evaluate several parameter vectors in one Spark job (one pass over the blocks);
        ``regs``: each point's regularisation (None: this objective's)."""
        layout = self.layout
        cost = self.cost
        curv = self.curvature
        blocks = self.blocks
        key = blocks.key
        bc = blocks.sc.broadcast(list(points))

        def from_payloads(payloads):
            return [
                (
                    p.block_id,
                    [kernel.block_gradients_flat(p, w, layout, cost, curv) for w in bc.value],
                )
                for p in payloads
            ]

        try:
            if self._payload_rounds > 0:
                # Recent evaluations kept missing the workers' copies: ship every block,
                # in one job, for a while (see MISS_STREAK).
                self._payload_rounds -= 1
                by_block = dict(blocks.rdd.mapPartitions(from_payloads).collect())
                self.payload_jobs += 1
            else:
                # Fast path: the tasks carry block ids only, and each Python worker
                # evaluates the blocks it has prepared before (kernel.cached_gradients).
                def from_cache(ids):
                    return [
                        (bid, kernel.cached_gradients(key, bid, bc.value, layout, cost, curv))
                        for bid in ids
                    ]

                found = blocks.ids_rdd.flatMap(from_cache).collect()
                by_block = {bid: results for bid, results in found if results is not None}
                missed = sorted({bid % blocks.partitions for bid, res in found if res is None})
                if missed:
                    # The blocks a worker has not seen travel from Spark's cache.
                    by_block.update(blocks.sc.runJob(blocks.rdd, from_payloads, missed))
                    self.payload_jobs += 1
                    self._miss_streak += 1
                    if self._miss_streak >= MISS_STREAK:
                        self._payload_rounds, self._miss_streak = PAYLOAD_ROUNDS, 0
                else:
                    self._miss_streak = 0
        finally:
            bc.destroy()
        per_block = [by_block[bid] for bid in sorted(by_block)]
        if len(per_block) != len(blocks.block_sizes):
            raise RuntimeError(f"{len(per_block)} of {len(blocks.block_sizes)} blocks evaluated")
        regs = list(regs) if regs is not None else [None] * len(points)
        return [
            self._assemble(w, [results[k] for results in per_block], regs[k])
            for k, w in enumerate(points)
        ]

    def _assemble(
        self, w: np.ndarray, results: list[kernel.BlockResult], reg: float | None = None
    ) -> Evaluation:
        """Add the blocks' partial sums in block order, then (ranking objective) the term
        over all pairs, then the regularisation."""
        layout = self.layout
        grad = np.zeros(layout.size)
        dX, dTheta = layout.X(grad), layout.Theta(grad)
        dbi, dbu = layout.item_bias(grad), layout.user_bias(grad)
        curv = np.zeros(layout.size) if self.curvature else None
        loss = sse = val_sse = 0.0
        count = val_count = 0
        for r in results:
            (us, ue), (is_, ie) = self._ranges(r.block_id)
            dX[is_:ie] += r.d_item_factors
            dTheta[us:ue] += r.d_user_factors
            if layout.biases:
                dbi[is_:ie] += r.d_item_bias
                dbu[us:ue] += r.d_user_bias
            if curv is not None:
                layout.X(curv)[is_:ie] += r.c_item_factors
                layout.Theta(curv)[us:ue] += r.c_user_factors
                if layout.biases:
                    layout.item_bias(curv)[is_:ie] += r.c_item_bias
                    layout.user_bias(curv)[us:ue] += r.c_user_bias
            loss += r.loss
            sse += r.sse
            count += r.count
            val_sse += r.val_sse
            val_count += r.val_count
        cost = 0.5 * loss
        if self.cost.ranking:
            biases = (layout.item_bias(w), layout.user_bias(w)) if layout.biases else ()
            pairs_cost, pairs_dX, pairs_dTheta, pairs_dbi, pairs_dbu = all_pairs_term(
                layout.X(w), layout.Theta(w), *biases
            )
            cost += pairs_cost
            dX += pairs_dX
            dTheta += pairs_dTheta
            if layout.biases:
                dbi += pairs_dbi
                dbu += pairs_dbu
            if curv is not None:
                add_rows_curvature(
                    layout, curv, *all_pairs_curvature(layout.X(w), layout.Theta(w), layout.biases)
                )
        reg = self.reg if reg is None else float(reg)
        cost += 0.5 * reg * float(w @ w)
        grad += reg * w
        if curv is not None:
            curv += reg
        return Evaluation(cost, grad, sse, count, val_sse, val_count, curv)

    def _ranges(self, block_id: int) -> tuple[tuple[int, int], tuple[int, int]]:
        b = self.blocks
        b_u, b_i = divmod(block_id, b.item_blocks)
        u = range_starts(b.num_users, b.user_blocks)
        i = range_starts(b.num_items, b.item_blocks)
        return (int(u[b_u]), int(u[b_u + 1])), (int(i[b_i]), int(i[b_i + 1]))
