"""Write a synthetic rating set with a known low-rank truth to one Parquet file.

Needs no Spark session: run it with plain Python or through ``spark-submit``::

    python jobs/generate.py --output /tmp/ratings.parquet --num-ratings 1000000 --seed 7
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence

from spark_cf.cli import EXIT_OK, run, setup_logging
from spark_cf.data.synthetic import SyntheticSpec, write_parquet

log = logging.getLogger("spark_cf.jobs.generate")

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SyntheticSpec)}


def build_parser() -> argparse.ArgumentParser:
    """The job's arguments; defaults are those of :class:`SyntheticSpec`."""
    parser = argparse.ArgumentParser(
        description="Write a synthetic rating set with a known low-rank truth to Parquet."
    )
    parser.add_argument("--output", required=True, help="Parquet file to write (replaced)")
    for name, kind, text in (
        ("num_users", int, "number of users"),
        ("num_items", int, "number of items"),
        ("num_ratings", int, "exact number of ratings (distinct user-item pairs)"),
        ("true_rank", int, "rank of the true factors"),
        ("noise", float, "noise standard deviation, in rating units"),
        ("popularity_skew", float, "Zipf exponent of item popularity (0 = uniform)"),
        ("rating_min", float, "lowest rating"),
        ("rating_max", float, "highest rating"),
        ("rating_step", float, "rating grid step"),
        ("seed", int, "random seed"),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=_DEFAULTS[name],
            help=f"{text} (default {_DEFAULTS[name]})",
        )
    parser.add_argument(
        "--no-timestamp",
        dest="with_timestamp",
        action="store_false",
        help="leave out the timestamp column",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=1_000_000,
        help="rows generated and written per step (bounds memory; default 1000000)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, generate the ratings and write them; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)

    def body() -> int:
        spec = SyntheticSpec(**{name: getattr(args, name) for name in _DEFAULTS})
        log.info("generating %s", spec)
        started = time.perf_counter()
        rows = write_parquet(spec, args.output, chunk_size=args.chunk_size)
        log.info("done: %d rows in %s (%.1f s)", rows, args.output, time.perf_counter() - started)
        return EXIT_OK

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
