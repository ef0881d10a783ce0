"""The top-N kernel against a brute-force sort, with ties, exclusions and full users."""

from __future__ import annotations

import numpy as np
import pytest

from spark_cf.outputs.recommend import top_n_block


def brute_force(scores: np.ndarray, excluded: set, n: int):
    out = []
    for r, row in enumerate(scores):
        keep = [(-s, j) for j, s in enumerate(row) if (r, j) not in excluded]
        out.append([j for _, j in sorted(keep)[:n]])
    return out


@pytest.mark.parametrize("max_scores", [7, 1 << 24])
def test_top_n_block_equals_a_full_sort_with_ties_and_exclusions(max_scores):
    rng = np.random.default_rng(4)
    rows, items, rank, n = 23, 40, 3, 5
    # small integer factors: many exact ties in the scores
    theta = rng.integers(-2, 3, (rows, rank)).astype(float)
    x = rng.integers(-2, 3, (items, rank)).astype(float)
    offsets = rng.integers(0, 2, items).astype(float)
    bias = rng.integers(0, 2, rows).astype(float)
    pairs = {
        (int(r), int(j)) for r, j in zip(rng.integers(0, rows, 200), rng.integers(0, items, 200))
    }
    pairs |= {(0, j) for j in range(items)}  # user 0 rated everything
    pairs |= {(1, j) for j in range(items - 2)}  # user 1 has two items left
    rr = np.array([p[0] for p in pairs])
    ri = np.array([p[1] for p in pairs])
    best_i, best_s, counts = top_n_block(theta, bias, x, offsets, rr, ri, n, max_scores)
    scores = theta @ x.T + offsets + bias[:, None]
    expected = brute_force(scores, pairs, n)
    assert counts[0] == 0 and counts[1] == 2
    for r in range(rows):
        got = best_i[r, : counts[r]].tolist()
        assert got == expected[r], r
        np.testing.assert_array_equal(best_s[r, : counts[r]], scores[r, got])
