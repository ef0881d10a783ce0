"""Input checks: schema errors up front, bad rows to quarantine, duplicates by policy.

The functions here are pure transforms (DataFrame in, DataFrame out, no action), except
:func:`check_schema`, which only looks at the schema. Rows are never dropped silently:
each is either used, quarantined with a ``reason``, or merged into a duplicate pair
(counted by :mod:`spark_cf.data.ingest`).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_cf.errors import SchemaError
from spark_cf.schema import ITEM, RATING, REASON, TIMESTAMP, USER

ID_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.StringType)
RATING_TYPES = (
    T.ByteType,
    T.ShortType,
    T.IntegerType,
    T.LongType,
    T.FloatType,
    T.DoubleType,
    T.DecimalType,
)
TIMESTAMP_TYPES = (
    T.IntegerType,
    T.LongType,
    T.TimestampType,
    T.TimestampNTZType,
    T.DateType,
    T.DoubleType,
)


#: A string id made only of these is blank: Unicode White_Space (tab, newline, NBSP, the
#: ideographic space...) and the invisible format characters (category Cf: zero-width
#: space U+200B, joiners, the byte order mark U+FEFF). Java regex, as Spark evaluates it.
BLANK_ID = r"\A[\p{IsWhite_Space}\p{Cf}]*\z"


def _type_name(dtype: T.DataType) -> str:
    return dtype.simpleString()


def check_schema(
    df: DataFrame,
    *,
    user_col: str,
    item_col: str,
    rating_col: str,
    timestamp_col: str = "",
    feedback: str = "ratings",
) -> None:
    """Fail before any work when a column is missing or has a type we cannot use.

    Ids may be integers (up to int64) or strings; ratings (or interaction values) any
    numeric type; the optional timestamp an integer (epoch seconds), a double, a timestamp
    or a date. With ``feedback="interactions"`` the rating column may be ``""`` (every row
    is one interaction of value 1).
    """
    fields = {f.name: f.dataType for f in df.schema.fields}
    interactions = feedback == "interactions"
    if not rating_col and not interactions:
        raise SchemaError(
            "input.rating_col is empty: name the rating column, or set input.feedback = "
            "'interactions' for data without ratings"
        )
    wanted = [
        ("input.user_col", user_col, ID_TYPES, "an integer or string id"),
        ("input.item_col", item_col, ID_TYPES, "an integer or string id"),
    ]
    if rating_col:
        wanted.append(("input.rating_col", rating_col, RATING_TYPES, "a number"))
    if timestamp_col:
        wanted.append(
            (
                "input.timestamp_col",
                timestamp_col,
                TIMESTAMP_TYPES,
                "epoch seconds, a timestamp or a date",
            )
        )
    for key, col, types, what in wanted:
        if col not in fields:
            hint = (
                ' (or to "" to count every row as one interaction of value 1)'
                if interactions and key == "input.rating_col"
                else ""
            )
            raise SchemaError(
                f"input has no column {col!r} ({key}); its columns are "
                f"{', '.join(sorted(fields))}: set {key} to the right name{hint}"
            )
        if not isinstance(fields[col], types):
            raise SchemaError(
                f"input column {col!r} ({key}) has type {_type_name(fields[col])}, expected {what}"
            )


def _timestamp_seconds(col: Column, dtype: T.DataType) -> Column:
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return F.unix_timestamp(col).cast("long")
    if isinstance(dtype, T.DateType):
        return F.unix_timestamp(col.cast("timestamp")).cast("long")
    return col.cast("long")


def tag_reasons(
    df: DataFrame,
    *,
    user_col: str,
    item_col: str,
    rating_col: str,
    timestamp_col: str = "",
    rating_min: float,
    rating_max: float,
    feedback: str = "ratings",
) -> DataFrame:
    """Add a ``reason`` column: null for a usable row, else why the row cannot be used.

    The first failing check names the row's reason, in this order: null or empty user id,
    blank user id, the same for the item id, null rating, NaN rating, infinite rating,
    rating out of range, null timestamp (only when a timestamp column is configured).

    With ``feedback="interactions"`` the rating column holds an interaction's value (a
    count or strength): ``rating_min`` and ``rating_max`` do not apply, and a value <= 0
    is quarantined as ``"<rating_col> is not positive"`` instead; with ``rating_col=""``
    every row has the value 1 and only the ids (and the timestamp) are checked.

    String ids are kept exactly as given (``' u1 '`` and ``'u1'`` are two ids); an id
    made only of whitespace or invisible characters (:data:`BLANK_ID`) is quarantined.
    """
    dtypes = {f.name: f.dataType for f in df.schema.fields}

    def id_checks(col: str) -> list[tuple[Column, str]]:
        c = F.col(col)
        if not isinstance(dtypes[col], T.StringType):
            return [(c.isNull(), f"null or empty {col}")]
        return [
            (c.isNull() | (c == ""), f"null or empty {col}"),
            (c.rlike(BLANK_ID), f"blank {col} (only whitespace or invisible characters)"),
        ]

    checks: list[tuple[Column, str]] = [*id_checks(user_col), *id_checks(item_col)]
    if rating_col:
        rating = F.col(rating_col).cast("double")
        checks += [
            (F.col(rating_col).isNull(), f"null {rating_col}"),
            (F.isnan(rating), f"{rating_col} is NaN"),
            (F.abs(rating) == float("inf"), f"{rating_col} is infinite"),
        ]
        if feedback == "interactions":
            checks.append((rating <= 0, f"{rating_col} is not positive"))
        else:
            checks.append(
                (
                    (rating < rating_min) | (rating > rating_max),
                    f"{rating_col} outside [{rating_min:g}, {rating_max:g}]",
                )
            )
    if timestamp_col:
        checks.append((F.col(timestamp_col).isNull(), f"null {timestamp_col}"))
        if isinstance(dtypes[timestamp_col], (T.DoubleType, T.FloatType)):
            ts = F.col(timestamp_col)
            checks.append(
                (F.isnan(ts) | (F.abs(ts) == float("inf")), f"{timestamp_col} is NaN or infinite")
            )
    reason = F.lit(None).cast("string")
    for cond, text in reversed(checks):
        reason = F.when(cond, F.lit(text)).otherwise(reason)
    return df.withColumn(REASON, reason)


def canonical(
    df: DataFrame,
    *,
    user_col: str,
    item_col: str,
    rating_col: str,
    timestamp_col: str = "",
) -> DataFrame:
    """The usable rows under canonical names: user_id, item_id (raw types), rating double
    (1.0 on every row when ``rating_col`` is ``""``: interactions without a value), and
    timestamp (epoch seconds, long) when configured. String ids are kept as given."""
    dtypes = {f.name: f.dataType for f in df.schema.fields}

    def ident(col: str, name: str) -> Column:
        c = F.col(col)
        if isinstance(dtypes[col], (T.ByteType, T.ShortType)):
            return c.cast("int").alias(name)
        return c.alias(name)

    cols = [
        ident(user_col, USER),
        ident(item_col, ITEM),
        (F.col(rating_col).cast("double") if rating_col else F.lit(1.0)).alias(RATING),
    ]
    if timestamp_col:
        cols.append(
            _timestamp_seconds(F.col(timestamp_col), dtypes[timestamp_col]).alias(TIMESTAMP)
        )
    return df.select(*cols)


def resolve_duplicates(df: DataFrame, policy: str, *, has_timestamp: bool) -> DataFrame:
    """One row per (user_id, item_id).

    ``latest`` keeps the rating with the newest timestamp (ties: the higher rating);
    ``mean`` averages the ratings and ``sum`` adds them (3 plays of one song: value 3);
    with both the timestamp becomes the newest. ``error`` is checked by the caller (it
    needs an action) and returns the input unchanged here.
    """
    if policy == "error":
        return df
    if policy == "latest":
        if not has_timestamp:
            raise SchemaError("input.duplicates = 'latest' needs input.timestamp_col")
        best = F.max(F.struct(F.col(TIMESTAMP), F.col(RATING)))
        return (
            df.groupBy(USER, ITEM)
            .agg(best.alias("_best"))
            .select(
                USER,
                ITEM,
                F.col("_best." + RATING).alias(RATING),
                F.col("_best." + TIMESTAMP).alias(TIMESTAMP),
            )
        )
    if policy == "mean":
        # summed exactly, so the mean does not depend on the partitioning
        aggs = [
            (F.sum(F.col(RATING).cast("decimal(38,18)")) / F.count(F.lit(1)))
            .cast("double")
            .alias(RATING)
        ]
        if has_timestamp:
            aggs.append(F.max(TIMESTAMP).alias(TIMESTAMP))
        return df.groupBy(USER, ITEM).agg(*aggs)
    if policy == "sum":
        # added in ascending order, so the sum does not depend on the partitioning (the
        # exact decimal sum of "mean" would round values below 1e-18 and refuse above 1e20)
        values = F.array_sort(F.collect_list(RATING))
        aggs = [F.aggregate(values, F.lit(0.0), lambda acc, x: acc + x).alias(RATING)]
        if has_timestamp:
            aggs.append(F.max(TIMESTAMP).alias(TIMESTAMP))
        return df.groupBy(USER, ITEM).agg(*aggs)
    raise ValueError(f"unknown duplicates policy {policy!r}")


def duplicate_pairs(df: DataFrame) -> DataFrame:
    """(user_id, item_id, count) for every pair that occurs more than once."""
    return df.groupBy(USER, ITEM).count().where(F.col("count") > 1)
