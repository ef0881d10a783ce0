"""The ALS side of the end-to-end benchmark: the nightly job's steps with Spark MLlib ALS.

    spark-submit benchmarks/als_nightly.py --config conf/default.toml --set ... --als-reg 0.2

The same ingest (validation, quarantine, duplicates) and held-out split as
``jobs/nightly.py``, then ALS (rank ``model.rank``, 10 iterations, ``--als-reg``, a
checkpoint folder), the held-out RMSE, predictions for the held-out pairs (users or items
ALS cannot score get the training mean), ``recommendForAllUsers(recommend.top_n)`` in the
same long form (user_id, rank, item_id, score), the factors, the quarantine and a
metrics.json, staged and published as one folder like the nightly job's run. Used by
benchmarks/vs_als.py; not part of the library.
"""

from __future__ import annotations

import sys
import tempfile
import time

from pyspark.ml.recommendation import ALS
from pyspark.sql import functions as F

from spark_cf import cli, storage
from spark_cf.nightly.run import ingest_and_prepare, run_date, stage
from spark_cf.outputs.publish import Publication
from spark_cf.schema import IS_VAL, ITEM, ITEM_IDX, RATING, USER, USER_IDX
from spark_cf.session import build_session


def run(spark, cfg, reg: float, pub: Publication, iterations: int = 10) -> str:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    final, staged = pub.path, pub.staging
    spark.sparkContext.setCheckpointDir(tempfile.mkdtemp(prefix="als-checkpoints-"))
    ingested, data = ingest_and_prepare(spark, cfg, timings)
    users = data.ratings.select(USER, USER_IDX).distinct()
    items = data.ratings.select(ITEM, ITEM_IDX).distinct()
    with stage("train", timings):
        als = ALS(
            rank=cfg.model.rank,
            maxIter=iterations,
            regParam=reg,
            userCol=USER_IDX,
            itemCol=ITEM_IDX,
            ratingCol=RATING,
            coldStartStrategy="nan",
            seed=cfg.model.seed,
            checkpointInterval=10,
        )
        model = als.fit(data.ratings.where(~F.col(IS_VAL)))
    with stage("evaluate", timings):
        held = model.transform(data.ratings.where(F.col(IS_VAL)))
        pred = F.coalesce(F.nanvl(F.col("prediction"), F.lit(None)), F.lit(data.rating_mean))
        rmse = held.select(F.sqrt(F.avg((pred - F.col(RATING)) ** 2))).first()[0]
    with stage("predict", timings):
        storage.write_parquet(
            held.select(USER, ITEM, pred.alias("prediction")).orderBy(USER, ITEM),
            f"{staged}/predictions",
        )
    with stage("top_n", timings):
        recs = (
            model.recommendForAllUsers(cfg.recommend.top_n)
            .select(USER_IDX, F.posexplode("recommendations").alias("pos", "rec"))
            .select(
                USER_IDX,
                (F.col("pos") + 1).alias("rank"),
                F.col(f"rec.{ITEM_IDX}").alias(ITEM_IDX),
                F.col("rec.rating").cast("double").alias("score"),
            )
            .join(F.broadcast(items), on=ITEM_IDX)
            .join(users, on=USER_IDX)
            .select(USER, "rank", ITEM, "score")
            .orderBy(USER, "rank")
        )
        storage.write_parquet(recs, f"{staged}/top_n")
    with stage("publish", timings):
        storage.write_parquet(
            model.userFactors.join(users, F.col("id") == F.col(USER_IDX)).select(USER, "features"),
            f"{staged}/model/user_factors",
        )
        storage.write_parquet(
            model.itemFactors.join(items, F.col("id") == F.col(ITEM_IDX)).select(ITEM, "features"),
            f"{staged}/model/item_factors",
        )
        storage.write_parquet(ingested.quarantine, f"{staged}/quarantine", partitions=1)
        timings["total"] = round(time.perf_counter() - started, 3)
        storage.write_json(
            spark, f"{staged}/metrics.json", {"rmse": rmse, "reg": reg, "timings_s": timings}
        )
        storage.write_text(spark, f"{staged}/_SUCCESS", "")
        pub.commit()
    print(f"published {final}: held-out RMSE {rmse:.4f}")
    return final


def main(argv=None) -> int:
    def extra(parser):
        parser.add_argument("--als-reg", type=float, default=0.1)
        parser.add_argument("--als-iterations", type=int, default=10)

    def body(args, cfg) -> int:
        spark = build_session(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        final = f"{cfg.output.root.rstrip('/')}/run_date={run_date(cfg)}"
        try:
            with Publication(spark, final) as pub:
                run(spark, cfg, args.als_reg, pub, args.als_iterations)
        finally:
            spark.stop()
        return cli.EXIT_OK

    return cli.job_main(__doc__.splitlines()[0], body, argv, extra_args=extra)


if __name__ == "__main__":
    sys.exit(main())
