"""The one scoring rule: every path that scores (the model, Spark predictions, Spark top-N,
the NumPy reference, the two forms of spark_cf.model.scoring) gives the numbers of the
rule written out term by term here, on a model with biases and mean normalisation."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from spark_cf.data.indexing import IdIndex
from spark_cf.model.cf_model import CFModel
from spark_cf.model.normalization import Normalization
from spark_cf.model.scoring import item_offsets, score_block, score_pairs
from spark_cf.outputs.recommend import predict, top_n
from spark_cf.reference.numpy_cf import predict as reference_predict
from spark_cf.training.params import Layout

NUM_USERS, NUM_ITEMS, RANK = 9, 7, 3
# the block form sums the dot product with BLAS, in another order than the pairwise form
RTOL = 1e-13


def make_model() -> CFModel:
    rng = np.random.default_rng(12)
    index = IdIndex(
        pa.array(np.arange(NUM_USERS, dtype=np.int64) * 10 + 100),
        pa.array([f"item{n:02d}" for n in range(NUM_ITEMS)]),
    )
    return CFModel(
        index=index,
        item_factors=rng.normal(size=(NUM_ITEMS, RANK)),
        user_factors=rng.normal(size=(NUM_USERS, RANK)),
        # both offsets at once: the rule must add every term, whatever training fits
        item_means=rng.uniform(1.0, 5.0, NUM_ITEMS),
        global_mean=0.37,
        item_bias=rng.normal(size=NUM_ITEMS),
        user_bias=rng.normal(size=NUM_USERS),
    )


def rule(model: CFModel, u: int, i: int) -> float:
    """The README's rule, term by term, in plain Python (-1: a user the model never saw)."""
    s = float(model.item_means[i]) + model.global_mean + float(model.item_bias[i])
    if u >= 0:
        s += math.fsum(
            float(a) * float(b) for a, b in zip(model.user_factors[u], model.item_factors[i])
        )
        s += float(model.user_bias[u])
    return s


def all_pairs():
    users = np.repeat(np.arange(NUM_USERS), NUM_ITEMS)
    items = np.tile(np.arange(NUM_ITEMS), NUM_USERS)
    return users, items


def test_the_model_scores_every_pair_and_cold_start_by_the_rule():
    model = make_model()
    users, items = all_pairs()
    users = np.concatenate([users, np.full(NUM_ITEMS, -1)])
    items = np.concatenate([items, np.arange(NUM_ITEMS)])
    expected = [rule(model, u, i) for u, i in zip(users, items)]
    np.testing.assert_allclose(model.predict_indices(users, items), expected, rtol=RTOL)
    # an item the model never saw scores NaN
    assert np.isnan(model.predict_indices(np.array([0]), np.array([-1]))[0])


def test_the_pairwise_and_the_block_form_agree_with_the_rule():
    model = make_model()
    offsets = item_offsets(model.item_means, model.global_mean, model.item_bias)
    block = score_block(model.user_factors, model.user_bias, model.item_factors, offsets)
    users, items = all_pairs()
    pairs = score_pairs(
        model.user_factors, model.user_bias, model.item_factors, offsets, users, items
    )
    expected = np.array([rule(model, u, i) for u, i in zip(users, items)])
    np.testing.assert_allclose(block.ravel(), expected, rtol=RTOL)
    np.testing.assert_allclose(pairs, expected, rtol=RTOL)
    # without biases nothing is added for them
    plain = score_pairs(model.user_factors, None, model.item_factors, offsets, users, items)
    np.testing.assert_allclose(plain, expected - model.user_bias[users], rtol=RTOL)


def test_the_reference_predicts_by_the_rule():
    model = make_model()
    layout = Layout(NUM_ITEMS, NUM_USERS, RANK, biases=True)
    w = layout.pack(model.item_factors, model.user_factors, model.item_bias, model.user_bias)
    users, items = all_pairs()
    norm = Normalization(model.item_means, model.global_mean)
    expected = [rule(model, u, i) for u, i in zip(users, items)]
    np.testing.assert_allclose(
        reference_predict(layout, w, items, users, norm), expected, rtol=RTOL
    )
    # on the normalised scale (what the objective sees) the offsets are left out
    centred = np.array(expected) - norm.offsets(items)
    np.testing.assert_allclose(reference_predict(layout, w, items, users), centred, rtol=1e-12)


@pytest.mark.spark
def test_spark_predictions_and_top_n_score_by_the_rule(spark):
    model = make_model()
    user_ids = model.index.user_ids.to_pylist()
    item_ids = model.index.item_ids.to_pylist()
    unknown_user = 7
    rows = [(u, i) for u in user_ids for i in item_ids] + [(unknown_user, item_ids[2])]
    pairs = spark.createDataFrame(rows, "user_id long, item_id string")
    got = {(r.user_id, r.item_id): r.prediction for r in predict(pairs, model).collect()}
    assert len(got) == len(rows)
    for (u, i), value in got.items():
        uu = user_ids.index(u) if u in user_ids else -1
        assert value == pytest.approx(rule(model, uu, item_ids.index(i)), rel=RTOL), (u, i)

    n = 4
    recs = top_n(spark, model, None, n=n, block_size=4).collect()
    assert len(recs) == NUM_USERS * n
    for r in recs:
        u, i = user_ids.index(r.user_id), item_ids.index(r.item_id)
        assert r.score == pytest.approx(rule(model, u, i), rel=RTOL)
    for u in range(NUM_USERS):
        scores = sorted((-rule(model, u, i), i) for i in range(NUM_ITEMS))[:n]
        mine = sorted((r.rank, r.item_id) for r in recs if r.user_id == user_ids[u])
        assert [item for _, item in mine] == [item_ids[i] for _, i in scores]
