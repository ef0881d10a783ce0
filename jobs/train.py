"""Train only: ingest, train on the training split, publish the model (atomically).

    spark-submit jobs/train.py --config conf/local.toml [--model-out PATH] [--set k=v ...]

Writes user_factors/, item_factors/ and metadata.json to --model-out (default
<output.root>/model), replacing what was there only once the new model is complete
(staged in <parent>/_staging/, see spark_cf.outputs.publish). Exit 0 on success, 2 on bad input or
config (one-line reason), 4 when another run is publishing the same --model-out (its lock
names the owner), 1 on a crash.
"""

from __future__ import annotations

import sys

from spark_cf import cli
from spark_cf.model.persistence import save_model
from spark_cf.nightly import preflight
from spark_cf.nightly.run import ingest_and_prepare, software_versions, stage, train_with_config
from spark_cf.outputs.publish import Publication
from spark_cf.session import build_session, recorded_config, settings_in_force


def main(argv=None) -> int:
    def extra(parser):
        parser.add_argument("--model-out", help="where to publish the model")

    def body(args, cfg) -> int:
        target = args.model_out or f"{cfg.output.root.rstrip('/')}/model"
        spark = build_session(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        timeout_s = cfg.output.lock_timeout_s
        try:
            key = "--model-out" if args.model_out else "output.root"
            preflight.check_parent_writable(spark, key, target)
            preflight.check_training(spark, cfg.model, cfg.train)
            with Publication(spark, target, timeout_s=timeout_s) as pub:
                timings: dict[str, float] = {}
                ingested, data = ingest_and_prepare(spark, cfg, timings)
                with stage("train", timings):
                    model, result = train_with_config(data, cfg)
                in_force = settings_in_force(spark)
                model.metadata = {
                    "config": recorded_config(cfg.to_dict(), in_force),
                    "iterations": result.iterations,
                    "final_cost": result.final_cost,
                    "stop_reason": result.stop_reason,
                    "rows": ingested.metrics(),
                    "input_path": cfg.input.path,
                    "input_fingerprint": data.fingerprint,
                    "rating_mean": data.rating_mean,
                    "timings_s": timings,
                    "history": result.history,
                    "software": software_versions(),
                    "spark": in_force,
                }
                save_model(spark, model, pub.staging)
                pub.commit()
                ingested.unpersist()
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
