"""Compare two published nightly runs table by table, row by row, value by value.

    .venv/bin/python benchmarks/compare_runs.py /tmp/before/run_date=2026-01-01 \
        /tmp/after/run_date=2026-01-01

Reads model/user_factors, model/item_factors, predictions, top_n and quarantine of both
runs with pyarrow (no Spark), sorts each table by its key columns, and checks that both
hold the same rows with bit-identical values (NaN equal to NaN; floats compared as
their 64-bit patterns, so -0.0 and 0.0 differ). Then lists the keys of
model/metadata.json and metrics.json that were added, removed or changed. Exit 0 when
every table is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: table -> its key columns (rows sorted by them before comparing)
TABLES = {
    "model/user_factors": ["user_id"],
    "model/item_factors": ["item_id"],
    "predictions": ["user_id", "item_id"],
    "top_n": ["user_id", "rank"],
    "quarantine": None,  # every column
}


def _vector_bits(row: list | None) -> list | None:
    return None if row is None else np.asarray(row, np.float64).view(np.uint64).tolist()


def _bits(column: pa.ChunkedArray) -> list:
    """The values of a column in a form that compares bit for bit."""
    kind = column.type
    if pa.types.is_floating(kind):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        return values.view(np.uint64).tolist()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return [_vector_bits(row) for row in column.to_pylist()]
    return column.to_pylist()


def compare_table(a: pa.Table, b: pa.Table, keys: list[str] | None) -> list[str]:
    problems = []
    if a.schema.names != b.schema.names:
        return [f"columns differ: {a.schema.names} != {b.schema.names}"]
    if a.schema != b.schema:
        problems.append(f"types differ: {a.schema} != {b.schema}")
    if a.num_rows != b.num_rows:
        return problems + [f"rows differ: {a.num_rows} != {b.num_rows}"]
    keys = keys or [n for n in a.schema.names if not pa.types.is_list(a.schema.field(n).type)]
    order = [(k, "ascending") for k in keys]
    if a.num_rows:
        a = a.sort_by(order)
        b = b.sort_by(order)
    for name in a.schema.names:
        va, vb = _bits(a.column(name)), _bits(b.column(name))
        diff = [n for n, (x, y) in enumerate(zip(va, vb)) if x != y]
        if diff:
            problems.append(f"column {name}: {len(diff)} rows differ (first at row {diff[0]})")
    return problems


#: what differs between any two runs: where they were written, the session, the clock
VOLATILE = (
    "config.output.root",
    "spark.spark.app",
    "spark.spark.driver",
    "timings_s",
    "software",
    "training.seconds",
)


def _steady(value):
    """``value`` without the wall-clock seconds of history entries."""
    if isinstance(value, list):
        return [_steady(v) for v in value]
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in ("seconds", "time")}
    return value


def compare_json(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys added, removed or changed from ``a`` to ``b`` (nested keys joined by dots)."""
    notes = []
    for key in sorted(set(a) | set(b)):
        where = f"{prefix}{key}"
        if key not in a:
            notes.append(f"added {where}")
        elif key not in b:
            notes.append(f"removed {where}")
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            notes += compare_json(a[key], b[key], where + ".")
        elif _steady(a[key]) != _steady(b[key]):
            notes.append(f"changed {where}")
    return notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args(argv)
    before, after = Path(args.before), Path(args.after)
    ok = True
    for table, keys in TABLES.items():
        a = pq.read_table(before / table)
        b = pq.read_table(after / table)
        problems = compare_table(a, b, keys)
        ok &= not problems
        status = "identical" if not problems else "DIFFERENT: " + "; ".join(problems)
        print(f"{table:<20} {a.num_rows:>7} rows  {status}")
    for name in ("model/metadata.json", "metrics.json"):
        a = json.loads((before / name).read_text())
        b = json.loads((after / name).read_text())
        notes = [n for n in compare_json(a, b) if not any(part in n for part in VOLATILE)]
        print(f"{name}: " + ("same keys and values" if not notes else "; ".join(notes)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
