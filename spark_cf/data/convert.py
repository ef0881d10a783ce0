"""Converting delimited text rating files to the ratings Parquet the ingest reads.

The output has the columns ``user_id``, ``item_id``, ``rating`` (double) and, when the
source has one, ``timestamp`` (long, seconds). Ids are longs or strings as the format says;
string ids keep their text as written (MovieTweetings' IMDb ids keep their leading zeros).

How a file is read:

1. It is read as lines of text (Spark's text source ends lines at ``\\n``, ``\\r\\n`` or
   ``\\r``, so CRLF files need nothing special); blank lines are skipped, and with a header,
   every line equal to the header (one per file when a folder holds several) is skipped.
2. Each line is split on the delimiter (taken literally, not as a regular expression) into
   string fields, then each field is trimmed of whitespace (including a stray ``\\r`` and a
   byte order mark); the line is not trimmed first, so a tab-separated line may end with an
   empty field.
3. The fields are cast with ``try_cast``. A line that cannot be used whole (wrong number of
   fields, empty or non-integer id, non-numeric or non-finite rating, bad timestamp) is not
   dropped and no value is nulled: it goes to the *rejects* with its raw text, its file and
   a ``reason``.

Quoted fields are not unquoted: a rating file holds numbers and ids, and a quoted field
with the delimiter inside shows up as a wrong field count in the rejects rather than as a
shifted row.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_cf import storage
from spark_cf.errors import ConfigError, InputError, SchemaError

log = logging.getLogger(__name__)

#: The roles a source column can play; ``timestamp`` is optional.
ROLES = ("user", "item", "rating", "timestamp")
REQUIRED_ROLES = ("user", "item", "rating")
#: The output column of each role.
OUTPUT_COLUMNS = {
    "user": "user_id",
    "item": "item_id",
    "rating": "rating",
    "timestamp": "timestamp",
}
#: Types an id column can be converted to.
ID_TYPES = ("string", "long")
#: Columns of the rejects table.
REJECT_COLUMNS = ("source_file", "line", "reason")

# What trimming removes at both ends of a line and of a field: ASCII whitespace (a stray
# \r too) and byte order marks; Spark (btrim) and the driver (str.strip) use the same set.
_TRIM_CHARS = " \t\n\x0b\f\r\ufeff"


@dataclass(frozen=True)
class DelimitedFormat:
    """How a delimited rating file is laid out.

    Attributes
    ----------
    delimiter
        The field separator, taken literally (``","``, ``"::"``, ``"\\t"``...).
    header
        Whether each file starts with a line of column names.
    columns
        Role (``user``, ``item``, ``rating``, optional ``timestamp``) to source column: a
        name, looked up in the header (or in ``fields`` when there is no header), or a
        0-based position.
    fields
        Names of the fields in file order, for a header-less format whose layout is known;
        a line must then have exactly this many fields.
    user_type, item_type
        ``"long"`` or ``"string"``: what the ids are converted to.
    """

    delimiter: str
    header: bool
    columns: Mapping[str, str | int]
    fields: tuple[str, ...] = ()
    user_type: str = "string"
    item_type: str = "string"


#: The formats we know; ``csv`` is the generic one the caller adjusts.
FORMATS: dict[str, DelimitedFormat] = {
    "movielens": DelimitedFormat(
        delimiter=",",
        header=True,
        columns=MappingProxyType(
            {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
        ),
        user_type="long",
        item_type="long",
    ),
    "movietweetings": DelimitedFormat(
        delimiter="::",
        header=False,
        fields=("user_id", "movie_id", "rating", "unix_time"),
        columns=MappingProxyType(
            {"user": "user_id", "item": "movie_id", "rating": "rating", "timestamp": "unix_time"}
        ),
        user_type="long",
        item_type="string",  # IMDb ids: "0104257" must stay "0104257"
    ),
    "csv": DelimitedFormat(
        delimiter=",",
        header=True,
        # by header name; ``timestamp`` only when the header has it (see _resolve_columns)
        columns=MappingProxyType(
            {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
        ),
    ),
}


@dataclass(frozen=True)
class ParsedRatings:
    """What :func:`read_delimited` gives: the usable ratings and the rejected lines.

    ``ratings`` has ``user_id``, ``item_id``, ``rating`` (double) and, when the format
    has one, ``timestamp`` (long). ``rejects`` has ``source_file``, ``line`` (the raw
    text) and ``reason``.
    """

    ratings: DataFrame
    rejects: DataFrame


@dataclass(frozen=True)
class _Plan:
    """A format resolved against the actual file: where each role sits."""

    positions: dict[str, int]
    expected_fields: int
    header_line: str | None = None


def parse_columns(text: str) -> dict[str, str | int]:
    """Parse a column mapping such as ``"user=uid,item=iid,rating=r,timestamp=ts"``.

    A value made of digits is a 0-based position, anything else a column name.

    Raises
    ------
    ConfigError
        On a malformed pair, an unknown or repeated role, or a missing required role.
    """
    mapping: dict[str, str | int] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        role, sep, source = (s.strip() for s in pair.partition("="))
        if not sep or not role or not source:
            raise ConfigError(
                f"column mapping needs role=column pairs such as 'user=uid', got {pair!r}"
            )
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r} in column mapping: use {', '.join(ROLES)}")
        if role in mapping:
            raise ConfigError(f"role {role!r} is given twice in the column mapping")
        mapping[role] = int(source) if source.isdigit() else source
    _check_columns(mapping)
    return mapping


def _check_columns(columns: Mapping[str, str | int]) -> None:
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise ConfigError(f"unknown role(s) {', '.join(unknown)}: use {', '.join(ROLES)}")
    missing = [r for r in REQUIRED_ROLES if r not in columns]
    if missing:
        raise ConfigError(
            f"column mapping misses {', '.join(missing)}: give e.g. "
            f"'user=...,item=...,rating=...' (timestamp is optional)"
        )
    for role, source in columns.items():
        if isinstance(source, int) and source < 0:
            raise ConfigError(f"position of {role} must be >= 0, got {source}")
        if isinstance(source, str) and not source:
            raise ConfigError(f"column name of {role} must not be empty")


def resolve_format(
    fmt: str = "movielens",
    *,
    delimiter: str | None = None,
    header: bool | None = None,
    columns: Mapping[str, str | int] | None = None,
    user_type: str | None = None,
    item_type: str | None = None,
) -> DelimitedFormat:
    """The preset ``fmt`` from :data:`FORMATS` with the given settings on top, validated.

    Raises
    ------
    ConfigError
        Unknown format or id type, empty delimiter, or a bad column mapping.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    base = FORMATS[fmt]
    changes: dict[str, object] = {}
    if delimiter is not None:
        changes["delimiter"] = delimiter
    if header is not None:
        changes["header"] = header
    if columns is not None:
        changes["columns"] = MappingProxyType(dict(columns))
    if user_type is not None:
        changes["user_type"] = user_type
    if item_type is not None:
        changes["item_type"] = item_type
    layout = dataclasses.replace(base, **changes)
    if not layout.delimiter:
        raise ConfigError("the delimiter must not be empty")
    for name in ("user_type", "item_type"):
        value = getattr(layout, name)
        if value not in ID_TYPES:
            raise ConfigError(f"{name} must be one of {', '.join(ID_TYPES)}, got {value!r}")
    _check_columns(layout.columns)
    if columns is None and fmt == "csv" and not layout.header:
        raise ConfigError(
            "a csv file without a header needs a column mapping by position, "
            "e.g. 'user=0,item=1,rating=2,timestamp=3'"
        )
    return layout


