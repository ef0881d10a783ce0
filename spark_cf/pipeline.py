"""The stages the jobs wire together; each takes the session, config parts and data.

Kept apart from the jobs so that tests run them without ``spark-submit``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from spark_cf.config import Config
from spark_cf.dataset import TrainingData, prepare
from spark_cf.ingest import IngestResult, ingest

log = logging.getLogger(__name__)


@contextmanager
def stage(name: str, timings: dict[str, float]):
    """Log a stage's start and end and record its seconds in ``timings``."""
    log.info("stage %s: started", name)
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - started, 3)
        log.info("stage %s: %.1f s", name, timings[name])


def ingest_and_prepare(
    spark, cfg: Config, timings: dict[str, float]
) -> tuple[IngestResult, TrainingData]:
    """Read and validate the ratings, then index them and tag the held-out split."""
    with stage("ingest", timings):
        ingested = ingest(spark, cfg.input)
    with stage("prepare", timings):
        data = prepare(
            ingested.ratings,
            holdout_fraction=cfg.evaluate.holdout_fraction,
            split=cfg.evaluate.split,
            seed=cfg.model.seed,
            mean_normalization=cfg.model.mean_normalization,
            biases=cfg.model.biases,
        )
    return ingested, data
