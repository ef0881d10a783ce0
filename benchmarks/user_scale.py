"""How the cost of training grows with the number of users, the user side on the driver
(``train.user_side = "driver"``) against on the executors (``"executors"``), side by side.

    python benchmarks/user_scale.py [--users 20000 500000 2000000] [--ranks 10 50]
                                    [--ratings 2000000] [--items 20000] [--no-als]
                                    [--train-iters 5] [--no-train]

For each number of users, one generated set (the synthetic generator; --ratings ratings
over --items items, written once under benchmarks/work/) and each rank, every
measurement runs in a child process of its own (local[2]), so that the peak resident
memory of the driver's Python, its JVM (which holds the executors in local mode) and the
Python workers is that measurement's:

- ``eval``: seconds per evaluation of J and its gradient (median of 5, after 3 to warm
  up), and the bytes that reached the driver and that were broadcast to every Python
  worker per evaluation;
- ``train``: seconds per training iteration (median over --train-iters iterations, the
  optimiser included), for adam and for lbfgs;
- ``als``: MLlib ALS on the same ratings at the same rank, seconds per iteration
  (fit with maxIter = --train-iters, divided).

It prints a table, writes the figures to benchmarks/results/user_scale.json and the
table to docs/benchmarks.md (between its markers), with the targets of issue 12.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vs_als import run_child  # noqa: E402

WORK = HERE / "work"
RESULTS = HERE / "results" / "user_scale.json"
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN = "<!-- user_scale.py: begin -->"
END = "<!-- user_scale.py: end -->"
SEED = 5
#: evaluations per measurement, of which the first WARM warm up (new Python workers load
#: the compiled kernels; the first jobs read the cached blocks the first time)
EVALS, WARM = 8, 3


def data_path(users: int, ratings: int, items: int) -> Path:
    return WORK / f"scale-u{users}-r{ratings}-i{items}.parquet"


def ensure_data(users: int, ratings: int, items: int) -> Path:
    from spark_cf.data.synthetic import SyntheticSpec, write_parquet

    path = data_path(users, ratings, items)
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        spec = SyntheticSpec(
            num_users=users,
            num_items=items,
            num_ratings=ratings,
            true_rank=10,
            noise=0.5,
            seed=SEED,
        )
        write_parquet(spec, str(path))
    return path


# ------------------------------------------------------------------------------ children


def _session():
    from spark_cf.session import build_session

    return build_session(
        "local[2]",
        "spark-cf-bench-user-scale",
        {"spark.driver.memory": "12g", "spark.sql.shuffle.partitions": "4"},
    )


def _blocks(spark, path: str):
    from spark_cf.data.prepare import prepare
    from spark_cf.training.fit import _block
    from spark_cf.training.objective import RATINGS_COST

    df = spark.read.parquet(path).select("user_id", "item_id", "rating")
    data = prepare(
        df, holdout_fraction=0.0, split="random", seed=SEED, mean_normalization=True, biases=False
    )
    return data, _block(data, RATINGS_COST, 0, 0)


def child_eval(path: str, rank: int, side: str) -> dict:
    from spark_cf.training import slices
    from spark_cf.training.params import Layout, initial_parameters
    from spark_cf.training.partitioned import PartitionedObjective

    spark = _session()
    data, blocks = _blocks(spark, path)
    layout = Layout(data.index.num_items, data.index.num_users, rank, False)
    w0 = initial_parameters(layout, init_scale=0.1, seed=1)
    times = []
    if side == "driver":
        f = blocks.objective(layout, 10.0)
        for _ in range(EVALS):
            t = time.perf_counter()
            f(w0)
            times.append(time.perf_counter() - t)
        per_block_doubles = 0
        for bid in blocks.block_sizes:
            (u0, u1), (i0, i1) = f._ranges(bid)
            per_block_doubles += (u1 - u0 + i1 - i0) * rank
        sent = {"to_driver": 8 * per_block_doubles, "broadcast": int(w0.nbytes)}
    else:
        engine = PartitionedObjective(blocks, layout, 10.0)
        engine.start({"w": w0})
        for _ in range(EVALS):
            t = time.perf_counter()
            engine.evaluate(slices.Move("stay"))
            times.append(time.perf_counter() - t)
        sent = dict(engine.last_bytes)
        engine.close()
    spark.stop()
    return {
        "seconds": statistics.median(times[WARM:]),
        "times": times,
        "bytes": sent,
        "blocks": [blocks.user_blocks, blocks.item_blocks],
        "users": data.index.num_users,
        "parameters": layout.size,
    }


def child_floor(path: str, rank: int) -> dict:
    """The floor of one evaluation: the per-block kernel alone (every block, in this
    process, divided by the cores) plus one empty Spark job."""
    from spark_cf.training import kernel
    from spark_cf.training.params import Layout, initial_parameters

    spark = _session()
    data, blocks = _blocks(spark, path)
    sc = spark.sparkContext
    layout = Layout(data.index.num_items, data.index.num_users, rank, False)
    w0 = initial_parameters(layout, init_scale=0.1, seed=1)
    X, T = layout.X(w0), layout.Theta(w0)
    prepared = [kernel.Block(p) for p in blocks.rdd.collect()]
    kernel_times = []
    for _ in range(3):
        t = time.perf_counter()
        for b in prepared:
            kernel.block_gradients(b, X, T)
        kernel_times.append(time.perf_counter() - t)
    empty = []
    ids = sc.parallelize(range(sc.defaultParallelism), sc.defaultParallelism)
    for _ in range(6):
        t = time.perf_counter()
        ids.map(lambda x: x).collect()
        empty.append(time.perf_counter() - t)
    spark.stop()
    cores = sc.defaultParallelism
    return {
        "kernel": statistics.median(kernel_times) / cores,
        "empty_job": statistics.median(empty[1:]),
        "blocks": [blocks.user_blocks, blocks.item_blocks],
        "users": data.index.num_users,
    }


def child_train(
    path: str, rank: int, side: str, optimizer: str, iters: int, memory: int = 10
) -> dict:
    from spark_cf.training.fit import fit

    spark = _session()
    data, blocks = _blocks(spark, path)
    _, result = fit(
        data,
        rank=rank,
        reg_param=10.0,
        max_iter=iters,
        tol=0.0,
        optimizer=optimizer,
        learning_rate=0.001,
        lbfgs_memory=memory,
        user_side=side,
        blocks=blocks,
    )
    spark.stop()
    seconds = [h["seconds"] for h in result.history[1:]]
    return {
        "seconds": statistics.median(seconds),
        "times": seconds,
        "evaluations": result.evaluations,
        "iterations": result.iterations,
    }


def child_als(path: str, rank: int, iters: int) -> dict:
    from pyspark.ml.recommendation import ALS

    spark = _session()
    df = spark.read.parquet(path).select("user_id", "item_id", "rating").cache()
    df.count()
    als = ALS(
        rank=rank,
        maxIter=iters,
        regParam=0.1,
        userCol="user_id",
        itemCol="item_id",
        ratingCol="rating",
        seed=SEED,
    )
    t = time.perf_counter()
    model = als.fit(df)
    model.userFactors.count()
    seconds = time.perf_counter() - t
    spark.stop()
    return {"seconds": seconds / iters, "fit_seconds": seconds}


# --------------------------------------------------------------------------------- report


def gib(peak: dict, key: str) -> str:
    return f"{peak.get(key, 0):.2f}"


def markdown(results: dict) -> str:
    lines = [
        BEGIN,
        "## Users on the executors (`benchmarks/user_scale.py`)",
        "",
        f"{results['when']}, {results['machine']}; {results['ratings']:,} generated ratings "
        f"over {results['items']:,} items, local[2]. `driver` = the user side on the "
        "driver (one vector broadcast to every task), `executors` = on the executors "
        "(`train.user_side`). Peak resident memory in GiB: driver Python / JVM (which "
        "holds the executors in local mode) / Python workers.",
        "",
        "| users | rank | side | s per evaluation | MB to driver | MB broadcast | peak GiB "
        "| adam s/iter | lbfgs s/iter | ALS s/iter |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        ev = row.get("eval")
        tr = row.get("train", {})
        als = row.get("als")
        peak = ev["peak"] if ev else {}
        mem = (
            f"{gib(peak, 'driver_python')} / {gib(peak, 'driver_jvm')} / "
            f"{gib(peak, 'python_workers')}"
            if ev
            else ""
        )

        def train(opt: str, tr: dict = tr) -> str:
            return f"{tr[opt]['seconds']:.2f}" if opt in tr else ""

        lines.append(
            f"| {row['users']:,} | {row['rank']} | {row['side']} "
            f"| {ev['seconds']:.3f} | {ev['bytes']['to_driver'] / 1e6:.1f} "
            f"| {ev['bytes']['broadcast'] / 1e6:.1f} | {mem} "
            f"| {train('adam')} | {train('lbfgs')} "
        )
        lines[-1] += f"| {als['seconds']:.2f} |" if als else "| |"
    lines += ["", "### Targets (issue 12)", "", "| target | measured | |", "|---|---|---|"]
    for t in results["targets"]:
        status = "met" if t["met"] else "NOT met"
        lines.append(f"| {t['target']} | {t['value']} | {status} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def targets(results: dict) -> list[dict]:
    rows = results["rows"]
    users = sorted({r["users"] for r in rows})
    out = []
    lo, hi = users[0], users[-1]

    def get(u, k, side, key):
        for r in rows:
            if r["users"] == u and r["rank"] == k and r["side"] == side:
                return r
        return None

    for k, bound in ((10, 1.5), (50, 2.0)):
        a, b = get(lo, k, "executors", "eval"), get(hi, k, "executors", "eval")
        if a and b:
            ratio = b["eval"]["seconds"] / a["eval"]["seconds"]
            old = get(lo, k, "driver", "eval"), get(hi, k, "driver", "eval")
            was = (
                f" (driver: {old[1]['eval']['seconds'] / old[0]['eval']['seconds']:.1f}x)"
                if all(old)
                else ""
            )
            out.append(
                {
                    "target": f"s per evaluation, {lo:,} -> {hi:,} users, rank {k}: <= {bound}x",
                    "value": f"{ratio:.2f}x{was}",
                    "met": ratio <= bound,
                }
            )
    a, b = get(lo, 50, "executors", "train"), get(hi, 50, "executors", "train")
    for opt in ("adam", "lbfgs"):
        if a and b and opt in a.get("train", {}) and opt in b.get("train", {}):
            ratio = b["train"][opt]["seconds"] / a["train"][opt]["seconds"]
            out.append(
                {
                    "target": f"s per iteration ({opt}), {lo:,} -> {hi:,} users, rank 50: <= 3x",
                    "value": f"{ratio:.2f}x",
                    "met": ratio <= 3.0,
                }
            )
    for k in sorted({r["rank"] for r in rows}):
        a, b = get(lo, k, "executors", "eval"), get(hi, k, "executors", "eval")
        if a and b:
            pa, pb = a["eval"]["peak"]["driver_python"], b["eval"]["peak"]["driver_python"]
            out.append(
                {
                    "target": f"driver Python peak, rank {k}, {lo:,} -> {hi:,} users: flat "
                    "beyond the model itself (start and end)",
                    "value": f"{pa:.2f} -> {pb:.2f} GiB (the model: "
                    f"{b['eval']['parameters'] * 8 / 2**30:.2f} GiB)",
                    "met": pb - pa <= 2.5 * b["eval"]["parameters"] * 8 / 2**30 + 0.2,
                }
            )
            ba, bb = a["eval"]["bytes"], b["eval"]["bytes"]
            out.append(
                {
                    "target": f"bytes to the driver and broadcast per evaluation, rank {k}: "
                    "not growing with the users",
                    "value": f"{ba['to_driver'] / 1e6:.1f} -> {bb['to_driver'] / 1e6:.1f} MB, "
                    f"{ba['broadcast'] / 1e6:.1f} -> {bb['broadcast'] / 1e6:.1f} MB",
                    "met": bb["to_driver"] <= 1.1 * ba["to_driver"]
                    and bb["broadcast"] <= 1.1 * ba["broadcast"],
                }
            )
    return out


EXISTING_BEGIN = "<!-- user_scale.py existing: begin -->"
EXISTING_END = "<!-- user_scale.py existing: end -->"


def existing(path: str, rank: int, sides: list[str], no_doc: bool) -> int:
    """Seconds per evaluation on an existing set, both sides, against the floor."""
    floor, _, _ = run_child(["--child", "floor", path, str(rank)], __file__)
    rows = {}
    for side in sides:
        ev, peak, _ = run_child(["--child", "eval", path, str(rank), side], __file__)
        ev["peak"] = peak
        rows[side] = ev
    base = floor["kernel"] + floor["empty_job"]
    lines = [
        EXISTING_BEGIN,
        f"### {Path(path).name}: seconds per evaluation, rank {rank}",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, local[2], {floor['users']:,} users, "
        f"{floor['blocks'][0]}x{floor['blocks'][1]} blocks. Floor = the per-block kernel "
        f"alone ({floor['kernel']:.3f} s, all blocks divided by the cores) + one empty job "
        f"({floor['empty_job']:.3f} s) = {base:.3f} s.",
        "",
        "| side | s per evaluation | x floor | MB to driver | MB broadcast |",
        "|---|---|---|---|---|",
    ]
    for side, ev in rows.items():
        lines.append(
            f"| {side} | {ev['seconds']:.3f} | {ev['seconds'] / base:.2f} "
            f"| {ev['bytes']['to_driver'] / 1e6:.1f} | {ev['bytes']['broadcast'] / 1e6:.1f} |"
        )
    lines.append(EXISTING_END)
    section = "\n".join(lines) + "\n"
    print(section)
    if not no_doc:
        write_doc(section, EXISTING_BEGIN, EXISTING_END)
    return 0


def write_doc(section: str, begin: str = BEGIN, end: str = END) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[20_000, 500_000, 2_000_000])
    parser.add_argument("--ranks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--ratings", type=int, default=2_000_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--sides", nargs="+", default=["driver", "executors"])
    parser.add_argument("--train-iters", type=int, default=5)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--optimizers", nargs="+", default=["adam", "lbfgs"])
    parser.add_argument("--lbfgs-memory", type=int, default=10)
    parser.add_argument("--no-als", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument(
        "--existing",
        help="a ratings Parquet (the 20M-rating set of benchmarks/vs_als.py: "
        "benchmarks/work/gen-20M.parquet) to measure per evaluation on both sides, "
        "against the floor (the kernel alone plus an empty job), instead of the scaling",
    )
    parser.add_argument("--child", nargs="+")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.child:
        kind, path, rank = args.child[0], args.child[1], int(args.child[2])
        if kind == "floor":
            answer = child_floor(path, rank)
        elif kind == "eval":
            answer = child_eval(path, rank, args.child[3])
        elif kind == "train":
            answer = child_train(
                path, rank, args.child[3], args.child[4], int(args.child[5]), int(args.child[6])
            )
        else:
            answer = child_als(path, rank, int(args.child[3]))
        Path(args.out).write_text(json.dumps(answer))
        return 0
    if args.existing:
        return existing(args.existing, args.ranks[0], args.sides, args.no_doc)
    rows = []
    for users in args.users:
        path = str(ensure_data(users, args.ratings, args.items))
        for rank in args.ranks:
            for side in args.sides:
                row = {"users": users, "rank": rank, "side": side}
                ev, peak, _ = run_child(["--child", "eval", path, str(rank), side], __file__)
                ev["peak"] = peak
                row["eval"] = ev
                print(
                    f"{users:>9,} users rank {rank:>3} {side:>9}: {ev['seconds']:.3f} s/eval, "
                    f"{ev['bytes']['to_driver'] / 1e6:.1f} MB to driver, "
                    f"{ev['bytes']['broadcast'] / 1e6:.1f} MB broadcast, peak {peak}",
                    flush=True,
                )
                if not args.no_train:
                    row["train"] = {}
                    for opt in args.optimizers:
                        tr, tpeak, _ = run_child(
                            [
                                "--child",
                                "train",
                                path,
                                str(rank),
                                side,
                                opt,
                                str(args.train_iters),
                                str(args.lbfgs_memory),
                            ],
                            __file__,
                        )
                        tr["peak"] = tpeak
                        row["train"][opt] = tr
                        print(
                            f"    train {opt}: {tr['seconds']:.2f} s/iteration, peak {tpeak}",
                            flush=True,
                        )
                rows.append(row)
            if not args.no_als:
                als, apeak, _ = run_child(
                    ["--child", "als", path, str(rank), str(args.train_iters)], __file__
                )
                als["peak"] = apeak
                rows[-1]["als"] = als
                print(f"    ALS: {als['seconds']:.2f} s/iteration, peak {apeak}", flush=True)
    results = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, 2 cores",
        "ratings": args.ratings,
        "items": args.items,
        "rows": rows,
    }
    results["targets"] = targets(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    section = markdown(results)
    print(section)
    if not args.no_doc:
        write_doc(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