def _java_literal(text: str) -> str:
    """A Java regular expression matching ``text`` literally."""
    return "".join(ch if ch.isalnum() else "\\" + ch for ch in text)


def _trimmed(col: Column) -> Column:
    return F.btrim(col, F.lit(_TRIM_CHARS))


def _split_fields(line: str, delimiter: str) -> list[str]:
    """Split and trim one line on the driver exactly as the Spark expressions do."""
    return [f.strip(_TRIM_CHARS) for f in line.split(delimiter)]


def _resolve_columns(
    layout: DelimitedFormat, field_names: tuple[str, ...], where: str
) -> dict[str, int]:
    """Role -> 0-based position, looking names up in ``field_names``."""
    columns = dict(layout.columns)
    # The generic csv default maps ``timestamp`` only when the file has such a column.
    if columns == dict(FORMATS["csv"].columns) and "timestamp" not in field_names:
        del columns["timestamp"]
    positions: dict[str, int] = {}
    for role, source in columns.items():
        if isinstance(source, int):
            if field_names and source >= len(field_names):
                raise SchemaError(
                    f"{role} is at position {source} but {where} has only "
                    f"{len(field_names)} columns ({', '.join(field_names)})"
                )
            positions[role] = source
            continue
        if source not in field_names:
            known = ", ".join(field_names) if field_names else "none: the file has no header"
            raise SchemaError(
                f"column {source!r} for {role} is not in {where} (columns: {known}); "
                f"give the mapping with role=name or role=position"
            )
        positions[role] = field_names.index(source)
    return positions


