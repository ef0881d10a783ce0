"""spark_cf.ml: the Estimator and Model against ALS's contract, pyspark.ml's tuning and
persistence, and the nightly job's outputs. Tiny data and few iterations: the fitted
models are shared through module-scoped fixtures."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.feature import SQLTransformer
from pyspark.ml.recommendation import ALS
from pyspark.ml.tuning import CrossValidator, CrossValidatorModel, ParamGridBuilder
from pyspark.sql import functions as F
from pyspark.sql import types as T

from spark_cf.config import load_config
from spark_cf.data.synthetic import SyntheticSpec, generate_chunks
from spark_cf.errors import ConfigError, InputError, SchemaError
from spark_cf.ml import SparkCF, SparkCFModel
from spark_cf.nightly.run import run_nightly

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parent.parent
#: the same settings for every fit below (and for the nightly run compared with them)
PARAMS = dict(
    rank=3,
    maxIter=6,
    regParam=5.0,
    seed=7,
    numUserBlocks=2,
    numItemBlocks=1,
    userCol="user",
    itemCol="item",
    ratingCol="rating",
)


@pytest.fixture(scope="module")
def ratings_path(tmp_path_factory) -> str:
    """60 users and 40 items with 4-digit ids (so their strings sort as the numbers do)."""
    spec = SyntheticSpec(
        num_users=60, num_items=40, num_ratings=900, true_rank=2, seed=3, with_timestamp=False
    )
    table = pa.concat_tables(generate_chunks(spec))
    table = pa.table(
        {
            "user": table.column("user_id").cast(pa.int32()),
            "item": table.column("item_id").cast(pa.int32()),
            "rating": table.column("rating"),
        }
    )
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("ml") / "ratings.parquet"
    pq.write_table(table, path)
    return str(path)


@pytest.fixture(scope="module")
def ratings(spark, ratings_path):
    return spark.read.parquet(ratings_path)


@pytest.fixture(scope="module")
def model(ratings) -> SparkCFModel:
    return SparkCF(**PARAMS).fit(ratings)


def predictions_of(df, column: str = "prediction") -> dict:
    return {(r["user"], r["item"]): r[column] for r in df.collect()}


def same_bits(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# ------------------------------------------------------------------ ALS's contract


def shape(dtype: T.DataType) -> str:
    """A schema's names and nesting, with ALS's float32 read as our float64."""
    return dtype.simpleString().replace(":float", ":double").replace("<float>", "<double>")


def als_workflow(estimator_class, train, test) -> dict[str, str]:
    """What code written against ALS does; runs unchanged with either class."""
    estimator = estimator_class(
        rank=3,
        maxIter=2,
        regParam=0.1 if estimator_class is ALS else 5.0,
        seed=7,
        numUserBlocks=2,
        numItemBlocks=1,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        coldStartStrategy="drop",
    )
    fitted = estimator.fit(train)
    predictions = fitted.transform(test)
    rmse = RegressionEvaluator(
        metricName="rmse", labelCol="rating", predictionCol="prediction"
    ).evaluate(predictions)
    assert math.isfinite(rmse)
    outputs = {
        "transform": predictions,
        "users": fitted.recommendForAllUsers(3),
        "items": fitted.recommendForAllItems(2),
        "user_subset": fitted.recommendForUserSubset(test.select("user").distinct(), 2),
        "item_subset": fitted.recommendForItemSubset(test.select("item").distinct(), 2),
        "user_factors": fitted.userFactors.select("id", "features"),
        "item_factors": fitted.itemFactors.select("id", "features"),
    }
    shapes = {name: shape(df.schema) for name, df in outputs.items()}
    shapes["rank"] = str(fitted.rank)
    return shapes


def test_code_written_for_als_runs_unchanged_and_gives_the_same_output_schemas(ratings):
    train, test = ratings.randomSplit([0.8, 0.2], seed=1)
    als = als_workflow(ALS, train, test)
    ours = als_workflow(SparkCF, train, test)
    assert ours == als
    assert als["users"] == (
        "struct<user:int,recommendations:array<struct<item:int,rating:double>>>"
    )


def test_the_defaults_are_the_configs_and_explain_params_warns_about_the_scale():
    from spark_cf.config import Config
    from spark_cf.ml.params import DEFAULT_REG_PARAM

    cf, cfg = SparkCF(), Config()
    assert (cf.getRank(), cf.getMaxIter(), cf.getTol()) == (
        cfg.model.rank,
        cfg.train.max_iter,
        cfg.train.tol,
    )
    # the one exception: model.reg = "auto" chooses on a held-out split the Estimator has
    # not, so regParam's default is a number
    assert cfg.model.reg == "auto" and cf.getRegParam() == DEFAULT_REG_PARAM == 10.0
    assert (cf.getSeed(), cf.getOptimizer(), cf.getBiases(), cf.getInitScale()) == (
        cfg.model.seed,
        cfg.train.optimizer,
        cfg.model.biases,
        cfg.model.init_scale,
    )
    assert (cf.getUserCol(), cf.getItemCol(), cf.getRatingCol()) == (
        cfg.input.user_col,
        cfg.input.item_col,
        cfg.input.rating_col,
    )
    assert cf.getColdStartStrategy() == "nan" and not cf.isDefined(cf.initialModel)
    explained = cf.explainParams()
    assert "regParam: regularisation weight lambda (>= 0) on the SUMMED cost" in explained
    with pytest.raises(TypeError):
        SparkCF(initialModel="output/model")


# ------------------------------------------------------------------ fitting and scoring


def test_transform_scores_each_pair_with_the_models_rule_and_keeps_every_column(ratings, model):
    cf = model.cfModel
    rows = ratings.collect()
    got = predictions_of(model.transform(ratings))
    assert len(got) == len(rows)
    users = cf.index.user_positions(pa.array([r["user"] for r in rows], pa.int32()))
    items = cf.index.item_positions(pa.array([r["item"] for r in rows], pa.int32()))
    want = (
        np.einsum("nk,nk->n", cf.user_factors[users], cf.item_factors[items]) + cf.item_means[items]
    )
    np.testing.assert_allclose(
        [got[(r["user"], r["item"])] for r in rows], want, rtol=1e-12, atol=1e-12
    )
    assert model.transform(ratings).columns == ["user", "item", "rating", "prediction"]


def test_cold_start_strategies_nan_drop_and_mean(spark, ratings, model):
    pairs = spark.createDataFrame(
        [(1000, 1000), (99, 1000), (1000, 99), (99, 99)], "user int, item int"
    )
    item_means = ratings.groupBy("item").agg(F.avg("rating").alias("m")).collect()
    by_item = {r["item"]: r["m"] for r in item_means}
    overall = ratings.agg(F.avg("rating")).first()[0]
    nan = predictions_of(model.copy({model.coldStartStrategy: "nan"}).transform(pairs))
    assert not math.isnan(nan[(1000, 1000)])
    assert all(math.isnan(nan[p]) for p in [(99, 1000), (1000, 99), (99, 99)])
    drop = predictions_of(model.copy({model.coldStartStrategy: "drop"}).transform(pairs))
    assert list(drop) == [(1000, 1000)] and drop[(1000, 1000)] == nan[(1000, 1000)]
    mean = predictions_of(model.copy({model.coldStartStrategy: "mean"}).transform(pairs))
    assert mean[(1000, 1000)] == nan[(1000, 1000)]
    assert mean[(99, 1000)] == pytest.approx(by_item[1000], rel=1e-12)  # the item's mean
    assert mean[(1000, 99)] == pytest.approx(overall, rel=1e-12)  # the training mean
    assert mean[(99, 99)] == pytest.approx(overall, rel=1e-12)
    with pytest.raises(ConfigError, match="coldStartStrategy must be one of nan, drop, mean"):
        SparkCF(coldStartStrategy="zero")


def test_summary_holds_the_objective_history_and_the_last_train_rmse_is_the_models(ratings, model):
    summary = model.summary
    costs = summary.objectiveHistory
    assert summary.totalIterations == PARAMS["maxIter"] == len(costs) - 1
    assert all(b < a for a, b in zip(costs, costs[1:]))
    assert len(summary.gradientNormHistory) == len(costs)
    assert all(math.isnan(v) for v in summary.validationRmseHistory)  # nothing held out
    rmse = RegressionEvaluator(labelCol="rating").evaluate(model.transform(ratings))
    assert summary.trainRmseHistory[-1] == pytest.approx(rmse, rel=1e-9)


def test_factors_are_dataframes_of_id_and_features(model):
    cf = model.cfModel
    users = model.userFactors.orderBy("id").collect()
    items = model.itemFactors.orderBy("id").collect()
    assert model.userFactors.columns == ["id", "features"]
    assert model.itemFactors.columns == ["id", "features", "mean"]
    assert [r["id"] for r in users] == cf.index.user_ids.to_pylist()
    np.testing.assert_array_equal([r["features"] for r in users], cf.user_factors)
    np.testing.assert_array_equal([r["features"] for r in items], cf.item_factors)
    np.testing.assert_array_equal([r["mean"] for r in items], cf.item_means)


def nested(df, key: str, other: str) -> dict:
    return {r[key]: [(e[other], e["rating"]) for e in r["recommendations"]] for r in df.collect()}


def test_recommendations_rank_by_the_predicted_score_and_exclude_rated_pairs(spark, ratings, model):
    cf = model.cfModel
    scores = cf.user_factors @ cf.item_factors.T + cf.item_means  # (users, items)
    user_ids = cf.index.user_ids.to_pylist()
    item_ids = cf.index.item_ids.to_pylist()
    rated = {(r["user"], r["item"]) for r in ratings.collect()}
    users = nested(model.recommendForAllUsers(4, excludeRated=ratings), "user", "item")
    # two users rated every item: nothing is left to recommend them, so they get no row
    full = {u for u in user_ids if sum((u, i) in rated for i in item_ids) == len(item_ids)}
    assert len(full) == 2 and sorted(users) == [u for u in user_ids if u not in full]
    for u, recs in users.items():
        row = scores[user_ids.index(u)]
        left = [(i, row[k]) for k, i in enumerate(item_ids) if (u, i) not in rated]
        want = sorted(left, key=lambda p: (-p[1], p[0]))[:4]
        assert [i for i, _ in recs] == [i for i, _ in want], u
        np.testing.assert_allclose([s for _, s in recs], [s for _, s in want], rtol=1e-12)
    items = nested(model.recommendForAllItems(3), "item", "user")
    assert sorted(items) == item_ids
    for i, recs in items.items():
        col = scores[:, item_ids.index(i)]
        best = np.argsort(-col, kind="stable")[:3]
        assert [u for u, _ in recs] == [user_ids[b] for b in best], i
        np.testing.assert_allclose([s for _, s in recs], col[best], rtol=1e-12)
    subset = spark.createDataFrame([(1003,), (1001,), (1003,), (5,)], "user int")
    some = nested(model.recommendForUserSubset(subset, 4, excludeRated=ratings), "user", "item")
    assert some == {u: users[u] for u in (1001, 1003)}  # unknown user 5: no row, as ALS


def test_recommend_for_user_subset_equals_the_nightly_jobs_top_n(
    spark, tmp_path, ratings_path, model
):
    wanted = [1002, 1010, 1033]
    cfg = load_config(
        str(ROOT / "conf" / "default.toml"),
        [
            f"input.path={ratings_path!r}",
            "input.user_col='user'",
            "input.item_col='item'",
            f"model.rank={PARAMS['rank']}",
            f"model.reg={PARAMS['regParam']}",
            f"model.seed={PARAMS['seed']}",
            f"train.max_iter={PARAMS['maxIter']}",
            f"train.num_user_blocks={PARAMS['numUserBlocks']}",
            f"train.num_item_blocks={PARAMS['numItemBlocks']}",
            "evaluate.holdout_fraction=0.0",
            "ranking.enabled=false",  # top-N from the ratings model, as SparkCF's
            f"recommend.users={wanted}",
            "recommend.top_n=4",
            "output.run_date='2026-11-25'",
            f"output.root={str(tmp_path / 'out')!r}",
        ],
    )
    outcome = run_nightly(spark, cfg)
    published = spark.read.parquet(f"{outcome.path}/top_n").orderBy("user_id", "rank").collect()
    nightly: dict = {}
    for r in published:
        nightly.setdefault(r["user_id"], []).append((r["item_id"], r["score"]))
    subset = spark.createDataFrame([(u,) for u in wanted], "user int")
    ours = nested(
        model.recommendForUserSubset(subset, 4, excludeRated=spark.read.parquet(ratings_path)),
        "user",
        "item",
    )
    assert ours == nightly  # the same model, the same lists, the same bits


def test_string_ids_end_to_end_give_the_int_models_predictions(spark, ratings, model):
    as_text = ratings.select(
        F.format_string("u%d", "user").alias("user"),
        F.format_string("i%d", "item").alias("item"),
        "rating",
    )
    text_model = SparkCF(**PARAMS).fit(as_text)
    assert text_model.userFactors.schema["id"].dataType == T.StringType()
    got = predictions_of(text_model.transform(as_text))
    want = predictions_of(model.transform(ratings))
    assert got == {(f"u{u}", f"i{i}"): p for (u, i), p in want.items()}
    recs = nested(text_model.recommendForAllUsers(2), "user", "item")
    base = nested(model.recommendForAllUsers(2), "user", "item")
    assert recs == {f"u{u}": [(f"i{i}", s) for i, s in v] for u, v in base.items()}


def test_bad_rows_are_refused_before_training_naming_the_column_and_the_count(spark):
    df = spark.createDataFrame(
        [(1, 1, 4.0), (None, 2, 3.0), (2, 1, float("nan")), (3, 2, float("nan")), (2, 2, 1.0)],
        "user long, item long, rating double",
    )
    cf = SparkCF(userCol="user", itemCol="item")
    with pytest.raises(
        InputError, match=r"1 rows with null or empty user, 2 rows with rating is NaN"
    ):
        cf.fit(df)
    with pytest.raises(SchemaError, match=r"no column 'usr' \(userCol\)"):
        SparkCF(userCol="usr", itemCol="item").fit(df)
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        SparkCF(userCol="user", itemCol="item", rank=0).fit(df)


def test_a_regparam_on_als_scale_logs_a_warning_naming_it(ratings, caplog):
    with caplog.at_level(logging.WARNING, logger="spark_cf"):
        SparkCF(**{**PARAMS, "regParam": 0.1, "maxIter": 1}).fit(ratings)
    warned = [r.getMessage() for r in caplog.records if "regParam = 0.1" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    # 900 ratings over 60 users and 40 items: 18 per row, so ALS's 0.1 would be about 1.8
    assert "18.0 ratings per user or item" in warned[0] and "1.8 for ALS's 0.1" in warned[0]


def test_the_models_regparam_does_not_warn(ratings, caplog):
    from spark_cf.training.fit import warn_reg

    with caplog.at_level(logging.WARNING, logger="spark_cf"):
        assert not warn_reg(PARAMS["regParam"], 900, 60, 40, "regParam")
        assert warn_reg(0.1, 900, 60, 40, "regParam")


def test_a_warm_start_from_a_model_starts_at_its_final_cost(ratings, model, tmp_path):
    warm = SparkCF(**{**PARAMS, "maxIter": 1}, initialModel=model)
    again = warm.fit(ratings)
    assert again.summary.objectiveHistory[0] == pytest.approx(
        model.summary.objectiveHistory[-1], rel=1e-12
    )
    warm.write().save(str(tmp_path / "est"))
    loaded = SparkCF.load(str(tmp_path / "est"))
    assert (
        loaded.getInitialModel().cfModel.user_factors.tolist()
        == model.cfModel.user_factors.tolist()
    )
    assert loaded.getRank() == PARAMS["rank"] and loaded.uid == warm.uid


# ------------------------------------------------------------------ persistence and tuning


def test_save_and_load_give_bit_identical_predictions(spark, ratings, model, tmp_path):
    path = str(tmp_path / "model")
    model.write().overwrite().save(path)
    model.write().overwrite().save(path)  # overwrite replaces it
    loaded = SparkCFModel.load(path)
    assert loaded.uid == model.uid and loaded.getUserCol() == "user"
    pairs = ratings.union(spark.createDataFrame([(5, 1000, 1.0), (1000, 5, 1.0)], ratings.schema))
    for strategy in ("nan", "mean"):
        a = predictions_of(model.copy({model.coldStartStrategy: strategy}).transform(pairs))
        b = predictions_of(loaded.copy({loaded.coldStartStrategy: strategy}).transform(pairs))
        assert a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    assert loaded.summary.objectiveHistory == model.summary.objectiveHistory
    assert loaded.ratingMean == model.ratingMean


def test_a_saved_pipeline_with_a_sql_transformer_loads_and_predicts(spark, ratings, tmp_path):
    prep = SQLTransformer(statement="SELECT user, item, rating * 2 AS rating FROM __THIS__")
    pipeline = Pipeline(stages=[prep, SparkCF(**{**PARAMS, "maxIter": 3})])
    pipeline.write().save(str(tmp_path / "pipeline"))
    fitted = Pipeline.load(str(tmp_path / "pipeline")).fit(ratings)
    fitted.write().save(str(tmp_path / "fitted"))
    loaded = PipelineModel.load(str(tmp_path / "fitted"))
    assert isinstance(loaded.stages[1], SparkCFModel)
    a = predictions_of(fitted.transform(ratings))
    b = predictions_of(loaded.transform(ratings))
    assert a == b
    # the SQL stage ran before the fit: the model predicts on the doubled scale
    assert np.mean(list(b.values())) > 1.5 * ratings.agg(F.avg("rating")).first()[0]


@pytest.mark.extended
def test_cross_validator_over_regparam_picks_what_a_hand_written_loop_picks(
    spark, ratings, tmp_path
):
    """(extended: about 40 s; test_a_saved_pipeline_with_a_sql_transformer_loads_and_predicts
    and test_code_written_for_als_runs_unchanged_and_gives_the_same_output_schemas keep
    SparkCF's pyspark.ml coverage.)"""
    folded = ratings.withColumn("fold", (F.abs(F.xxhash64("user", "item")) % 2).cast("int"))
    grid_values = [0.5, 50.0]
    cf = SparkCF(**{**PARAMS, "maxIter": 2}, coldStartStrategy="mean")
    evaluator = RegressionEvaluator(metricName="rmse", labelCol="rating")
    cv = CrossValidator(
        estimator=cf,
        estimatorParamMaps=ParamGridBuilder().addGrid(cf.regParam, grid_values).build(),
        evaluator=evaluator,
        foldCol="fold",
        numFolds=2,
    )
    cv_model = cv.fit(folded)
    by_hand = []
    for reg in grid_values:
        rmses = []
        for fold in (0, 1):
            train = folded.where(F.col("fold") != fold)
            test = folded.where(F.col("fold") == fold)
            fitted = SparkCF(**{**PARAMS, "maxIter": 2, "regParam": reg}, coldStartStrategy="mean")
            rmses.append(evaluator.evaluate(fitted.fit(train).transform(test)))
        by_hand.append(float(np.mean(rmses)))
    assert cv_model.avgMetrics == pytest.approx(by_hand, rel=1e-12)
    best = grid_values[int(np.argmin(by_hand))]
    assert cv_model.bestModel.summary.totalIterations == 2
    assert best == cv.getEstimatorParamMaps()[int(np.argmin(cv_model.avgMetrics))][cf.regParam]
    cv_model.write().save(str(tmp_path / "cv"))
    loaded = CrossValidatorModel.load(str(tmp_path / "cv"))
    assert loaded.avgMetrics == cv_model.avgMetrics
    a = predictions_of(cv_model.transform(ratings))
    assert predictions_of(loaded.transform(ratings)) == a


# ------------------------------------------------------------------ the README


def use_it_like_als_example() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Use it like ALS")
    block = re.search(r"```python\n(.*?)```", readme[start:], flags=re.S)
    assert block is not None, "README: no python block after 'Use it like ALS'"
    return block.group(1)


def test_the_readmes_use_it_like_als_example_runs(spark, capsys):
    namespace: dict = {}
    exec(compile(use_it_like_als_example(), "README.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    rmse = namespace["rmse"]
    assert 0 < rmse < 1.5, printed
    assert f"{rmse:.3f}" in printed
    top = namespace["top"].collect()
    assert len(top) == namespace["ratings"].select("user").distinct().count()
    assert all(len(r["recommendations"]) == 5 for r in top)
    assert isinstance(namespace["same"], SparkCFModel)


def test_objective_ranking_minimises_the_dense_implicit_cost_and_scores_by_features_alone(
    spark, ratings
):
    from spark_cf.reference.numpy_cf import ranking_cost_and_gradients

    params = dict(PARAMS, maxIter=12, objective="ranking", alpha=0.5)
    model = SparkCF(**params).fit(ratings)
    cf = model.cfModel
    assert not cf.biases and not cf.item_means.any() and cf.global_mean == 0.0
    # the reported J is the dense implicit cost (every user x item pair, confidence
    # 1 + alpha r on the rated ones) at the returned factors, computed independently
    pairs = ratings.groupBy("user", "item").agg(F.mean("rating").alias("r")).toPandas()
    users = cf.index.user_positions(pa.array(pairs["user"].to_numpy()))
    items = cf.index.item_positions(pa.array(pairs["item"].to_numpy()))
    J, *_ = ranking_cost_and_gradients(
        cf.item_factors, cf.user_factors, items, users, pairs["r"].to_numpy(), 5.0, 0.5
    )
    history = model.summary.objectiveHistory
    assert history[-1] == pytest.approx(J, rel=1e-9) and history[-1] < history[0]
    # transform scores a pair theta_u . x_i, a preference, not a rating
    got = predictions_of(model.transform(ratings.select("user", "item")))
    for (u, i), p in list(got.items())[:50]:
        want = (
            cf.user_factors[cf.index.user_positions(pa.array([u]))[0]]
            @ (cf.item_factors[cf.index.item_positions(pa.array([i]))[0]])
        )
        assert p == pytest.approx(float(want), rel=1e-12, abs=1e-12)
    with pytest.raises(ConfigError, match="objective"):
        SparkCF(objective="implicit")
    with pytest.raises(ConfigError, match="alpha"):
        SparkCF(**dict(params, alpha=-1.0)).fit(ratings)
