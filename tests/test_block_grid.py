"""The automatic block grid (spark_cf.training.blocks.choose_blocks), as a pure function:
no JVM. A nightly run on local[2] that uses it is in test_pipeline.py."""

from __future__ import annotations

import pytest

from spark_cf.training.blocks import choose_blocks


@pytest.mark.parametrize(
    ("num_ratings", "cores", "grid"),
    [
        # the rule (README, conf/default.toml): at least one user block per core, about
        # one per million ratings, at most 16; one item block
        (0, 1, (1, 1)),
        (4000, 2, (2, 1)),
        (4000, 8, (8, 1)),
        (2_500_000, 2, (3, 1)),
        (5_000_001, 4, (6, 1)),
        (10**9, 2, (16, 1)),
        (10**9, 64, (16, 1)),
        (100, 64, (16, 1)),
    ],
)
def test_automatic_grid_follows_the_cores_and_the_data_size(num_ratings, cores, grid):
    assert choose_blocks(num_ratings, 0, 0, cores) == grid


def test_configured_numbers_are_kept_whatever_the_data():
    assert choose_blocks(10**9, 5, 7, 2) == (5, 7)
    assert choose_blocks(10, 3, 0, 2) == (3, 1)  # only the item side chosen
    assert choose_blocks(10**9, 0, 4, 2) == (16, 4)  # only the user side chosen
