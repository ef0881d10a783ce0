"""Evaluate a published model on a ratings set (for example newer ratings).

    spark-submit jobs/evaluate.py --config conf/local.toml --model RUN/model [--output F]

Scores every rating at input.path with the model (cold-start rules as in predictions)
and reports RMSE and MAE, and precision/recall/nDCG/MAP@k of the model's top-k (items
rated in --exclude-from excluded) against the ratings >= relevance_threshold. Prints the
table and writes the metrics as JSON to --output when given.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from spark_cf import cli, storage
from spark_cf.data.indexing import apply_index
from spark_cf.data.ingest import ingest
from spark_cf.model.persistence import load_model
from spark_cf.outputs.evaluation import format_table, ranking_metrics, regression_metrics
from spark_cf.outputs.recommend import predict, top_n
from spark_cf.schema import ITEM, ITEM_IDX, RANK, RATING, USER, USER_IDX
from spark_cf.session import build_session


def main(argv=None) -> int:
    def extra(parser):
        parser.add_argument("--model", required=True, help="a published model folder")
        parser.add_argument(
            "--exclude-from",
            help="ratings Parquet whose pairs are not recommended (the model's training ratings)",
        )
        parser.add_argument("--output", help="write the metrics as JSON here")

    def body(args, cfg) -> int:
        spark = build_session(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        try:
            model = load_model(spark, args.model)
            ratings = ingest(spark, cfg.input).ratings
            clip = (cfg.input.rating_min, cfg.input.rating_max) if cfg.predict.clip else None
            scored = (
                predict(ratings.select(USER, ITEM), model, clip=clip)
                .join(ratings.select(USER, ITEM, RATING), on=[USER, ITEM])
                .toArrow()
            )
            metrics = {
                "model": regression_metrics(
                    scored.column(RATING).to_numpy(), scored.column("prediction").to_numpy()
                )
            }
            # raw ids: relevant ratings of users or items the model does not know count
            # as misses instead of disappearing in a join
            relevant = ratings.where(ratings[RATING] >= cfg.evaluate.relevance_threshold)
            rel = relevant.select(USER, ITEM).toArrow()
            rel_users = rel.column(USER).to_numpy(zero_copy_only=False)
            rel_items = rel.column(ITEM).to_numpy(zero_copy_only=False)
            known = model.index.user_positions(rel.column(USER).combine_chunks())
            exclude = None
            if args.exclude_from:
                seen = (
                    storage.read_parquet(spark, args.exclude_from)
                    .select(cfg.input.user_col, cfg.input.item_col)
                    .toDF(USER, ITEM)
                )
                exclude = apply_index(seen, model.index).select(USER_IDX, ITEM_IDX)
            k = cfg.evaluate.k
            recs = top_n(
                spark,
                model,
                exclude,
                n=k,
                users=np.unique(known[known >= 0]),
                block_size=cfg.recommend.block_size,
            ).toArrow()
            metrics["model"].update(
                ranking_metrics(
                    recs.column(USER).to_numpy(zero_copy_only=False),
                    recs.column(ITEM).to_numpy(zero_copy_only=False),
                    recs.column(RANK).to_numpy(),
                    rel_users,
                    rel_items,
                    k,
                )
            )
        finally:
            spark.stop()
        print(
            format_table(
                metrics, ["rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k"]
            )
        )
        if args.output:
            with open(args.output, "w") as fh:
                json.dump(metrics, fh, indent=2)
        return cli.EXIT_OK

    return cli.job_main(__doc__.splitlines()[0], body, argv, extra)


if __name__ == "__main__":
    sys.exit(main())
