"""L-BFGS's starting inverse Hessian, and the Gauss-Newton steps it was chosen against.

    python benchmarks/preconditioners.py                  # both real sets, about 5 minutes
    python benchmarks/preconditioners.py --datasets ml-latest-small --iterations 40

Single node, NumPy (the reference objective, :mod:`spark_cf.reference.numpy_cf`), so the
comparison counts iterations and is free of Spark's noise; each iteration of the Spark
path is one job per evaluation of the same objective (``benchmarks/vs_als.py`` times
those). On each real set of ../shared/data (biased model, rank 10, a seeded 80/20 random
split), from the same random start, for each reg:

- ``lbfgs-none``: L-BFGS with the textbook's scalar start (the default before);
- ``lbfgs-counts``: with ``1 / (ratings of the row + 1)``, scaled (``"counts"``);
- ``lbfgs-curvature``: with the inverse of the diagonal of the Gauss-Newton curvature at
  the current point (``"curvature"``, the default now);
- ``lbfgs-blocks``: with the inverse of the whole k x k Gauss-Newton blocks of each row
  (what ALS solves with), written here: it would cost k times the diagonal's bytes per
  evaluation on the Spark path;
- ``gauss-newton``: the simultaneous block-Jacobi Gauss-Newton step (the same blocks)
  with a backtracking line search on J, no memory.

It reports the first iteration whose held-out RMSE is within 0.002 of the run's best,
the held-out RMSE at 10 and 20 iterations and at the end, and J at the end. Results:
benchmarks/results/preconditioners.json and a section of docs/benchmarks.md (between
its markers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from spark_cf.reference.numpy_cf import ReferenceObjective  # noqa: E402
from spark_cf.training.optimizers import LBFGS, OptimizerSettings  # noqa: E402
from spark_cf.training.params import (  # noqa: E402
    Layout,
    initial_parameters,
    row_preconditioner,
)

RANK = 10
SEED = 42
HOLDOUT = 0.2
WITHIN = 0.002
REGS = {"ml-latest-small": (10.0, 20.0), "movietweetings-100k": (20.0, 40.0)}
METHODS = ("lbfgs-none", "lbfgs-counts", "lbfgs-curvature", "lbfgs-blocks", "gauss-newton")
RESULTS = HERE / "results" / "preconditioners.json"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- preconditioners: begin -->", "<!-- preconditioners: end -->"


def load(name: str):
    """The set's ratings as index arrays, split 80/20 at random (seeded)."""
    import pyarrow.parquet as pq
    from vs_als import dataset_path

    table = pq.read_table(str(dataset_path(name))).to_pandas()
    _, users = np.unique(table["user_id"].to_numpy(), return_inverse=True)
    _, items = np.unique(table["item_id"].astype(str).to_numpy(), return_inverse=True)
    y = table["rating"].to_numpy(dtype=np.float64)
    held = np.random.default_rng(SEED).random(len(y)) < HOLDOUT
    return items, users, y, held


class Blocks:
    """The k x k (k + 1 with the bias) Gauss-Newton blocks of every item's and user's row."""

    def __init__(self, layout: Layout, items, users, reg: float) -> None:
        self.layout, self.items, self.users, self.reg = layout, items, users, reg

    def _rows(self, v):
        L = self.layout
        return (
            np.column_stack([L.X(v), L.item_bias(v)]),
            np.column_stack([L.Theta(v), L.user_bias(v)]),
        )

    def solver(self, w):
        """``g -> H^-1 g`` with H the blocks at ``w``."""
        L, k = self.layout, self.layout.rank
        Xa = np.column_stack([L.X(w), np.ones(L.num_items)])
        Ta = np.column_stack([L.Theta(w), np.ones(L.num_users)])
        eye = self.reg * np.eye(k + 1)
        HI = np.zeros((L.num_items, k + 1, k + 1))
        HU = np.zeros((L.num_users, k + 1, k + 1))
        np.add.at(HI, self.items, Ta[self.users][:, :, None] * Ta[self.users][:, None, :])
        np.add.at(HU, self.users, Xa[self.items][:, :, None] * Xa[self.items][:, None, :])
        HI += eye
        HU += eye

        def solve(g):
            gi, gu = self._rows(g)
            si = np.linalg.solve(HI, gi[..., None])[..., 0]
            su = np.linalg.solve(HU, gu[..., None])[..., 0]
            return L.pack(si[:, :k], su[:, :k], si[:, k], su[:, k])

        return solve


class BlocksLBFGS(LBFGS):
    """The library's L-BFGS with the blocks' solve at the current point as its starting
    inverse Hessian (and so a full first step, as with the curvature's diagonal)."""

    def __init__(self, size: int, blocks: Blocks) -> None:
        super().__init__(OptimizerSettings(lbfgs_precondition="none"), size)
        self.blocks = blocks
        self.needs_curvature = True  # the full step from the first iteration on
        self.current: np.ndarray | None = None

    def direction(self, g, curvature=None):
        solve = self.blocks.solver(self.current)
        q = g.copy()
        order = self._order()
        alphas = np.zeros(len(order))
        for n, slot in reversed(list(enumerate(order))):
            alphas[n] = self.rho[slot] * float(self.s[slot] @ q)
            q -= alphas[n] * self.y[slot]
        q = solve(q)
        for n, slot in enumerate(order):
            beta = self.rho[slot] * float(self.y[slot] @ q)
            q += (alphas[n] - beta) * self.s[slot]
        return -q

    def step(self, w, ev, f):
        self.current = w
        return super().step(w, ev, f)


