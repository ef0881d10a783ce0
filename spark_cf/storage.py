"""All reading and writing of paths: ratings in, tables out, atomic publishing.

Paths go through Hadoop's FileSystem API (through the session's JVM), so the same code
works on a local disk, HDFS or an object store. Publishing (staging, the lock, the swap
into place and recovery after a crash) is :mod:`spark_cf.outputs.publish`, built on the
primitives here.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection
from contextlib import contextmanager
from typing import Any

from spark_cf.errors import (
    NEEDS_INSPECTION_CLASSES,
    UNREADABLE_CLASSES,
    spark_error_class,
    spark_error_message,
)

log = logging.getLogger(__name__)


def _hadoop(spark, path: str):
    """(FileSystem, Path) for ``path`` via the session's Hadoop configuration."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, hpath


def exists(spark, path: str) -> bool:
    """Whether ``path`` (file or folder) exists."""
    fs, hpath = _hadoop(spark, path)
    return bool(fs.exists(hpath))


def has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[{")


def matches_any(spark, path: str) -> bool:
    """Whether ``path`` exists or, when it is a glob, matches at least one path."""
    fs, hpath = _hadoop(spark, path)
    if has_glob(path):
        found = fs.globStatus(hpath)
        return found is not None and len(found) > 0
    return bool(fs.exists(hpath))


def glob(spark, pattern: str) -> list[str]:
    """The paths matching ``pattern`` (Hadoop glob), sorted; [] when none."""
    fs, hpath = _hadoop(spark, pattern)
    found = fs.globStatus(hpath)
    return sorted(str(status.getPath().toString()) for status in (found or []))


def delete(spark, path: str) -> None:
    """Delete ``path`` recursively if it exists."""
    fs, hpath = _hadoop(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def mkdirs(spark, path: str) -> None:
    fs, hpath = _hadoop(spark, path)
    fs.mkdirs(hpath)


def rename(spark, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, which must not exist; never moves ``src`` *into* ``dst``.

    Hadoop's ``rename`` onto an existing folder moves the source inside it (HDFS) or copies
    it there (local disk) and reports success, so the destination is checked first and the
    result verified after. Only the holder of the target's publication lock renames onto a
    published path, so the check cannot race another spark-cf writer.

    Raises
    ------
    PublishError
        When ``dst`` exists, ``src`` is missing, or the rename did not leave ``src`` at
        ``dst`` (and nothing at ``src``).
    """
    from spark_cf.errors import PublishError

    fs, hsrc = _hadoop(spark, src)
    _, hdst = _hadoop(spark, dst)
    if fs.exists(hdst):
        raise PublishError(
            f"refusing to rename {src} onto the existing path {dst} (it would end up "
            f"inside it); remove {dst} or let the next run recover it"
        )
    if not fs.exists(hsrc):
        raise PublishError(f"cannot rename {src} to {dst}: {src} does not exist")
    fs.mkdirs(hdst.getParent())
    # nesting shows as dst/<name of src>, unless src held a child of that name itself
    name = hsrc.getName()
    nested = _hadoop(spark, f"{dst.rstrip('/')}/{name}")[1]
    own_child = fs.exists(_hadoop(spark, f"{src.rstrip('/')}/{name}")[1])
    if (
        not fs.rename(hsrc, hdst)
        or fs.exists(hsrc)
        or not fs.exists(hdst)
        or (fs.exists(nested) and not own_child)
    ):
        raise PublishError(f"could not rename {src} to {dst} (check both paths)")


def create_exclusive(spark, path: str, text: str) -> bool:
    """Create the small file ``path`` holding ``text`` unless it exists; whether it did.

    Atomic on a local disk (``O_CREAT | O_EXCL`` on the driver's file system) and on HDFS
    (``create`` without overwrite is decided by the NameNode); on object stores the check
    and the create are two requests.
    """
    import os

    fs, hpath = _hadoop(spark, path)
    fs.mkdirs(hpath.getParent())
    if str(fs.getScheme()) == "file":
        local = str(fs.makeQualified(hpath).toUri().getPath())
        for attempt in range(3):
            try:
                fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                return False
            except FileNotFoundError:  # another run removed the empty folder meanwhile
                if attempt == 2:
                    raise
                fs.mkdirs(hpath.getParent())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return True
    if fs.exists(hpath):
        return False
    try:
        stream = fs.create(hpath, False)
    except Exception as exc:  # noqa: BLE001 - Py4JJavaError wrapping FileAlreadyExistsException
        if "FileAlreadyExists" in str(exc):
            return False
        raise
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
    return True


def list_names(spark, folder: str) -> list[str]:
    """The names of the entries of ``folder``, sorted; [] when it does not exist."""
    fs, hpath = _hadoop(spark, folder)
    if not fs.exists(hpath):
        return []
    return sorted(str(status.getPath().getName()) for status in fs.listStatus(hpath))


def modification_time(spark, path: str) -> float | None:
    """When ``path`` was last modified (seconds since the epoch); None when it is gone."""
    fs, hpath = _hadoop(spark, path)
    if not fs.exists(hpath):
        return None
    return fs.getFileStatus(hpath).getModificationTime() / 1000.0


def delete_if_empty(spark, folder: str) -> bool:
    """Delete ``folder`` if it exists and is empty; whether it did."""
    fs, hpath = _hadoop(spark, folder)
    if not fs.exists(hpath) or len(fs.listStatus(hpath)) > 0:
        return False
    try:
        return bool(fs.delete(hpath, False))
    except Exception:  # noqa: BLE001 - another writer filled it meanwhile: keep it
        return False


def write_text(spark, path: str, text: str) -> None:
    """Write a small text file (overwriting)."""
    fs, hpath = _hadoop(spark, path)
    stream = fs.create(hpath, True)
    try:
        data = text.encode("utf-8")
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_text(spark, path: str) -> str:
    """Read a small text file whole."""
    fs, hpath = _hadoop(spark, path)
    stream = fs.open(hpath)
    try:
        reader = spark.sparkContext._jvm.java.io.BufferedReader(
            spark.sparkContext._jvm.java.io.InputStreamReader(stream, "UTF-8")
        )
        lines = []
        line = reader.readLine()
        while line is not None:
            lines.append(line)
            line = reader.readLine()
        return "\n".join(lines)
    finally:
        stream.close()


def _finite(value: Any) -> Any:
    """NaN and infinities become None (JSON null): strict JSON readers reject NaN."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(spark, path: str, payload: Any) -> None:
    text = json.dumps(_finite(payload), indent=2, sort_keys=True, default=str, allow_nan=False)
    write_text(spark, path, text + "\n")


def read_json(spark, path: str) -> Any:
    return json.loads(read_text(spark, path))


def write_table(df, path: str, *, partitions: int | None = None) -> None:
    """Write ``df`` as Parquet at ``path`` atomically (see :mod:`spark_cf.outputs.publish`).

    Parameters
    ----------
    df
        The DataFrame to write.
    path
        Destination folder; an existing table there is replaced whole. Two writers of one
        path at a time are refused (:class:`~spark_cf.errors.LockError`).
    partitions
        Coalesce to this many files first (small tables read better as few files).
    """
    from spark_cf.outputs.publish import Publication

    with Publication(df.sparkSession, path) as pub:
        write_parquet(df, pub.staging, partitions=partitions)
        pub.commit()
    log.info("wrote table %s", path)


# --------------------------------------------------------------------------- reading Parquet
# Spark reads every file's footer up front (``mergeSchema``, one parallel job), so a file
# that is not Parquet, is truncated, or disagrees with the others is found before the
# expensive work. The odd cases (files whose types differ only in width, pandas'
# nanosecond timestamps) take a slower path: each file's footer is read on the driver,
# files are grouped by schema, each group is read on its own and cast to the widened type.

_INTEGRAL = ("tinyint", "smallint", "int", "bigint")
_NUMERIC = (*_INTEGRAL, "float", "double")


def _is_input_error(exc: BaseException, conditions: tuple[str, ...]) -> bool:
    return spark_error_class(exc).split(".")[0] in conditions


@contextmanager
def reading(path: str):
    """Turn Spark's failures to read the files of ``path`` into an :class:`InputError`
    naming the path and Spark's reason (a corrupt page is found only when read)."""
    from spark_cf.errors import InputError

    try:
        yield
    except Exception as exc:
        if not _is_input_error(exc, UNREADABLE_CLASSES):
            raise
        log.debug("reading %s failed", path, exc_info=True)
        raise InputError(
            f"cannot read the Parquet input {path}: {spark_error_message(exc)} "
            f"[{spark_error_class(exc)}]: rewrite or remove the bad file"
        ) from None


def parquet_files(spark, path: str) -> list[str]:
    """The data files of ``path`` (a file, a folder read recursively, or a glob), sorted;
    names starting with ``_`` or ``.`` are skipped, as Spark does."""
    fs, hpath = _hadoop(spark, path)
    roots = fs.globStatus(hpath) if has_glob(path) else [fs.getFileStatus(hpath)]
    files = []
    for status in roots or []:
        if status.isFile():
            files.append(str(status.getPath().toString()))
            continue
        it = fs.listFiles(status.getPath(), True)
        while it.hasNext():
            p = it.next().getPath()
            relative = str(p.toString())[len(str(status.getPath().toString())) :]
            if not any(part[:1] in ("_", ".") for part in relative.split("/") if part):
                files.append(str(p.toString()))
    return sorted(files)


def parquet_footer_types(spark, file: str) -> dict[str, str]:
    """Column name to its Parquet type as the footer says (``INT64``, ``INT32 (INTEGER(
    32,true))``, ``INT64 (TIMESTAMP(NANOS,false))``...); nested columns by their name."""
    from spark_cf.errors import InputError

    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    try:
        reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(
            jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(
                jvm.org.apache.hadoop.fs.Path(file), conf
            )
        )
    except Exception as exc:  # noqa: BLE001 - Py4J gives the Java exception
        log.debug("footer of %s", file, exc_info=True)
        raise InputError(
            f"cannot read the Parquet footer of {file}: {spark_error_message(exc)}; "
            f"it is not Parquet or is truncated"
        ) from None
    try:
        schema = reader.getFooter().getFileMetaData().getSchema()
    finally:
        reader.close()
    types = {}
    for fld in schema.getFields():
        if not fld.isPrimitive():
            types[str(fld.getName())] = "GROUP"
            continue
        name = str(fld.asPrimitiveType().getPrimitiveTypeName().name())
        logical = fld.getLogicalTypeAnnotation()
        types[str(fld.getName())] = f"{name} ({logical.toString()})" if logical else name
    return types


def _is_nanos(parquet_type: str) -> bool:
    return "TIMESTAMP(NANOS" in parquet_type


def widened_type(types: set[str]) -> str | None:
    """The one Spark type that holds every type of ``types`` without loss of meaning:
    integers of any width -> bigint, integers and floating point -> double; None when
    they cannot be reconciled (numbers and strings, for example)."""
    if len(types) == 1:
        return next(iter(types))
    if types <= set(_INTEGRAL):
        return "bigint"
    if types <= set(_NUMERIC):
        return "double"
    return None


@contextmanager
def _nanos_as_long(spark, on: bool):
    """While inferring a schema: nanosecond timestamps as longs (Spark refuses them
    otherwise); reading with the inferred schema then needs no setting."""
    key = "spark.sql.legacy.parquet.nanosAsLong"
    if not on:
        yield
        return
    before = spark.conf.get(key, None)
    spark.conf.set(key, "true")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def _read_inspected(spark, path: str, files: list[str], ids: Collection[str] = ()):
    """Read files whose schemas differ in width, or hold nanosecond timestamps: one read
    per distinct schema, each cast to the widened types, then one union. The columns of
    ``ids`` widen among integers only (an id read as a double would lose digits)."""
    from functools import reduce

    from pyspark.sql import functions as F

    from spark_cf.errors import SchemaError

    footers = {file: parquet_footer_types(spark, file) for file in files}
    groups: dict[tuple, list[str]] = {}
    for file, types in footers.items():
        groups.setdefault(tuple(sorted(types.items())), []).append(file)
    # a folder is the base of its partition columns (day=...), as when Spark reads it whole
    fs, hpath = _hadoop(spark, path)
    folder = not has_glob(path) and fs.getFileStatus(hpath).isDirectory()
    frames = []
    for key, group in groups.items():
        nanos = [name for name, ptype in key if _is_nanos(ptype)]
        reader = spark.read.option("basePath", path) if folder else spark.read
        with _nanos_as_long(spark, bool(nanos)):
            inferred = reader.parquet(*group).schema
        df = reader.schema(inferred).parquet(*group)
        for name in nanos:
            quoted = "`" + name.replace("`", "``") + "`"
            # integer division, floored: a double would lose the nanoseconds' last digits
            micros = F.expr(f"({quoted} - pmod({quoted}, 1000)) div 1000")
            df = df.withColumn(name, F.timestamp_micros(micros))
            log.info(
                "%s: column %s holds nanosecond timestamps, read to the microsecond", group[0], name
            )
        frames.append((group, df))
    columns: dict[str, set[str]] = {}
    for _, df in frames:
        for f in df.schema.fields:
            columns.setdefault(f.name, set()).add(f.dataType.simpleString())
    target = {}
    for name, types in columns.items():
        wide = widened_type(types)
        if name in ids and wide not in (None, "bigint") and len(types) > 1:
            wide = None
        if wide is None:
            seen = "; ".join(
                f"{df.schema[name].dataType.simpleString()} in {group[0]}"
                + (f" (+{len(group) - 1} more)" if len(group) > 1 else "")
                for group, df in frames
                if name in df.columns
            )
            raise SchemaError(
                f"the files of {path} disagree on the type of column {name!r}: {seen}; "
                f"rewrite them with one type"
            )
        if len(types) > 1:
            log.warning(
                "the files of %s disagree on the width of column %s (%s): read as %s",
                path,
                name,
                ", ".join(sorted(types)),
                wide,
            )
        target[name] = wide
    cast = [df.select(*[F.col(c).cast(target[c]).alias(c) for c in df.columns]) for _, df in frames]
    return reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), cast)


def read_parquet(spark, path: str, *, ids: Collection[str] = ()):
    """Read Parquet from a file, a folder, a partitioned dataset or a glob.

    ``ids``: id columns, which files may hold as integers of different widths (read as
    bigint) but not as integers in some files and floating point in others.

    Every file's footer is read first (one parallel job), so unreadable files, an empty
    folder and files that disagree on a column's type are refused here, naming the path;
    columns whose types differ only in width are widened (logged), and nanosecond
    timestamps (pandas' default) are read to the microsecond.

    Raises
    ------
    InputError
        The path does not exist, holds no Parquet files, or a file cannot be read.
    SchemaError
        The files disagree on a column's type beyond width (integers and strings).
    """
    from spark_cf.errors import InputError

    if not matches_any(spark, path):
        raise InputError(f"input path {path} does not exist (or the glob matches nothing)")
    files = parquet_files(spark, path)
    if not files:
        raise InputError(f"no Parquet files in {path} (only empty folders or hidden files)")
    try:
        with reading(path):
            return spark.read.option("mergeSchema", "true").parquet(path)
    except Exception as exc:
        if not _is_input_error(exc, NEEDS_INSPECTION_CLASSES):
            raise
        log.info("%s: %s; reading each file's footer", path, spark_error_class(exc))
    with reading(path):
        return _read_inspected(spark, path, files, ids)


# --------------------------------------------------------------------------- checkpoints
# Checkpoints hold driver-side state (parameters, optimiser state, history), so they live
# on the driver's file system: one ``checkpoint.npz`` replaced atomically each time.

CHECKPOINT_FILE = "checkpoint.npz"


def save_checkpoint(directory: str, fingerprint: str, state: dict[str, Any]) -> str:
    """Write ``state`` (arrays, numbers, the history list) atomically; returns the path.

    ``state["optimizer"]`` is a flat dict of numbers and arrays. The file is written to a
    temporary name in ``directory`` and renamed over the previous checkpoint, so a run
    killed while writing leaves the previous checkpoint intact.
    """
    import os

    import numpy as np

    os.makedirs(directory, exist_ok=True)
    arrays: dict[str, Any] = {
        "w": state["w"],
        "meta": np.array(
            json.dumps(
                {
                    "fingerprint": fingerprint,
                    "iteration": int(state["iteration"]),
                    "rises": int(state["rises"]),
                    "stop_reason": state.get("stop_reason", ""),
                    "history": state["history"],
                }
            )
        ),
    }
    for key, value in state["optimizer"].items():
        arrays[f"opt_{key}"] = np.asarray(value)
    final = os.path.join(directory, CHECKPOINT_FILE)
    tmp = os.path.join(directory, f".{CHECKPOINT_FILE}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    log.info("checkpoint at iteration %d written to %s", state["iteration"], final)
    return final


def load_checkpoint(directory: str, fingerprint: str) -> dict[str, Any] | None:
    """The last checkpoint in ``directory``, or None when there is none.

    Raises
    ------
    CheckpointError
        When the checkpoint is unreadable or was made with another config or input.
    """
    import os

    import numpy as np

    from spark_cf.errors import CheckpointError

    path = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.exists(path):
        log.info("no checkpoint in %s: starting from the beginning", directory)
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            state = {
                "w": data["w"].copy(),
                "optimizer": {
                    key[4:]: (data[key].item() if data[key].ndim == 0 else data[key].copy())
                    for key in data.files
                    if key.startswith("opt_")
                },
            }
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({exc}); delete it to start afresh"
        ) from None
    if meta["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was made with another config or input (fingerprint "
            f"{meta['fingerprint']} != {fingerprint}); point train.checkpoint_dir elsewhere "
            f"or delete it to start afresh"
        )
    state.update(
        iteration=meta["iteration"],
        rises=meta["rises"],
        history=meta["history"],
        stop_reason=meta.get("stop_reason", ""),
    )
    return state


def write_parquet(df, path: str, *, partitions: int | None = None) -> None:
    """Write ``df`` as Parquet at ``path`` inside a staged run folder (not atomic itself)."""
    out = df.coalesce(partitions) if partitions else df
    out.write.mode("overwrite").parquet(path)


def write_bytes(spark, path: str, data: bytes) -> None:
    """Write a small binary file (overwriting)."""
    fs, hpath = _hadoop(spark, path)
    stream = fs.create(hpath, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def row_counts(spark, root: str, tables) -> dict[str, int]:
    """Rows of each Parquet table under ``root`` (from the files' footers)."""
    return {name: spark.read.parquet(f"{root}/{name}").count() for name in tables}
