"""Ingest: read the ratings, check them, quarantine what cannot be used, resolve duplicates.

The accounting always holds and is checked::

    rows_read = rows_used + rows_quarantined + duplicates_merged

With ``input.feedback = "interactions"`` the input is interaction data (plays, clicks,
purchases) with no ratings: each row is an observed (user, item) pair whose value is
``input.rating_col``'s (a count or strength, > 0) or 1 when that key is ``""``. The result
is the same canonical frame, the value in its ``rating`` column, so the later stages read
it unchanged; ``input.duplicates = "sum"`` adds the values of a repeated pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_cf import storage
from spark_cf.config import InputConfig
from spark_cf.data.validation import (
    canonical,
    check_schema,
    duplicate_pairs,
    resolve_duplicates,
    tag_reasons,
)
from spark_cf.errors import InputError
from spark_cf.schema import ITEM, REASON, USER

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """The usable ratings (cached), the quarantined rows, and the counts."""

    ratings: DataFrame
    quarantine: DataFrame
    rows_read: int
    rows_used: int
    quarantined: dict[str, int] = field(default_factory=dict)
    duplicates_merged: int = 0
    duplicate_pairs: int = 0
    cached: list[DataFrame] = field(default_factory=list)

    @property
    def rows_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def metrics(self) -> dict[str, object]:
        return {
            "rows_read": self.rows_read,
            "rows_used": self.rows_used,
            "rows_quarantined": self.rows_quarantined,
            "quarantined_by_reason": dict(sorted(self.quarantined.items())),
            "duplicates_merged": self.duplicates_merged,
            "duplicate_pairs": self.duplicate_pairs,
        }

    def unpersist(self) -> None:
        """Release the cached frames (the quarantine reads from them: write it first)."""
        for df in self.cached:
            df.unpersist()


def validate_ratings(df: DataFrame, cfg: InputConfig) -> IngestResult:
    """Check, quarantine and de-duplicate a ratings DataFrame (already read)."""
    cols = dict(
        user_col=cfg.user_col,
        item_col=cfg.item_col,
        rating_col=cfg.rating_col,
        timestamp_col=cfg.timestamp_col,
    )
    check_schema(df, feedback=cfg.feedback, **cols)
    tagged = tag_reasons(
        df,
        rating_min=cfg.rating_min,
        rating_max=cfg.rating_max,
        feedback=cfg.feedback,
        **cols,
    )
    tagged = tagged.persist(StorageLevel.MEMORY_AND_DISK)
    with storage.reading(cfg.path or "the ratings"):  # the first pass: a corrupt page shows here
        counts = {row[REASON]: row["count"] for row in tagged.groupBy(REASON).count().collect()}
    rows_read = sum(counts.values())
    valid_rows = counts.pop(None, 0)
    for reason, n in sorted(counts.items()):
        log.warning("quarantined %d rows: %s", n, reason)
    quarantine = tagged.where(F.col(REASON).isNotNull())
    has_ts = bool(cfg.timestamp_col)
    clean = canonical(tagged.where(F.col(REASON).isNull()), **cols)
    if cfg.duplicates == "error":
        dups = duplicate_pairs(clean)
        sample = dups.orderBy(USER, ITEM).limit(5).collect()
        if sample:
            total = dups.count()
            shown = ", ".join(f"({r[USER]!r}, {r[ITEM]!r}) x{r['count']}" for r in sample)
            raise InputError(
                f"{total} (user, item) pairs occur more than once, e.g. {shown}; set "
                f"input.duplicates to 'mean', 'sum' or 'latest' to resolve them"
            )
    resolved = resolve_duplicates(clean, cfg.duplicates, has_timestamp=has_ts)
    resolved = resolved.persist(StorageLevel.MEMORY_AND_DISK)
    rows_used = resolved.count()
    if rows_used == 0:
        tagged.unpersist()
        resolved.unpersist()
        raise InputError(
            f"no usable {cfg.feedback}: all {rows_read} rows read were quarantined "
            f"({', '.join(f'{n} {r}' for r, n in sorted(counts.items())) or 'input empty'})"
        )
    merged = valid_rows - rows_used
    result = IngestResult(
        ratings=resolved,
        quarantine=quarantine,
        rows_read=rows_read,
        rows_used=rows_used,
        quarantined=counts,
        duplicates_merged=merged,
        duplicate_pairs=(duplicate_pairs(clean).count() if merged else 0),
        cached=[resolved, tagged],
    )
    assert result.rows_read == rows_used + result.rows_quarantined + merged
    log.info(
        "ingest: %d rows read, %d used, %d quarantined, %d duplicates merged (%s)",
        rows_read,
        rows_used,
        result.rows_quarantined,
        merged,
        cfg.duplicates,
    )
    return result


def read_ratings(spark: SparkSession, cfg: InputConfig) -> DataFrame:
    """The raw ratings Parquet named by ``input.path``."""
    if not cfg.path:
        raise InputError(
            "input.path is empty: set it to the ratings Parquet (file, folder or glob)"
        )
    return storage.read_parquet(spark, cfg.path, ids=(cfg.user_col, cfg.item_col))


def ingest(spark: SparkSession, cfg: InputConfig) -> IngestResult:
    """Read and validate the ratings: :func:`read_ratings` then :func:`validate_ratings`."""
    return validate_ratings(read_ratings(spark, cfg), cfg)
