"""Evaluation metrics against values worked out by hand. No JVM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spark_cf.outputs.evaluation import format_table, ranking_metrics, regression_metrics


def test_regression_metrics_skip_nan_predictions():
    m = regression_metrics(np.array([3.0, 4.0, 5.0, 1.0]), np.array([2.0, 4.0, 7.0, np.nan]))
    assert m["count"] == 3
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert m["mae"] == pytest.approx(1.0)
    assert math.isnan(regression_metrics(np.array([1.0]), np.array([np.nan]))["rmse"])


def test_ranking_metrics_by_hand():
    # user 1: relevant {10, 20, 30}; top-3 = 10 (hit), 40, 20 (hit)
    # user 2: relevant {50};         top-3 = 60, 70, 80 (no hit)
    # user 3: no relevant item: not counted
    rec_users = [1, 1, 1, 2, 2, 2, 3, 3, 3]
    rec_items = [10, 40, 20, 60, 70, 80, 10, 20, 30]
    rec_ranks = [1, 2, 3, 1, 2, 3, 1, 2, 3]
    m = ranking_metrics(
        np.array(rec_users),
        np.array(rec_items),
        np.array(rec_ranks),
        np.array([1, 1, 1, 2]),
        np.array([10, 20, 30, 50]),
        k=3,
    )
    assert m["users"] == 2
    assert m["precision_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["recall_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_k"] == pytest.approx((dcg / idcg + 0) / 2)
    ap = (1 / 1 + 2 / 3) / 3
    assert m["map_at_k"] == pytest.approx((ap + 0) / 2)


def test_ranking_metrics_ignore_ranks_beyond_k_and_string_ids():
    m = ranking_metrics(
        np.array(["a", "a"]),
        np.array(["x", "y"]),
        np.array([1, 2]),
        np.array(["a"]),
        np.array(["y"]),
        k=1,
    )
    assert m["precision_at_k"] == 0.0 and m["recall_at_k"] == 0.0
    m = ranking_metrics(
        np.array(["a", "a"]),
        np.array(["x", "y"]),
        np.array([1, 2]),
        np.array(["a"]),
        np.array(["y"]),
        k=2,
    )
    assert m["precision_at_k"] == pytest.approx(0.5)
    assert m["ndcg_at_k"] == pytest.approx((1 / math.log2(3)) / 1.0)


def test_format_table_shows_na():
    text = format_table({"model": {"rmse": 0.9, "map": None}}, ["rmse", "map"])
    assert "0.9000" in text and "n/a" in text