def run_lbfgs(f, w0, mode, max_iter, counts, blocks):
    """L-BFGS from ``w0``; ``mode`` one of none, counts, curvature (the library's
    ``lbfgs_precondition``) or blocks (:class:`BlocksLBFGS`)."""
    layout = f.layout
    if mode == "blocks":
        opt = BlocksLBFGS(layout.size, blocks)
    else:
        settings = OptimizerSettings(lbfgs_precondition=mode)
        opt = LBFGS(settings, layout.size, row_preconditioner(layout, *counts))
    w, ev = w0, f(w0)
    history = [ev.val_rmse]
    for _ in range(max_iter):
        w, ev = opt.step(w, ev, f)
        history.append(ev.val_rmse)
        if opt.stalled:
            break
    return history, ev.cost


def run_gauss_newton(f, w0, max_iter, blocks):
    w, ev = w0, f(w0)
    history = [ev.val_rmse]
    for _ in range(max_iter):
        d = -blocks.solver(w)(ev.grad)
        slope, alpha = float(ev.grad @ d), 1.0
        for _ in range(20):
            trial = f(w + alpha * d)
            if trial.cost <= ev.cost + 1e-4 * alpha * slope:
                break
            alpha *= 0.5
        w, ev = w + alpha * d, trial
        history.append(ev.val_rmse)
    return history, ev.cost


def measure(name: str, reg: float, max_iter: int) -> list[dict]:
    items, users, y, held = load(name)
    train = ~held
    mu = float(y[train].mean())  # the biased model centres on the global mean
    layout = Layout(int(items.max()) + 1, int(users.max()) + 1, RANK, biases=True)
    counts = (
        np.bincount(items[train], minlength=layout.num_items),
        np.bincount(users[train], minlength=layout.num_users),
    )
    blocks = Blocks(layout, items[train], users[train], reg)
    w0 = initial_parameters(layout, init_scale=0.1, seed=SEED)
    rows = []
    for method in METHODS:
        f = ReferenceObjective(
            layout,
            items[train],
            users[train],
            y[train] - mu,
            reg,
            (items[held], users[held], y[held] - mu),
            curvature=method == "lbfgs-curvature",
        )
        t = time.perf_counter()
        if method == "gauss-newton":
            hist, cost = run_gauss_newton(f, w0, max_iter, blocks)
        else:
            mode = method.split("-", 1)[1]
            hist, cost = run_lbfgs(f, w0, mode, max_iter, counts, blocks)
        best = min(hist)
        row = {
            "data": name,
            "reg": reg,
            "method": method,
            "within": next(i for i, v in enumerate(hist) if v <= best + WITHIN),
            "best_rmse": best,
            "rmse_10": hist[min(10, len(hist) - 1)],
            "rmse_20": hist[min(20, len(hist) - 1)],
            "rmse_end": hist[-1],
            "iterations": len(hist) - 1,
            "final_cost": cost,
            "seconds": round(time.perf_counter() - t, 1),
        }
        rows.append(row)
        print(
            f"{name} reg {reg:g} {method:16s} within {WITHIN} at {row['within']:3d}, RMSE @10 "
            f"{row['rmse_10']:.4f} @20 {row['rmse_20']:.4f} end {row['rmse_end']:.4f}, "
            f"J {cost:.1f}",
            flush=True,
        )
    return rows


def markdown(results: dict) -> str:
    lines = [
        BEGIN,
        "## L-BFGS's starting inverse Hessian (`train.lbfgs_precondition`)",
        "",
        f"Made by `python benchmarks/preconditioners.py` on {results['date']}: NumPy "
        f"reference, biased model, rank {RANK}, seeded 80/20 random split, the same random "
        f"start, {results['iterations']} iterations. 'within': the first iteration whose "
        f"held-out RMSE is within {WITHIN} of the run's best. `lbfgs-blocks` and "
        "`gauss-newton` use the whole k x k Gauss-Newton blocks (module docstring).",
        "",
        "| data | reg | method | within | RMSE @10 | RMSE @20 | RMSE end | J end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['data']} | {r['reg']:g} | {r['method']} | {r['within']} | "
            f"{r['rmse_10']:.4f} | {r['rmse_20']:.4f} | {r['rmse_end']:.4f} | "
            f"{r['final_cost']:.1f} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    from datetime import datetime, timezone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(REGS), choices=list(REGS))
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args()
    rows = []
    for name in args.datasets:
        for reg in REGS[name]:
            rows += measure(name, reg, args.iterations)
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "iterations": args.iterations,
        "rows": rows,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    section = markdown(results)
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
