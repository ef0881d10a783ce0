"""What a warm start saves a nightly rerun: yesterday's model as today's starting point.

    python benchmarks/warm_start.py [--data ml-latest-small] [--new-share 0.05]

"Yesterday" is the ratings without the newest ``--new-share`` of them (by timestamp),
"today" all of them, both split with the same seeded hash. One run fits yesterday's
model, then today's twice, from the random start and from yesterday's model
(``train.warm_start``), and reports for each the iterations and seconds to come within
0.1% of the cold run's final cost and to its final held-out RMSE. Results go to
benchmarks/results/warm_start.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    from pyspark.sql import functions as F
    from vs_als import SEED, SPARK_CONF, dataset_path

    from spark_cf.config import Config, ModelConfig, fit_arguments
    from spark_cf.data.prepare import prepare
    from spark_cf.model.persistence import load_model, save_model
    from spark_cf.session import build_session
    from spark_cf.training.fit import fit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-latest-small")
    parser.add_argument("--new-share", type=float, default=0.05)
    parser.add_argument("--reg", type=float, default=20.0)
    parser.add_argument("--max-iter", type=int, default=200)
    args = parser.parse_args()

    spark = build_session("local[2]", "spark-cf-bench-warm-start", SPARK_CONF)
    ratings = spark.read.parquet(str(dataset_path(args.data)))
    cutoff = ratings.approxQuantile("timestamp", [1 - args.new_share], 0.0)[0]
    model_cfg = ModelConfig(rank=10, reg=args.reg, biases=True, seed=SEED)

    def data_of(df):
        return prepare(
            df.select("user_id", "item_id", "rating"),
            holdout_fraction=0.2,
            split="random",
            seed=SEED,
            mean_normalization=True,
            biases=True,
        )

    yesterday = data_of(ratings.where(F.col("timestamp") < cutoff))
    today = data_of(ratings)
    # warm the JVM and the workers up
    settings = fit_arguments(Config(model=model_cfg))
    fit(today, **{**settings, "max_iter": 3})
    model, _ = fit(yesterday, **{**settings, "max_iter": args.max_iter})
    folder = tempfile.mkdtemp(prefix="warm-start-")
    save_model(spark, model, f"{folder}/model")

    runs = {}
    for name, warm in (("cold", None), ("warm", load_model(spark, f"{folder}/model"))):
        stamps: dict[int, float] = {}
        t0 = time.perf_counter()

        def callback(iteration, _elapsed, _cost, stamps=stamps, t0=t0):
            stamps[iteration] = time.perf_counter() - t0

        _, result = fit(
            today,
            **{**settings, "max_iter": args.max_iter},
            initial_model=warm,
            callback=callback,
        )
        runs[name] = (result, stamps, time.perf_counter() - t0)
    target_cost = runs["cold"][0].final_cost * 1.001
    target_rmse = runs["cold"][0].history[-1]["val_rmse"]
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": args.data,
        "yesterday_ratings": yesterday.num_train + yesterday.num_val,
        "today_ratings": today.num_train + today.num_val,
        "reg": args.reg,
        "max_iter": args.max_iter,
    }
    for name, (result, stamps, seconds) in runs.items():
        hist = result.history
        cost_hit = next((h["iteration"] for h in hist if h["cost"] <= target_cost), None)
        rmse_hit = next((h["iteration"] for h in hist if h["val_rmse"] <= target_rmse), None)
        out[name] = {
            "fit_s": round(seconds, 2),
            "iterations": result.iterations,
            "stop_reason": result.stop_reason,
            "initial_cost": hist[0]["cost"],
            "final_cost": result.final_cost,
            "final_val_rmse": hist[-1]["val_rmse"],
            "iterations_to_cost": cost_hit,
            "seconds_to_cost": round(stamps.get(cost_hit, 0.0), 2) if cost_hit else None,
            "iterations_to_rmse": rmse_hit,
            "seconds_to_rmse": round(stamps.get(rmse_hit, 0.0), 2) if rmse_hit else None,
        }
        print(
            f"{name}: initial J {hist[0]['cost']:.6g}, final J {result.final_cost:.6g}, "
            f"held-out RMSE {hist[-1]['val_rmse']:.4f}; within 0.1% of the cold final J at "
            f"iteration {cost_hit} ({out[name]['seconds_to_cost']} s), at the cold final "
            f"RMSE at iteration {rmse_hit} ({out[name]['seconds_to_rmse']} s)",
            flush=True,
        )
    spark.stop()
    path = HERE / "results" / "warm_start.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
