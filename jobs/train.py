"""Train only: ingest, train on the training split, publish the model (atomically).

    spark-submit jobs/train.py --config conf/local.toml [--model-out PATH] [--set k=v ...]

Writes user_factors/, item_factors/, metadata.json (the nightly model's keys) and
_SUCCESS to --model-out (default <output.root>/model), replacing what was there only
once the new model is complete (staged in <parent>/_staging/, see
spark_cf.outputs.publish). Exit 0 on success, 2 on bad input or
config (one-line reason), 4 when another run is publishing the same --model-out (its lock
names the owner), 1 on a crash.
"""

from __future__ import annotations

import sys

from spark_cf import cli
from spark_cf.nightly.run import run_train
from spark_cf.session import build_session


def main(argv=None) -> int:
    def extra(parser):
        parser.add_argument("--model-out", help="where to publish the model")

    def body(args, cfg) -> int:
        spark = build_session(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        try:
            target, _, result = run_train(spark, cfg, args.model_out)
        finally:
            spark.stop()
        last = result.history[-1]
        print(
            f"model: {target} ({result.iterations} iterations, {result.stop_reason}, "
            f"cost {last['cost']:.6g}, train RMSE {last['train_rmse']:.4f}, "
            f"validation RMSE {last['val_rmse']:.4f})"
        )
        return cli.EXIT_OK

    return cli.job_main(__doc__.splitlines()[0], body, argv, extra)


if __name__ == "__main__":
    sys.exit(main())
