"""Per-iteration cost of the Spark path against the NumPy reference and an empty Spark job.

    python benchmarks/iteration_speed.py [--sizes 1000000 5000000] [--repeats 7]

For each generated data set (the synthetic generator, written once under
benchmarks/work/), one run measures, medians over --repeats:
- the time of an empty Python Spark job on the same session (the floor of any iteration);
- the reference's time per evaluation of cost and gradients (NumPy, single core);
- ours: one evaluation on the cached blocks (broadcast, kernel, collect, driver sum).
It prints the target ``ours <= empty + 1.2 x reference`` as met or not met, and writes
the figures to benchmarks/results/iteration_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from spark_cf.data.prepare import prepare
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.reference.numpy_cf import ReferenceObjective
from spark_cf.schema import IS_VAL, ITEM_IDX, RATING, USER_IDX
from spark_cf.session import build_session
from spark_cf.training.blocks import BlockedRatings, choose_blocks
from spark_cf.training.params import Layout, initial_parameters

HERE = Path(__file__).resolve().parent


def spec_for(n: int) -> SyntheticSpec:
    # MovieLens-like shape: about 6 ratings per item for every 100 per user
    users = max(1000, n // 150)
    items = max(500, n // 400)
    return SyntheticSpec(
        num_users=users, num_items=items, num_ratings=n, true_rank=10, noise=0.5, seed=17
    )


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    spark = build_session(args.master, "spark-cf-bench-iteration", {"spark.driver.memory": "8g"})
    sc = spark.sparkContext
    empty_rdd = sc.parallelize(range(sc.defaultParallelism), sc.defaultParallelism).cache()
    empty_rdd.count()
    rows = []
    try:
        for n in args.sizes:
            path = HERE / "work" / f"synthetic_{n}.parquet"
            if not path.exists():
                write_parquet(spec_for(n), str(path))
            data = prepare(
                spark.read.parquet(str(path)).select("user_id", "item_id", "rating"),
                holdout_fraction=0.0,
                split="random",
                seed=1,
                mean_normalization=True,
                biases=False,
            )
            layout = Layout(data.index.num_items, data.index.num_users, args.rank)
            w = initial_parameters(layout, init_scale=0.1, seed=1)

            a = data.arrays()
            train = ~a[IS_VAL]
            y = a[RATING] - data.normalization.offsets(a[ITEM_IDX])
            reference = ReferenceObjective(
                layout, a[ITEM_IDX][train], a[USER_IDX][train], y[train], 0.1
            )
            ref_s = median_seconds(partial(reference, w), args.repeats)
            del a, y, reference

            user_blocks, item_blocks = choose_blocks(n, 0, 0, sc.defaultParallelism)
            t0 = time.perf_counter()
            blocks = BlockedRatings(
                data.ratings,
                num_users=data.index.num_users,
                num_items=data.index.num_items,
                normalization=data.normalization,
                user_blocks=user_blocks,
                item_blocks=item_blocks,
            )
            build_s = time.perf_counter() - t0
            objective = blocks.objective(layout, 0.1)
            ours_s = median_seconds(partial(objective, w), args.repeats)
            empty_s = median_seconds(lambda: empty_rdd.map(lambda x: x).collect(), args.repeats)
            blocks.unpersist()
            data.ratings.unpersist()
            target = empty_s + 1.2 * ref_s
            row = {
                "ratings": n,
                "users": layout.num_users,
                "items": layout.num_items,
                "rank": args.rank,
                "blocks": [user_blocks, item_blocks],
                "empty_job_s": round(empty_s, 4),
                "reference_s": round(ref_s, 4),
                "ours_s": round(ours_s, 4),
                "block_build_s": round(build_s, 2),
                "target_s": round(target, 4),
                "met": ours_s <= target,
            }
            rows.append(row)
            print(
                f"{n:>10,} ratings  empty job {empty_s * 1000:7.1f} ms  reference "
                f"{ref_s * 1000:7.1f} ms  ours {ours_s * 1000:7.1f} ms  target "
                f"{target * 1000:7.1f} ms  {'met' if row['met'] else 'NOT met'}",
                flush=True,
            )
    finally:
        spark.stop()
    out = HERE / "results" / "iteration_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": __import__("os").cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "master": args.master,
                "repeats": args.repeats,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
