"""The parity matrix: every optimiser x model variant x block grid, Spark against NumPy.

Run in-process by tests/test_distributed.py on the session's local[2], and as a script on
local[1] (one SparkContext per process):

    python tests/parity_matrix.py local[1] RATINGS.parquet OUT.json
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from spark_cf.config import Config
from spark_cf.data.prepare import prepare
from spark_cf.reference.verify import verify
from spark_cf.training.blocks import BlockedRatings
from spark_cf.training.params import Layout
from spark_cf.training.shared import SharedEvaluations

GRIDS = [(1, 1), (2, 3), (4, 4)]
#: The grids make test runs: one block, and an uneven multi-block grid. (4, 4) adds more
#: blocks of the same kind and costs as much as both (16 tasks per job on 2 cores).
QUICK_GRIDS = [(1, 1), (2, 3)]
OPTIMIZERS = {"gd": 0.002, "momentum": 0.001, "nesterov": 0.001, "adam": 0.01, "lbfgs": 1.0}
VARIANTS = [False, True]
ITERATIONS = 100


def matrix_config(optimizer: str, biases: bool, grid: tuple[int, int]) -> Config:
    return Config().replace(
        model={"rank": 3, "reg": 0.5, "biases": biases, "init_scale": 0.1, "seed": 11},
        train={
            "optimizer": optimizer,
            "learning_rate": OPTIMIZERS[optimizer],
            "max_iter": ITERATIONS,
            "tol": 0.0,
            "num_user_blocks": grid[0],
            "num_item_blocks": grid[1],
        },
    )


def run_matrix(ratings_df, grids: list[tuple[int, int]] = GRIDS) -> list[dict]:
    """Parity reports for the matrix (every optimiser and variant, on ``grids``) on one
    DataFrame of raw ratings.

    For each variant and grid the ratings are blocked once, and the five optimisers train
    side by side in driver threads, sharing one Spark job per round of evaluations
    (:class:`~spark_cf.training.shared.SharedEvaluations`): 6 job sequences instead of 30.
    """
    rows = []
    for biases in VARIANTS:
        data = prepare(
            ratings_df,
            holdout_fraction=0.2,
            split="random",
            seed=3,
            mean_normalization=True,
            biases=biases,
        )
        for grid in grids:
            blocks = BlockedRatings(
                data.ratings,
                num_users=data.index.num_users,
                num_items=data.index.num_items,
                normalization=data.normalization,
                user_blocks=grid[0],
                item_blocks=grid[1],
            )
            cfg0 = matrix_config("gd", biases, grid)
            layout = Layout(data.index.num_items, data.index.num_users, cfg0.model.rank, biases)
            objective = blocks.objective(layout, cfg0.model.reg, curvature=True)
            shared = SharedEvaluations(objective, len(OPTIMIZERS))

            def run(optimizer, data=data, biases=biases, grid=grid, blocks=blocks, shared=shared):
                try:
                    report = verify(
                        data,
                        matrix_config(optimizer, biases, grid),
                        blocks=blocks,
                        shared=shared.proxy(optimizer),
                    )
                finally:
                    shared.done()
                return {
                    "optimizer": optimizer,
                    "biases": biases,
                    "grid": list(grid),
                    **report.__dict__,
                }

            with ThreadPoolExecutor(max_workers=len(OPTIMIZERS)) as pool:
                rows.extend(pool.map(run, OPTIMIZERS))
            blocks.unpersist()
        data.ratings.unpersist()
    return rows


def main(argv: list[str]) -> int:
    master, ratings_path, out_path = argv
    from spark_cf.session import build_session

    spark = build_session(master, "parity-matrix", {"spark.sql.shuffle.partitions": "2"})
    try:
        rows = run_matrix(spark.read.parquet(ratings_path))
    finally:
        spark.stop()
    with open(out_path, "w") as fh:
        json.dump(rows, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
