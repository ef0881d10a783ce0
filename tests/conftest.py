"""Shared fixtures: one local[2] SparkSession for the whole run, and the real data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items) -> None:
    """A test that uses the session is a ``spark`` test even when its module forgot the
    marker, so ``-m "not spark"`` selects only tests that start no JVM."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("spark"):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark():
    from spark_cf.session import build_session

    session = build_session(
        "local[2]",
        "spark-cf-tests",
        {
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
        },
    )
    yield session
    session.stop()


def shared_file(relative: str) -> Path:
    """A file under ../shared/data; fails under CI when missing, skips elsewhere."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"real data set {path} is missing (../shared/data beside the checkout)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