def _plan(path: str, lines: DataFrame, layout: DelimitedFormat) -> _Plan:
    """Resolve ``layout`` against the file; reads the first line when there is a header."""
    if layout.header:
        first = lines.first()
        if first is None:
            raise InputError(f"input {path} is empty: expected a header line first")
        header_line = _split_fields(first[0], layout.delimiter)
        names = tuple(header_line)
        positions = _resolve_columns(layout, names, f"the header of {path}")
        return _Plan(positions, len(names), header_line=layout.delimiter.join(names))
    positions = _resolve_columns(layout, layout.fields, f"the fields of {path} (no header)")
    expected = len(layout.fields) if layout.fields else max(positions.values()) + 1
    return _Plan(positions, expected)


def check_lines(
    lines: DataFrame,
    *,
    delimiter: str,
    positions: Mapping[str, int],
    expected_fields: int,
    header_line: str | None = None,
    user_type: str = "string",
    item_type: str = "string",
) -> DataFrame:
    """Split, trim and cast text lines, giving every line a ``reason`` (null when usable).

    Parameters
    ----------
    lines
        One string column ``value`` (as ``spark.read.text`` gives) and optionally
        ``source_file``.
    delimiter
        The field separator, taken literally.
    positions
        Role -> 0-based field position; ``user``, ``item`` and ``rating`` are required.
    expected_fields
        How many fields a usable line has.
    header_line
        Lines equal to this (after trimming and splitting) are skipped.
    user_type, item_type
        ``"long"`` or ``"string"``.

    Returns
    -------
    DataFrame
        ``source_file``, ``line`` (raw), the output columns of the mapped roles and
        ``reason``; blank lines and header lines are left out.
    """
    source_file = (
        F.col("source_file") if "source_file" in lines.columns else F.lit(None).cast("string")
    )
    raw = lines.select(source_file.alias("source_file"), F.col("value").alias("line"))
    fields = F.transform(F.split(F.col("line"), _java_literal(delimiter), -1), _trimmed)
    with_fields = raw.withColumn("_fields", fields).where(_trimmed(F.col("line")) != "")
    if header_line is not None:
        joined = F.array_join(F.col("_fields"), delimiter)
        with_fields = with_fields.where(joined != F.lit(header_line))

    def text(role: str) -> Column:
        return F.get(F.col("_fields"), positions[role])

    types = {"user": user_type, "item": item_type, "rating": "double", "timestamp": "long"}
    roles = [r for r in ROLES if r in positions]
    values = {}
    for role in roles:
        values[role] = text(role) if types[role] == "string" else text(role).try_cast(types[role])

    count = F.size(F.col("_fields"))
    reason = F.when(
        count != expected_fields,
        F.format_string("expected %d fields, got %d", F.lit(expected_fields), count),
    )
    for role in roles:
        name = OUTPUT_COLUMNS[role]
        reason = reason.when(text(role) == "", F.lit(f"{name} is empty"))
        if types[role] == "long":
            reason = reason.when(values[role].isNull(), F.lit(f"{name} is not an integer"))
        elif types[role] == "double":
            reason = reason.when(values[role].isNull(), F.lit(f"{name} is not a number")).when(
                F.isnan(values[role]) | (F.abs(values[role]) == float("inf")),
                F.lit(f"{name} is not finite"),
            )
    return with_fields.select(
        "source_file",
        "line",
        *[values[r].alias(OUTPUT_COLUMNS[r]) for r in roles],
        reason.alias("reason"),
    )


def split_checked(checked: DataFrame) -> ParsedRatings:
    """Split the output of :func:`check_lines` into ratings and rejects."""
    outputs = [c for c in checked.columns if c in OUTPUT_COLUMNS.values()]
    return ParsedRatings(
        ratings=checked.where(F.col("reason").isNull()).select(*outputs),
        rejects=checked.where(F.col("reason").isNotNull()).select(*REJECT_COLUMNS),
    )


def _checked(spark: SparkSession, path: str, layout: DelimitedFormat) -> DataFrame:
    if not storage.matches_any(spark, path):
        raise InputError(f"input path {path} does not exist (or the glob matches nothing)")
    lines = spark.read.text(path).select("value", F.col("_metadata.file_path").alias("source_file"))
    plan = _plan(path, lines, layout)
    log.info(
        "reading %s: delimiter %r, header %s, columns %s, %d fields a line",
        path,
        layout.delimiter,
        layout.header,
        plan.positions,
        plan.expected_fields,
    )
    return check_lines(
        lines,
        delimiter=layout.delimiter,
        positions=plan.positions,
        expected_fields=plan.expected_fields,
        header_line=plan.header_line,
        user_type=layout.user_type,
        item_type=layout.item_type,
    )


