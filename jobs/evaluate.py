"""Evaluate a published model on a ratings set (for example newer ratings).

    spark-submit jobs/evaluate.py --config conf/local.toml --model RUN/model [--output F]

Scores every rating at input.path with the model (cold-start rules as in predictions)
and reports RMSE and MAE, and precision/recall/nDCG/MAP@k of the model's top-k (items
rated in --exclude-from excluded) against the ratings >= relevance_threshold: the
nightly job's evaluation (spark_cf.outputs.evaluation.evaluate_model). Beside the model,
the @k metrics of the most-popular baseline (the items by the model's training rating
counts; for a model saved without them, by the --exclude-from ratings' counts, else
unavailable). Prints the table and writes the metrics as JSON to --output when given.
"""

from __future__ import annotations

import json
import sys

from spark_cf import cli
from spark_cf.nightly.run import run_evaluate
from spark_cf.outputs.report import metrics_table
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
            metrics = run_evaluate(spark, cfg, args.model, exclude_from=args.exclude_from)
        finally:
            spark.stop()
        print(metrics_table(metrics, cfg.evaluate.k))
        if args.output:
            with open(args.output, "w") as fh:
                json.dump(metrics, fh, indent=2)
        return cli.EXIT_OK

    return cli.job_main(__doc__.splitlines()[0], body, argv, extra)


if __name__ == "__main__":
    sys.exit(main())
