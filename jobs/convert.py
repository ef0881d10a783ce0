"""Convert delimited rating text to the ratings Parquet the ingest reads.

Formats: MovieLens CSV, MovieTweetings ``::``, or any CSV described by the options.
Unusable lines are not dropped: they go to ``<output>_rejects`` with a reason.

    python jobs/convert.py --input ../shared/data/ml-latest-small/ratings.csv \\
        --output data/ml-small --format movielens
    python jobs/convert.py --input ratings.tsv --output data/mine --format csv \\
        --delimiter '\\t' --columns user=uid,item=iid,rating=r,timestamp=ts

Exit codes: 0 done, 2 refused with a one-line reason (missing input, bad options, no usable
line), 4 another run is writing the same --output (the message names its lock), 1 crashed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from spark_cf.cli import EXIT_OK, run, setup_logging
from spark_cf.data.convert import FORMATS, ID_TYPES, convert, parse_columns, resolve_format
from spark_cf.session import build_session

log = logging.getLogger("spark_cf.jobs.convert")

#: Spellings of delimiters that are awkward to pass on a command line.
DELIMITER_NAMES = {"\\t": "\t", "tab": "\t", "space": " ", "pipe": "|", "semicolon": ";"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="file, folder or glob of text files")
    parser.add_argument("--output", required=True, help="Parquet folder to (re)place")
    parser.add_argument("--rejects", help="where rejected lines go (default <output>_rejects)")
    parser.add_argument("--format", default="movielens", choices=sorted(FORMATS))
    parser.add_argument(
        "--delimiter", help="field separator, literal; '\\t' or 'tab' for a tab (default: format's)"
    )
    parser.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether files start with a line of column names (default: format's)",
    )
    parser.add_argument(
        "--columns",
        help="role=column pairs, columns by header name or 0-based position, e.g. "
        "'user=uid,item=iid,rating=r,timestamp=ts' (timestamp optional)",
    )
    parser.add_argument("--user-type", choices=ID_TYPES, help="user id type (default: format's)")
    parser.add_argument("--item-type", choices=ID_TYPES, help="item id type (default: format's)")
    parser.add_argument("--partitions", type=int, help="coalesce the output to this many files")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--log-level", default="INFO")
    return parser


def _convert(args: argparse.Namespace) -> int:
    delimiter = DELIMITER_NAMES.get(args.delimiter, args.delimiter)
    options = {
        "fmt": args.format,
        "delimiter": delimiter,
        "header": args.header,
        "columns": parse_columns(args.columns) if args.columns else None,
        "user_type": args.user_type,
        "item_type": args.item_type,
    }
    resolve_format(**options)  # refuse bad options before starting Spark
    spark = build_session(args.master, "spark-cf-convert")
    try:
        counts = convert(
            spark,
            args.input,
            args.output,
            rejects_path=args.rejects,
            partitions=args.partitions,
            **options,
        )
    finally:
        spark.stop()
    log.info(
        "done: %d rows read, %d written, %d rejected",
        counts["rows_read"],
        counts["rows_written"],
        counts["rows_rejected"],
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run(lambda: _convert(args))


if __name__ == "__main__":
    sys.exit(main())