def read_delimited(
    spark: SparkSession,
    path: str,
    *,
    fmt: str = "movielens",
    delimiter: str | None = None,
    header: bool | None = None,
    columns: Mapping[str, str | int] | None = None,
    user_type: str | None = None,
    item_type: str | None = None,
) -> ParsedRatings:
    """Read a delimited rating file (or folder, or glob) into ratings and rejects.

    Parameters
    ----------
    spark
        The session.
    path
        A file, a folder of files, or a glob.
    fmt
        A preset of :data:`FORMATS`: ``"movielens"``, ``"movietweetings"`` or ``"csv"``.
    delimiter, header, columns, user_type, item_type
        Override the preset (see :class:`DelimitedFormat`); ``columns`` maps roles to
        column names or 0-based positions, as :func:`parse_columns` returns.

    Returns
    -------
    ParsedRatings
        Lazy ``ratings`` and ``rejects`` frames. With a header, the first line is read
        once here to find the columns; nothing else is computed.

    Raises
    ------
    ConfigError
        Bad format settings.
    InputError
        ``path`` matches nothing, or a file with a header is empty.
    SchemaError
        A mapped column is not in the header.
    """
    layout = resolve_format(
        fmt,
        delimiter=delimiter,
        header=header,
        columns=columns,
        user_type=user_type,
        item_type=item_type,
    )
    return split_checked(_checked(spark, path, layout))


def convert(
    spark: SparkSession,
    src: str,
    dst: str,
    *,
    fmt: str = "movielens",
    rejects_path: str | None = None,
    delimiter: str | None = None,
    header: bool | None = None,
    columns: Mapping[str, str | int] | None = None,
    user_type: str | None = None,
    item_type: str | None = None,
    partitions: int | None = None,
) -> dict[str, int]:
    """Convert a delimited rating file to ratings Parquet, quarantining unusable lines.

    The ratings are written atomically to ``dst``; the rejects, when there are any, to
    ``rejects_path`` (default ``<dst>_rejects``). A rejects table left there by an earlier
    run is deleted when this run has none, so it always describes the ratings beside it.

    Parameters
    ----------
    spark, src
        The session and the input (file, folder or glob).
    dst
        The output folder; a table there is replaced whole.
    fmt, delimiter, header, columns, user_type, item_type
        As for :func:`read_delimited`.
    rejects_path
        Where the rejected lines go.
    partitions
        Coalesce the ratings to this many files (default: as read).

    Returns
    -------
    dict
        ``rows_read`` (non-blank, non-header lines), ``rows_written``, ``rows_rejected``.

    Raises
    ------
    InputError
        No usable rating at all (``dst`` is left untouched; the rejects are written).
    """
    layout = resolve_format(
        fmt,
        delimiter=delimiter,
        header=header,
        columns=columns,
        user_type=user_type,
        item_type=item_type,
    )
    rejects_path = rejects_path or f"{dst.rstrip('/')}_rejects"
    checked = _checked(spark, src, layout).cache()
    try:
        # One job: the rows per reason (None = usable) give every count and the log line.
        per_reason = {r["reason"]: r["count"] for r in checked.groupBy("reason").count().collect()}
        rows_read = sum(per_reason.values())
        rows_rejected = rows_read - per_reason.get(None, 0)
        counts = {
            "rows_read": rows_read,
            "rows_written": rows_read - rows_rejected,
            "rows_rejected": rows_rejected,
        }
        parsed = split_checked(checked)
        if rows_rejected:
            top = sorted(
                ((n, reason) for reason, n in per_reason.items() if reason is not None),
                key=lambda pair: (-pair[0], pair[1]),
            )[:5]
            log.warning(
                "%d of %d lines of %s rejected (%s); writing them to %s",
                rows_rejected,
                rows_read,
                src,
                "; ".join(f"{n} x {reason}" for n, reason in top),
                rejects_path,
            )
        if counts["rows_written"] == 0:
            if rows_rejected:
                storage.write_table(parsed.rejects, rejects_path, partitions=1)
                raise InputError(
                    f"no line of {src} is a usable rating ({rows_rejected} rejected, see "
                    f"{rejects_path}): check --format, --delimiter, --header and --columns"
                )
            raise InputError(f"input {src} holds no ratings")
        storage.write_table(parsed.ratings, dst, partitions=partitions)
        if rows_rejected:
            storage.write_table(parsed.rejects, rejects_path, partitions=1)
        elif storage.exists(spark, rejects_path):
            log.info("no rejects: deleting the old rejects table %s", rejects_path)
            storage.delete(spark, rejects_path)
    finally:
        checked.unpersist()
    log.info(
        "converted %s to %s: %d lines read, %d ratings written, %d rejected",
        src,
        dst,
        counts["rows_read"],
        counts["rows_written"],
        counts["rows_rejected"],
    )
    return counts
