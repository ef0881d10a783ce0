"""The synthetic rating generator: shape, grid, uniqueness, skew, determinism, Parquet, job."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_cf.data.synthetic import (
    ID_OFFSET,
    SyntheticSpec,
    generate_chunks,
    true_model,
    user_rating_counts,
    write_parquet,
)
from spark_cf.errors import ConfigError

JOB = Path(__file__).resolve().parents[1] / "jobs" / "generate.py"

SMALL = SyntheticSpec(num_users=300, num_items=120, num_ratings=6_000, seed=11)


def generate(spec: SyntheticSpec, chunk_size: int = 1_000_000) -> pa.Table:
    return pa.concat_tables(list(generate_chunks(spec, chunk_size)))


@pytest.fixture(scope="module")
def small() -> pa.Table:
    return generate(SMALL)


def test_schema_and_exact_row_count(small: pa.Table) -> None:
    assert small.num_rows == SMALL.num_ratings
    assert small.schema.names == ["user_id", "item_id", "rating", "timestamp"]
    assert [f.type for f in small.schema] == [pa.int64(), pa.int64(), pa.float64(), pa.int64()]
    assert sum(column.null_count for column in small.columns) == 0


def test_pairs_are_unique(small: pa.Table) -> None:
    users = small["user_id"].to_numpy()
    items = small["item_id"].to_numpy()
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    assert pairs.shape[0] == small.num_rows


def test_pairs_unique_when_nearly_dense() -> None:
    spec = SyntheticSpec(num_users=40, num_items=30, num_ratings=1_150, popularity_skew=2.0)
    table = generate(spec, chunk_size=100)
    pairs = set(zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True))
    assert table.num_rows == 1_150
    assert len(pairs) == 1_150


def test_fully_dense_matrix_has_every_pair() -> None:
    spec = SyntheticSpec(num_users=20, num_items=15, num_ratings=300)
    table = generate(spec)
    pairs = set(zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True))
    expected_users = set(range(ID_OFFSET, ID_OFFSET + 20))
    expected_items = set(range(ID_OFFSET, ID_OFFSET + 15))
    assert pairs == {(u, i) for u in expected_users for i in expected_items}


def test_ratings_on_grid_and_in_range(small: pa.Table) -> None:
    ratings = small["rating"].to_numpy()
    assert ratings.min() >= SMALL.rating_min
    assert ratings.max() <= SMALL.rating_max
    steps = (ratings - SMALL.rating_min) / SMALL.rating_step
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    assert len(np.unique(ratings)) >= 7  # the scale is used, not one value


def test_other_grid() -> None:
    spec = SyntheticSpec(
        num_users=100, num_items=50, num_ratings=2_000, rating_min=1, rating_max=10,
        rating_step=1, noise=2.0,
    )  # fmt: skip
    ratings = generate(spec)["rating"].to_numpy()
    assert set(np.unique(ratings)) <= {float(v) for v in range(1, 11)}
    assert ratings.min() == 1.0
    assert ratings.max() == 10.0


def test_raw_ids_are_not_dense_indices(small: pa.Table) -> None:
    model = true_model(SMALL)
    users = small["user_id"].to_numpy()
    items = small["item_id"].to_numpy()
    assert users.min() >= ID_OFFSET
    assert items.min() >= ID_OFFSET
    assert np.all(model.user_index(users) != users)
    # the ids are a permutation, not index + offset
    assert not np.array_equal(model.user_ids, ID_OFFSET + np.arange(SMALL.num_users))
    assert not np.array_equal(model.item_ids, ID_OFFSET + np.arange(SMALL.num_items))
    assert set(np.unique(items)) <= set(model.item_ids.tolist())


def test_same_seed_same_output_whatever_the_chunk_size(small: pa.Table) -> None:
    chunks = list(generate_chunks(SMALL, chunk_size=1_000))
    assert [c.num_rows for c in chunks] == [1_000] * 6
    assert pa.concat_tables(chunks).equals(small)
    assert generate(SMALL, chunk_size=777).equals(small)


def test_determinism_across_user_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    import spark_cf.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "RANGE_RATINGS", 500)  # force many user ranges
    spec = dataclasses.replace(SMALL, seed=3)
    first = generate(spec, chunk_size=333)
    assert first.equals(generate(spec, chunk_size=5_000))
    pairs = set(zip(first["user_id"].to_pylist(), first["item_id"].to_pylist(), strict=True))
    assert len(pairs) == spec.num_ratings


def test_different_seed_different_output(small: pa.Table) -> None:
    other = generate(dataclasses.replace(SMALL, seed=12))
    assert other.num_rows == small.num_rows
    assert not other.equals(small)
    assert not np.array_equal(other["rating"].to_numpy(), small["rating"].to_numpy())


def test_timestamp_is_optional_and_does_not_change_ratings(small: pa.Table) -> None:
    table = generate(dataclasses.replace(SMALL, with_timestamp=False))
    assert table.schema.names == ["user_id", "item_id", "rating"]
    assert table.equals(small.drop_columns(["timestamp"]))
    times = small["timestamp"].to_numpy()
    assert times.min() >= 1_262_304_000  # 2010-01-01
    assert times.max() < 1_735_689_600  # 2025-01-01
    assert len(np.unique(times)) > small.num_rows // 2


def _top_decile_share(items: np.ndarray) -> float:
    counts = np.sort(np.unique(items, return_counts=True)[1])[::-1]
    top = max(1, len(counts) // 10)
    return counts[:top].sum() / counts.sum()


def test_item_popularity_is_skewed() -> None:
    spec = SyntheticSpec(num_users=2_000, num_items=500, num_ratings=40_000, popularity_skew=1.0)
    table = generate(spec)
    assert _top_decile_share(table["item_id"].to_numpy()) > 0.3
    user_counts = np.unique(table["user_id"].to_numpy(), return_counts=True)[1]
    assert user_counts.max() > 5 * np.median(user_counts)  # users mildly skewed too


def test_zero_skew_is_uniform() -> None:
    spec = SyntheticSpec(num_users=2_000, num_items=500, num_ratings=40_000, popularity_skew=0.0)
    table = generate(spec)
    assert _top_decile_share(table["item_id"].to_numpy()) < 0.14
    user_counts = np.unique(table["user_id"].to_numpy(), return_counts=True)[1]
    assert user_counts.size == spec.num_users
    assert user_counts.max() - user_counts.min() <= 1


def test_user_counts_sum_exactly_and_respect_the_cap() -> None:
    spec = SyntheticSpec(num_users=100, num_items=50, num_ratings=3_000, popularity_skew=3.0)
    counts = user_rating_counts(spec)
    assert counts.sum() == 3_000
    assert counts.min() >= 1
    assert counts.max() == 50


def test_signal_is_learnable(small: pa.Table) -> None:
    model = true_model(SMALL)
    truth = model.score(small["user_id"].to_numpy(), small["item_id"].to_numpy())
    ratings = small["rating"].to_numpy()
    assert np.corrcoef(ratings, truth)[0, 1] > 0.7
    # the low-rank part matters, not only the biases
    users = model.user_index(small["user_id"].to_numpy())
    items = model.item_index(small["item_id"].to_numpy())
    interaction = np.einsum("ij,ij->i", model.user_factors[users], model.item_factors[items])
    assert np.corrcoef(ratings, interaction)[0, 1] > 0.4

    noiseless = generate(dataclasses.replace(SMALL, noise=0.0))
    assert np.corrcoef(noiseless["rating"].to_numpy(), truth)[0, 1] > 0.97
    rounded = np.clip(
        np.round((truth - SMALL.rating_min) / SMALL.rating_step) * SMALL.rating_step
        + SMALL.rating_min,
        SMALL.rating_min,
        SMALL.rating_max,
    )
    np.testing.assert_allclose(noiseless["rating"].to_numpy(), rounded, atol=1e-9)


def test_parquet_round_trip(tmp_path: Path, small: pa.Table) -> None:
    path = tmp_path / "out" / "ratings.parquet"
    rows = write_parquet(SMALL, path, chunk_size=2_500)
    assert rows == SMALL.num_ratings
    back = pq.read_table(path)
    assert back.replace_schema_metadata(None).equals(small)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert b"spark_cf.synthetic_spec" in back.schema.metadata
    assert [p.name for p in path.parent.iterdir()] == ["ratings.parquet"]  # no temp left


def test_parquet_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "ratings.parquet"
    path.write_text("old")
    spec = SyntheticSpec(num_users=10, num_items=10, num_ratings=50, with_timestamp=False)
    assert write_parquet(spec, path) == 50
    assert pq.read_table(path).num_rows == 50


def test_parquet_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        write_parquet(SMALL, tmp_path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_ratings": 301 * 120}, "num_ratings"),
        ({"num_ratings": 0}, "num_ratings"),
        ({"num_users": 0}, "num_users"),
        ({"num_items": -1}, "num_items"),
        ({"true_rank": 0}, "true_rank"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"popularity_skew": -1.0}, "popularity_skew"),
        ({"rating_min": 5.0, "rating_max": 5.0}, "rating_min"),
        ({"rating_step": 0.0}, "rating_step"),
        ({"rating_step": 0.4}, "rating_step"),
        ({"seed": -1}, "seed"),
        ({"num_users": 2.5}, "num_users"),
        ({"with_timestamp": "yes"}, "with_timestamp"),
    ],
)
def test_invalid_spec_names_the_field(changes: dict, field: str) -> None:
    values = dataclasses.asdict(SMALL)
    values.update(changes)
    with pytest.raises(ConfigError, match=field):
        SyntheticSpec(**values)


def test_invalid_chunk_size() -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        next(generate_chunks(SMALL, chunk_size=0))


def _load_job():
    spec = importlib.util.spec_from_file_location("generate_job", JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_writes_the_requested_rows(tmp_path: Path) -> None:
    job = _load_job()
    path = tmp_path / "ratings.parquet"
    code = job.main(
        [
            "--output", str(path), "--num-users", "200", "--num-items", "80",
            "--num-ratings", "3000", "--true-rank", "3", "--seed", "5", "--no-timestamp",
            "--chunk-size", "1000", "--rating-min", "1", "--rating-max", "5",
            "--rating-step", "1", "--log-level", "WARNING",
        ]
    )  # fmt: skip
    assert code == 0
    table = pq.read_table(path)
    assert table.num_rows == 3000
    assert table.schema.names == ["user_id", "item_id", "rating"]
    assert set(table["rating"].to_pylist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    spec = SyntheticSpec(
        num_users=200, num_items=80, num_ratings=3000, true_rank=3, seed=5,
        with_timestamp=False, rating_min=1, rating_max=5, rating_step=1,
    )  # fmt: skip
    assert table.replace_schema_metadata(None).equals(generate(spec))


def test_job_refuses_a_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _load_job()
    path = tmp_path / "ratings.parquet"
    code = job.main(["--output", str(path), "--num-users", "2", "--num-items", "2"])
    assert code == 2
    assert "num_ratings" in capsys.readouterr().err
    assert not path.exists()
