"""Parity check: train on Spark and with the NumPy reference on the same ratings, compare.

    spark-submit jobs/verify.py --config conf/local.toml [--set key=value ...]

Prints the largest differences (factors, costs, and the lockstep cost and gradient
differences) and exits 0 when they are within --tolerance, 3 on a mismatch.
"""

from __future__ import annotations

import sys

from spark_cf import cli
from spark_cf.nightly.run import ingest_and_prepare
from spark_cf.reference.verify import DEFAULT_TOLERANCE, verify
from spark_cf.session import build_session

EXIT_MISMATCH = 3


def main(argv=None) -> int:
    def extra(parser):
        parser.add_argument(
            "--tolerance",
            type=float,
            default=DEFAULT_TOLERANCE,
            help="largest relative difference of the lockstep check, and of the factors, "
            "costs and predictions of the trajectory check for gd/momentum/nesterov/adam "
            "(default 1e-9); lbfgs's trajectory check takes max(this, 1e-4) on the costs and "
            "0.01 RMS on the predictions (see spark_cf.reference.verify)",
        )
        parser.add_argument(
            "--lockstep-only",
            action="store_true",
            help="judge only the lockstep check (see spark_cf.reference.verify)",
        )

    def body(args, cfg) -> int:
        spark = build_session(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        try:
            ingested, data = ingest_and_prepare(spark, cfg, {})
            report = verify(data, cfg, args.tolerance)
            for line in report.lines():
                print(line)
            ok = report.lockstep_ok if args.lockstep_only else report.ok
            ingested.unpersist()
            return cli.EXIT_OK if ok else EXIT_MISMATCH
        finally:
            spark.stop()

    return cli.job_main(__doc__.splitlines()[0], body, argv, extra)


if __name__ == "__main__":
    sys.exit(main())
