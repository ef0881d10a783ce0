"""The nightly job: ingest, train, evaluate, predict, top-N, and publish one dated run.

    spark-submit jobs/nightly.py --config conf/local.toml [--set section.key=value ...]

Publishes <output.root>/run_date=YYYY-MM-DD/ (model/, predictions/, top_n/, quarantine/,
metrics.json, convergence.png, _SUCCESS) atomically, then prints where the tables are and
the evaluation table. Exit 0 on success, 2 on bad input or config (one-line reason), 4
when another run is publishing the same run_date (the message names its lock and owner),
1 on a crash; a failed or killed run leaves every published run as it was, and the next
run recovers what it left under output.root.
"""

from __future__ import annotations

import sys

from spark_cf import cli
from spark_cf.nightly.run import run_nightly
from spark_cf.schema import (
    ITEM_FACTORS,
    METRICS,
    MODEL,
    PREDICTIONS,
    QUARANTINE,
    RANKING_MODEL,
    TOP_N,
    USER_FACTORS,
)
from spark_cf.session import build_session


def main(argv=None) -> int:
    def body(args, cfg) -> int:
        spark = build_session(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        try:
            outcome = run_nightly(spark, cfg)
        finally:
            spark.stop()
        print(f"published: {outcome.path}")
        m = outcome.metrics
        models = [MODEL] * (m["training"] is not None)  # none for interaction data
        models += [RANKING_MODEL] * (m["training_ranking"] is not None)
        tables = [f"{name}/{part}" for name in models for part in (USER_FACTORS, ITEM_FACTORS)]
        tables += [PREDICTIONS] * (m["training"] is not None) + [TOP_N, QUARANTINE]
        for table in tables:
            print(f"  {table:<26} {outcome.path}/{table}")
        print(f"  {'metrics':<26} {outcome.path}/{METRICS}")
        if outcome.table:
            print()
            print(f"held-out evaluation (k = {outcome.metrics['evaluation_k']}):")
            print(outcome.table)
        return cli.EXIT_OK

    return cli.job_main(__doc__.splitlines()[0], body, argv)


if __name__ == "__main__":
    sys.exit(main())
