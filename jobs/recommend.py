"""Top-N lists from a published model.

    spark-submit jobs/recommend.py --config conf/local.toml --model RUN/model --output PATH

Uses [recommend] (top_n, users, exclude_rated, block_size); with exclude_rated the ratings
at input.path say what each user already rated. Writes (user_id, rank, item_id, score)
to --output atomically. Exit 0 on success, 2 on bad input or config, 4 when another run is
writing the same --output (the message names its lock), 1 on a crash.
"""

from __future__ import annotations

import sys

from spark_cf import cli
from spark_cf.nightly.run import run_recommend
from spark_cf.session import build_session


def main(argv=None) -> int:
    def extra(parser):
        parser.add_argument("--model", required=True, help="a published model folder")
        parser.add_argument("--output", required=True, help="where to write the top-N table")

    def body(args, cfg) -> int:
        spark = build_session(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        try:
            rows, unknown = run_recommend(spark, cfg, args.model, args.output)
        finally:
            spark.stop()
        print(f"top-N: {args.output} ({rows} rows; {len(unknown)} requested users unknown)")
        return cli.EXIT_OK

    return cli.job_main(__doc__.splitlines()[0], body, argv, extra)


if __name__ == "__main__":
    sys.exit(main())
