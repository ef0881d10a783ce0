"""Synthetic explicit ratings with a known low-rank truth (pure NumPy and pyarrow, no Spark).

The generating model, for user ``u`` and item ``i`` (dense indices), is::

    s(u, i)  = x_u . theta_i + b_u + b_i          x, theta ~ N(0, rank**-0.5), so var(x.theta) = 1
                                                  b_u ~ N(0, 0.3**2), b_i ~ N(0, 0.5**2)
    r*(u, i) = centre + scale * s(u, i) / sd(s)   centre = (rating_min + rating_max) / 2
                                                  scale  = (rating_max - rating_min) / 6
    rating   = clip(round_to_step(r* + noise * eps), rating_min, rating_max),   eps ~ N(0, 1)

so ``noise`` is the standard deviation of the Gaussian noise in rating units (stars), and
:meth:`TrueModel.score` returns ``r*``, the noiseless score before rounding and clipping.

Which pairs are rated:

* item ``i`` has popularity weight ``(rank_i + 1) ** -popularity_skew`` where ``rank_i`` is a
  seeded permutation (0 gives uniform popularity); users have activity weights with half the
  skew, ``(rank_u + 1) ** -(popularity_skew / 2)``;
* each user gets a rating count from its activity weight, capped at ``num_items`` and summing
  to exactly ``num_ratings`` (every user gets at least one rating when
  ``num_ratings >= num_users``);
* each user's items are a weighted sample *without replacement* (successive sampling) with
  the popularity weights, so every ``(user, item)`` pair occurs once in the whole output.

Users are processed in ranges of about :data:`RANGE_RATINGS` ratings; a range's random
numbers come from ``SeedSequence(seed, spawn_key=(1, range_id, stream))``, and the ranges are
fixed by the spec alone, so the output is the same row for row whatever ``chunk_size`` is.
Raw ids are ``1000 + a seeded permutation`` of the dense indices (ids never equal indices).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spark_cf.errors import ConfigError

log = logging.getLogger(__name__)

#: Raw id of dense index ``k`` is ``ID_OFFSET + permutation[k]`` (users and items alike).
ID_OFFSET = 1000
#: Target number of ratings per user range (the unit of randomness and of work).
RANGE_RATINGS = 1 << 20
#: Standard deviations of the user and item effects in the latent score.
USER_BIAS_SD = 0.3
ITEM_BIAS_SD = 0.5
#: Timestamps fall in [TIME_START, TIME_END) (2010-01-01 to 2025-01-01, UTC).
TIME_START = 1_262_304_000
TIME_END = 1_735_689_600
#: Mean length of a user's active period, in seconds (about half a year).
MEAN_ACTIVE_SECONDS = 180 * 86_400
#: Rounds of vectorised rejection sampling before the exact per-user fallback.
MAX_SAMPLING_ROUNDS = 6
#: Largest accepted ``popularity_skew`` (above it almost every rating lands on a few items).
MAX_SKEW = 5.0

SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("rating", pa.float64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
    ]
)

# Spawn keys of the independent random streams (never reorder: it changes every data set).
_GLOBAL = 0
_RANGE = 1
_USER_IDS, _ITEM_IDS, _USER_ACTIVITY, _ITEM_POPULARITY, _USER_MODEL, _ITEM_MODEL = range(6)
_SAMPLING, _NOISE, _TIMES = range(3)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; validated on construction.

    Parameters
    ----------
    num_users, num_items : int
        Sizes of the dense index spaces (>= 1).
    num_ratings : int
        Exact number of rows, at most ``num_users * num_items``.
    true_rank : int
        Rank of the true factor matrices (>= 1).
    noise : float
        Standard deviation of the Gaussian noise, in rating units, before rounding (>= 0).
    popularity_skew : float
        Zipf exponent of item popularity (0 = uniform, at most :data:`MAX_SKEW`); user
        activity uses half of it.
    rating_min, rating_max, rating_step : float
        The rating grid ``rating_min, rating_min + rating_step, ..., rating_max``.
    with_timestamp : bool
        Whether to add an int64 ``timestamp`` column (unix seconds).
    seed : int
        Seed of every random stream (>= 0).

    Raises
    ------
    ConfigError
        Naming the field, when a value has the wrong type or is out of range.
    """

    num_users: int = 2000
    num_items: int = 500
    num_ratings: int = 50_000
    true_rank: int = 5
    noise: float = 0.5
    popularity_skew: float = 1.0
    rating_min: float = 0.5
    rating_max: float = 5.0
    rating_step: float = 0.5
    with_timestamp: bool = True
    seed: int = 7

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "num_ratings", "true_rank", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        for name in ("noise", "popularity_skew", "rating_min", "rating_max", "rating_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be finite, got {value!r}")
        if not isinstance(self.with_timestamp, bool):
            raise ConfigError(f"with_timestamp must be true or false, got {self.with_timestamp!r}")
        for name in ("num_users", "num_items", "num_ratings", "true_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        capacity = self.num_users * self.num_items
        if self.num_ratings > capacity:
            raise ConfigError(
                f"num_ratings must be <= num_users * num_items = {capacity} (each pair is rated "
                f"at most once), got {self.num_ratings}: lower num_ratings or raise the sizes"
            )
        if self.noise < 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise}")
        if not 0 <= self.popularity_skew <= MAX_SKEW:
            raise ConfigError(
                f"popularity_skew must be in [0, {MAX_SKEW}], got {self.popularity_skew}"
            )
        if self.rating_min >= self.rating_max:
            raise ConfigError(
                f"rating_min must be < rating_max, got rating_min={self.rating_min} "
                f"and rating_max={self.rating_max}"
            )
        if self.rating_step <= 0:
            raise ConfigError(f"rating_step must be > 0, got {self.rating_step}")
        steps = (self.rating_max - self.rating_min) / self.rating_step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise ConfigError(
                f"rating_step must divide rating_max - rating_min = "
                f"{self.rating_max - self.rating_min}, got {self.rating_step}"
            )

    @property
    def num_steps(self) -> int:
        """Number of grid steps between ``rating_min`` and ``rating_max``."""
        return round((self.rating_max - self.rating_min) / self.rating_step)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the generated tables."""
        return SCHEMA if self.with_timestamp else SCHEMA.remove(SCHEMA.get_field_index("timestamp"))


@dataclass(frozen=True, eq=False)
class TrueModel:
    """The hidden truth behind a :class:`SyntheticSpec` (dense index ``k`` is row ``k``).

    Attributes
    ----------
    user_ids, item_ids : numpy.ndarray
        Raw id of each dense index (int64).
    user_factors, item_factors : numpy.ndarray
        ``(num_users, rank)`` and ``(num_items, rank)`` true factors.
    user_bias, item_bias : numpy.ndarray
        True user and item effects (latent units).
    item_popularity : numpy.ndarray
        Sampling probability of each item (sums to 1).
    user_activity : numpy.ndarray
        Relative activity weight of each user (sums to 1).
    centre, scale, latent_sd : float
        ``score = centre + scale * latent / latent_sd``.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    item_popularity: np.ndarray
    user_activity: np.ndarray
    centre: float
    scale: float
    latent_sd: float

    def user_index(self, user_id: np.ndarray) -> np.ndarray:
        """Dense indices of raw user ids."""
        return _inverse(self.user_ids)[np.asarray(user_id, dtype=np.int64) - ID_OFFSET]

    def item_index(self, item_id: np.ndarray) -> np.ndarray:
        """Dense indices of raw item ids."""
        return _inverse(self.item_ids)[np.asarray(item_id, dtype=np.int64) - ID_OFFSET]

    def score_dense(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Noiseless score ``r*`` (rating scale, not rounded or clipped) of dense index pairs."""
        latent = np.einsum("ij,ij->i", self.user_factors[users], self.item_factors[items])
        latent += self.user_bias[users] + self.item_bias[items]
        return self.centre + self.scale * latent / self.latent_sd

    def score(self, user_id: np.ndarray, item_id: np.ndarray) -> np.ndarray:
        """Noiseless score ``r*`` of raw ``(user_id, item_id)`` pairs."""
        return self.score_dense(self.user_index(user_id), self.item_index(item_id))


def _inverse(ids: np.ndarray) -> np.ndarray:
    inverse = np.empty(ids.size, dtype=np.int64)
    inverse[ids - ID_OFFSET] = np.arange(ids.size, dtype=np.int64)
    return inverse


def _rng(spec: SyntheticSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=key))


def true_model(spec: SyntheticSpec) -> TrueModel:
    """The true factors, effects, popularity and id maps of ``spec`` (depends on the seed).

    Parameters
    ----------
    spec : SyntheticSpec
        What to generate.

    Returns
    -------
    TrueModel
        The same truth :func:`generate_chunks` samples from.
    """
    nu, ni, rank = spec.num_users, spec.num_items, spec.true_rank
    user_ids = ID_OFFSET + _rng(spec, _GLOBAL, _USER_IDS).permutation(nu).astype(np.int64)
    item_ids = ID_OFFSET + _rng(spec, _GLOBAL, _ITEM_IDS).permutation(ni).astype(np.int64)
    user_rank = _rng(spec, _GLOBAL, _USER_ACTIVITY).permutation(nu)
    activity = (user_rank + 1.0) ** -(spec.popularity_skew / 2.0)
    item_rank = _rng(spec, _GLOBAL, _ITEM_POPULARITY).permutation(ni)
    popularity = (item_rank + 1.0) ** -spec.popularity_skew
    factor_sd = rank**-0.25  # var(x . theta) = rank * factor_sd**4 = 1
    rng_u = _rng(spec, _GLOBAL, _USER_MODEL)
    user_factors = rng_u.normal(0.0, factor_sd, size=(nu, rank))
    user_bias = rng_u.normal(0.0, USER_BIAS_SD, size=nu)
    rng_i = _rng(spec, _GLOBAL, _ITEM_MODEL)
    item_factors = rng_i.normal(0.0, factor_sd, size=(ni, rank))
    item_bias = rng_i.normal(0.0, ITEM_BIAS_SD, size=ni)
    return TrueModel(
        user_ids=user_ids,
        item_ids=item_ids,
        user_factors=user_factors,
        item_factors=item_factors,
        user_bias=user_bias,
        item_bias=item_bias,
        item_popularity=popularity / popularity.sum(),
        user_activity=activity / activity.sum(),
        centre=(spec.rating_min + spec.rating_max) / 2.0,
        scale=(spec.rating_max - spec.rating_min) / 6.0,
        latent_sd=math.sqrt(1.0 + USER_BIAS_SD**2 + ITEM_BIAS_SD**2),
    )


def _allocate(total: int, weights: np.ndarray, cap: int) -> np.ndarray:
    """Integer counts ``0 <= c <= cap`` proportional to ``weights`` (water-filled) summing to
    ``total`` exactly; requires ``total <= cap * weights.size``."""
    counts = np.zeros(weights.size, dtype=np.int64)
    if total == 0:
        return counts
    # Find t with sum(min(t * w, cap)) == total by bisection (the sum is monotone in t).
    lo, hi = 0.0, cap / weights.min()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if np.minimum(mid * weights, cap).sum() < total:
            lo = mid
        else:
            hi = mid
    exact = np.minimum(hi * weights, cap)
    counts = np.minimum(np.floor(exact).astype(np.int64), cap)
    remainder = total - int(counts.sum())
    while remainder < 0:  # rounding error only: take from the largest counts
        order = np.argsort(-counts, kind="stable")[:-remainder]
        counts[order] -= 1
        remainder = total - int(counts.sum())
    while remainder > 0:  # largest fractional parts first, among users with room
        frac = np.where(counts < cap, exact - counts, -np.inf)
        order = np.argsort(-frac, kind="stable")[: min(remainder, int((counts < cap).sum()))]
        counts[order] += 1
        remainder = total - int(counts.sum())
    return counts


def user_rating_counts(spec: SyntheticSpec, model: TrueModel | None = None) -> np.ndarray:
    """Number of ratings of each user (dense index order); sums to ``spec.num_ratings``."""
    model = true_model(spec) if model is None else model
    weights = model.user_activity
    if spec.num_ratings >= spec.num_users:
        return 1 + _allocate(spec.num_ratings - spec.num_users, weights, spec.num_items - 1)
    return _allocate(spec.num_ratings, weights, spec.num_items)


def _ranges(counts: np.ndarray) -> list[tuple[int, int, int]]:
    """``(range_id, first_user, end_user)`` of the user ranges, about RANGE_RATINGS each."""
    before = np.cumsum(counts) - counts
    range_of_user = before // RANGE_RATINGS
    starts = np.concatenate([[0], np.flatnonzero(np.diff(range_of_user)) + 1])
    ends = np.concatenate([starts[1:], [counts.size]])
    return [(int(range_of_user[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _sample_items(
    counts: np.ndarray, popularity: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Weighted sampling without replacement for a range of users.

    Returns the sorted codes ``local_user * num_items + item``; user ``u`` gets ``counts[u]``
    distinct items. Draws with replacement are made for all users at once and repeats are
    discarded, keeping the first occurrences (this *is* successive sampling); users whose
    remaining draws would cost more than a pass over all items get the exact
    Efraimidis-Spirakis keys ``log(E) - log(p)`` over the items they do not have yet.
    """
    ni = popularity.size
    nu = counts.size
    cumulative = np.cumsum(popularity)
    cumulative /= cumulative[-1]
    need = counts.astype(np.int64).copy()
    taken_mass = np.zeros(nu)
    accepted: list[np.ndarray] = []
    accepted_sorted = np.empty(0, dtype=np.int64)
    exact_users = np.zeros(nu, dtype=bool)
    for _ in range(MAX_SAMPLING_ROUNDS):
        free_mass = np.clip(1.0 - taken_mass, 1e-300, 1.0)
        draws = np.where(need > 0, np.ceil(1.25 * need / free_mass) + 8, 0)
        exact_users |= (need > 0) & (draws > ni)
        draws[exact_users] = 0
        draws = draws.astype(np.int64)
        if draws.sum() == 0:
            break
        users = np.repeat(np.arange(nu, dtype=np.int64), draws)
        items = np.searchsorted(cumulative, rng.random(users.size), side="right")
        codes = users * ni + np.minimum(items, ni - 1)
        if accepted_sorted.size:
            at = np.minimum(np.searchsorted(accepted_sorted, codes), accepted_sorted.size - 1)
            codes = codes[accepted_sorted[at] != codes]
        if codes.size == 0:  # every draw this round was a repeat
            continue
        order = np.argsort(codes, kind="stable")
        ordered = codes[order]
        first = order[np.concatenate([[True], ordered[1:] != ordered[:-1]])]
        codes = codes[np.sort(first)]  # distinct, in draw order, hence grouped by user
        owner = codes // ni
        starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
        group_start = np.repeat(starts, np.diff(np.append(starts, owner.size)))
        rank_in_user = np.arange(codes.size) - group_start
        new = codes[rank_in_user < need[owner]]
        new_owner = new // ni
        need -= np.bincount(new_owner, minlength=nu)
        taken_mass += np.bincount(new_owner, weights=popularity[new % ni], minlength=nu)
        accepted.append(new)
        accepted_sorted = np.sort(np.concatenate([accepted_sorted, new]))
    remaining = np.flatnonzero(need > 0)
    if remaining.size:
        log.debug("exact sampling for %d users", remaining.size)
        log_p = np.log(popularity)
        for user in remaining:
            lo, hi = np.searchsorted(accepted_sorted, [user * ni, (user + 1) * ni])
            keys = np.log(rng.standard_exponential(ni)) - log_p
            keys[accepted_sorted[lo:hi] - user * ni] = np.inf
            k = int(need[user])
            chosen = np.argpartition(keys, k - 1)[:k] if k < ni else np.argsort(keys)[:k]
            accepted.append(user * ni + chosen.astype(np.int64))
            need[user] = 0
    return np.sort(np.concatenate(accepted)) if accepted else np.empty(0, dtype=np.int64)


def _range_table(
    spec: SyntheticSpec,
    model: TrueModel,
    counts: np.ndarray,
    range_id: int,
    first_user: int,
) -> pa.Table:
    """All ratings of the users ``first_user .. first_user + counts.size - 1``."""
    ni = spec.num_items
    codes = _sample_items(counts, model.item_popularity, _rng(spec, _RANGE, range_id, _SAMPLING))
    local_user = codes // ni
    users = first_user + local_user
    items = codes % ni
    noise = _rng(spec, _RANGE, range_id, _NOISE).standard_normal(codes.size)
    raw = model.score_dense(users, items) + spec.noise * noise
    steps = np.clip(np.rint((raw - spec.rating_min) / spec.rating_step), 0, spec.num_steps)
    rating = np.round(spec.rating_min + steps * spec.rating_step, 10)
    columns = [
        pa.array(model.user_ids[users], pa.int64()),
        pa.array(model.item_ids[items], pa.int64()),
        pa.array(rating, pa.float64()),
    ]
    if spec.with_timestamp:
        rng = _rng(spec, _RANGE, range_id, _TIMES)
        start = rng.integers(TIME_START, TIME_END - 86_400, size=counts.size)
        span = np.minimum(rng.exponential(MEAN_ACTIVE_SECONDS, size=counts.size), TIME_END - start)
        offset = np.floor(rng.random(codes.size) * span[local_user]).astype(np.int64)
        columns.append(pa.array(start[local_user] + offset, pa.int64()))
    return pa.Table.from_arrays(columns, schema=spec.schema)


def generate_chunks(spec: SyntheticSpec, chunk_size: int = 1_000_000) -> Iterator[pa.Table]:
    """Generate the ratings of ``spec`` as Arrow tables of ``chunk_size`` rows (the last fewer).

    Parameters
    ----------
    spec : SyntheticSpec
        What to generate.
    chunk_size : int
        Rows per yielded table; does not change the concatenated output.

    Yields
    ------
    pyarrow.Table
        Columns ``user_id`` (int64), ``item_id`` (int64), ``rating`` (float64) and, when
        ``spec.with_timestamp``, ``timestamp`` (int64 unix seconds). Rows are grouped by user;
        no ``(user_id, item_id)`` pair repeats across the whole output.

    Raises
    ------
    ConfigError
        When ``chunk_size`` is not a positive integer.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    model = true_model(spec)
    counts = user_rating_counts(spec, model)
    ranges = _ranges(counts)
    log.info(
        "generating %d ratings for %d users x %d items in %d user ranges (seed %d)",
        spec.num_ratings,
        spec.num_users,
        spec.num_items,
        len(ranges),
        spec.seed,
    )
    pending: list[pa.Table] = []
    pending_rows = 0
    for range_id, first, end in ranges:
        table = _range_table(spec, model, counts[first:end], range_id, first)
        log.debug("range %d: users %d..%d, %d ratings", range_id, first, end - 1, table.num_rows)
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= chunk_size:
            buffer = pa.concat_tables(pending)
            yield buffer.slice(0, chunk_size)
            rest = buffer.slice(chunk_size)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending)


def write_parquet(
    spec: SyntheticSpec, path: str | os.PathLike[str], chunk_size: int = 1_000_000
) -> int:
    """Write the ratings of ``spec`` to one Parquet file, atomically.

    The file is written under a temporary name in the same directory and renamed over
    ``path`` when complete, so readers never see a partial file. The spec is stored as JSON
    in the file's key-value metadata under ``spark_cf.synthetic_spec``.

    Parameters
    ----------
    spec : SyntheticSpec
        What to generate.
    path : str or os.PathLike
        Target file; its parent directories are created; an existing file is replaced.
    chunk_size : int
        Rows generated and written per step (one row group each, bounding memory).

    Returns
    -------
    int
        Number of rows written (``spec.num_ratings``).

    Raises
    ------
    ConfigError
        When ``path`` is an existing directory or ``chunk_size`` is invalid.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(
            f"output {target} is a directory: give a file path such as {target}/ratings.parquet"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {b"spark_cf.synthetic_spec": json.dumps(dataclasses.asdict(spec)).encode()}
    schema = spec.schema.with_metadata(metadata)
    started = time.perf_counter()
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for table in generate_chunks(spec, chunk_size):
                writer.write_table(
                    table.replace_schema_metadata(metadata), row_group_size=chunk_size
                )
                rows += table.num_rows
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %d ratings to %s in %.1f s", rows, target, time.perf_counter() - started)
    return rows
