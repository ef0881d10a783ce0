"""Pre-flight: check every path a run will write or read later, before it reads the ratings.

A nightly run that cannot write its output should fail in seconds, not after hours of
ingest and training. The checks here touch each path once, cheaply (a probe file created
and deleted, a footer or a small JSON read), and raise a :class:`~spark_cf.errors.
SparkCFError` naming the config key and the path, so the job exits 2 with one line.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid

from spark_cf import storage
from spark_cf.config import Config, ModelConfig, TrainConfig
from spark_cf.errors import (
    ModelError,
    PathError,
    SchemaError,
    SparkCFError,
    spark_error_message,
)
from spark_cf.schema import ITEM, USER

log = logging.getLogger(__name__)

PROBE_PREFIX = ".spark-cf-probe-"


def parent(path: str) -> str:
    """The folder that holds ``path`` ("." for a bare relative name)."""
    head = path.rstrip("/").rpartition("/")[0]
    return head or ("/" if path.startswith("/") else ".")


def _probe(spark, path: str) -> str:
    """Why the folder ``path`` cannot be written ("" when it can): created if needed
    through Hadoop's FileSystem, then a hidden probe file created and deleted in it."""
    probe = f"{path.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        fs, hpath = storage._hadoop(spark, path)
        if fs.exists(hpath) and not fs.getFileStatus(hpath).isDirectory():
            return "is a file, not a folder"
        if not fs.mkdirs(hpath):
            return "cannot be created"
        storage.write_text(spark, probe, "")
        storage.delete(spark, probe)
    except Exception as exc:  # noqa: BLE001 - Py4J raises the Java exception as is
        log.debug("probe of %s failed", path, exc_info=True)
        return f"is not writable ({spark_error_message(exc)})"
    return ""


def check_writable(spark, key: str, path: str) -> None:
    """The folder ``path`` (created if needed) can be written.

    Raises
    ------
    PathError
        When ``path`` is a file, lies under a file, or cannot be written.
    """
    reason = _probe(spark, path)
    if reason:
        raise PathError(f"{key} = {path} {reason}: fix it or point {key} elsewhere")
    log.info("pre-flight: %s = %s is writable", key, path)


def check_parent_writable(spark, key: str, path: str) -> None:
    """The folder that will hold ``path`` (a table or model written beside its staging
    copy) can be written; the error names ``path`` and that folder."""
    folder = parent(path)
    reason = _probe(spark, folder)
    if reason:
        raise PathError(
            f"{key} = {path}: its folder {folder} {reason}: fix it or point {key} elsewhere"
        )
    log.info("pre-flight: the folder of %s = %s is writable", key, path)


def check_local_writable(key: str, path: str) -> None:
    """The same for a folder on the driver's own disk (checkpoints are written there)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=PROBE_PREFIX):
            pass
    except OSError as exc:
        raise PathError(
            f"{key} = {path} is not writable on the driver ({exc.strerror or exc}): fix "
            f"the permissions or point {key} elsewhere"
        ) from None
    log.info("pre-flight: %s = %s is writable", key, path)


def check_model(spark, key: str, path: str, rank: int) -> None:
    """``path`` holds a published model of rank ``rank`` (its parts and its metadata).

    Raises
    ------
    ModelError
        A part is missing, the metadata cannot be read, or the rank is not ``rank``.
    """
    from spark_cf.schema import ITEM_FACTORS, METADATA, USER_FACTORS

    for part in (USER_FACTORS, ITEM_FACTORS, METADATA):
        if not storage.exists(spark, f"{path}/{part}"):
            raise ModelError(
                f"{key} = {path} is not a model: {part} is missing (give the model folder "
                f"of a published run, e.g. output/run_date=2026-11-24/model)"
            )
    try:
        saved = int(storage.read_json(spark, f"{path}/{METADATA}")["rank"])
    except Exception as exc:  # noqa: BLE001 - unreadable JSON, no rank, or an I/O error
        raise ModelError(f"{key} = {path}: cannot read {METADATA} ({exc})") from None
    if saved != rank:
        raise ModelError(
            f"{key}: the model at {path} has rank {saved} but model.rank = {rank}: set "
            f"model.rank = {saved} or {key} = ''"
        )
    log.info("pre-flight: %s = %s is a model of rank %d", key, path, rank)


def check_pairs(spark, key: str, path: str) -> None:
    """``path`` is readable Parquet with the id columns ``user_id`` and ``item_id``."""
    try:
        columns = storage.read_parquet(spark, path).columns
    except SparkCFError as exc:
        raise type(exc)(f"{key}: {exc}") from None
    missing = [c for c in (USER, ITEM) if c not in columns]
    if missing:
        raise SchemaError(
            f"{key} = {path} has no column {missing[0]!r}; it needs {USER} and {ITEM} "
            f"(its columns are {', '.join(columns)})"
        )
    log.info("pre-flight: %s = %s has %s and %s", key, path, USER, ITEM)


def check_training(spark, model: ModelConfig, train: TrainConfig) -> None:
    """The checkpoint folder (when checkpointing or resuming) and the warm-start model
    (a path; ``"latest"`` is resolved by the nightly run itself)."""
    if train.checkpoint_dir and (train.checkpoint_every > 0 or train.resume):
        check_local_writable("train.checkpoint_dir", train.checkpoint_dir)
    if train.warm_start and train.warm_start != "latest":
        check_model(spark, "train.warm_start", train.warm_start, model.rank)


def check_nightly(spark, cfg: Config) -> None:
    """Everything :func:`spark_cf.nightly.run.run_nightly` writes or reads after the ratings:
    ``output.root``, the checkpoint folder, the warm-start model and ``predict.pairs``."""
    check_writable(spark, "output.root", cfg.output.root)
    check_training(spark, cfg.model, cfg.train)
    if cfg.predict.pairs:
        check_pairs(spark, "predict.pairs", cfg.predict.pairs)
