"""What a run shows people: the evaluation table and the convergence plot."""

from __future__ import annotations

import io
import logging
import math
from typing import Any

log = logging.getLogger(__name__)

#: The metrics of the evaluation table, in order (``_at_k`` is shown as ``@k``).
METRIC_COLUMNS = ("rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k")


def format_table(rows: dict[str, dict[str, Any]], columns: list[str]) -> str:
    """A plain text table: one row per model, one column per metric (None, NaN: n/a).

    Parameters
    ----------
    rows
        Metric values by model name, then by column name.
    columns
        The columns to show, in order.

    Returns
    -------
    The table, lines joined by newlines.
    """
    width = max(len(name) for name in rows) + 2
    head = "model".ljust(width) + "".join(c.rjust(14) for c in columns)
    lines = [head, "-" * len(head)]
    for name, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            cells.append(
                (
                    "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
                ).rjust(14)
            )
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def metrics_table(evaluation: dict[str, dict[str, Any]], k: int) -> str:
    """The evaluation table of :func:`spark_cf.outputs.evaluation.heldout_metrics` or
    :func:`~spark_cf.nightly.run.run_evaluate` (one row per model), with the ``_at_k``
    metrics headed ``@k``; a row with a ``note`` (a baseline that could not be
    evaluated) has it printed under the table."""
    renamed = {
        name: {c.replace("_at_k", f"@{k}"): v for c, v in values.items()}
        for name, values in evaluation.items()
    }
    table = format_table(renamed, [c.replace("_at_k", f"@{k}") for c in METRIC_COLUMNS])
    notes = [f"{name}: {values['note']}" for name, values in evaluation.items() if "note" in values]
    return "\n".join([table, *notes])


def convergence_png(history: list[dict[str, float]]) -> bytes | None:
    """J against iteration on a log scale, as PNG bytes; None without matplotlib.

    Parameters
    ----------
    history
        The training history (``iteration`` and ``cost`` of each entry are plotted).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning(
            "matplotlib is not installed: no convergence.png (pip install "
            "'spark-cf[plot]' to get it)"
        )
        return None
    it = [h["iteration"] for h in history]
    cost = [h["cost"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.semilogy(it, cost, marker=".")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost J (log scale)")
    ax.set_title("convergence")
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
