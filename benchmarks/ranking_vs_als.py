"""Top-N ranking: spark-cf against MLlib ALS implicit and the popularity baseline (issue 13).

    python benchmarks/ranking_vs_als.py                       # both real sets, about 10 min
    python benchmarks/ranking_vs_als.py --datasets ml-latest-small --systems ours-ranking
    python benchmarks/ranking_vs_als.py --datasets            # only re-render the markdown

For each data set (converted once to Parquet under benchmarks/work/ by
:func:`vs_als.dataset_path`) one split, spark-cf's ``prepare(holdout_fraction=0.2,
split="random", seed=42)``, and on it, each system in its own child process (its own JVM,
its own peak memory):

- ``popularity``: items by their number of training ratings (ties to the smaller item id),
  computed here with NumPy;
- ``als-implicit``: MLlib ALS ``implicitPrefs=True``, rank 10, 10 iterations, on the grid
  regParam x alpha; the best by nDCG@10;
- ``als-explicit``: MLlib ALS explicit, regParam 0.1, for reference (held-out RMSE too);
- ``ours-ratings``: spark-cf's default ratings model (:func:`spark_cf.training.fit.fit`'s
  defaults with ``biases=True``; prepared with mean normalisation, which with biases is
  the global mean), ranked by its predicted ratings;
- ``ours-ranking``: spark-cf's ranking objective, ``fit(data, objective="ranking",
  alpha=A, reg_param=R, rank=10, optimizer="lbfgs", max_iter=M, biases=False)`` on data
  prepared without normalisation, over the grid ``--ours-regs`` x ``--ours-alphas``
  (``--ours-iters`` iterations). Run only when ``fit`` accepts ``objective``; otherwise
  the results say "ranking objective not available".

The evaluation is the same for all: relevant = a held-out rating >= 0.8 x the top of the
scale (4 on MovieLens' 0.5..5, 8 on MovieTweetings' 0..10); each evaluation user (a user
with at least one relevant held-out rating) gets a top-10 list with the items they rated
in training excluded; P@10, R@10, nDCG@10 and MAP@10 by
:func:`spark_cf.outputs.evaluation.ranking_metrics`, averaged over the same users for
every system (a user a system cannot score, e.g. one ALS has no factors for because all
their ratings were held out, gets an empty list: misses). ALS's lists and the
popularity's are computed exactly on the driver from the factors (every item scored,
training items set to -inf, the best 10 kept by spark-cf's own kernel
:func:`spark_cf.outputs.recommend.top_n_block`); spark-cf's are its published top-N
(:func:`spark_cf.outputs.evaluation.evaluate_model`, i.e.
:func:`spark_cf.outputs.recommend.top_n` on Spark). Fit seconds: the ``fit`` call only
(ALS's ``fit``; spark-cf's ``fit`` with the blocking of the ratings), after a short
warm-up fit in the same process. Every child reports the split (counts and a hash of the
held-out pairs); the parent fails if they differ.

Results: benchmarks/results/ranking_vs_als.json and the section "Top-N against ALS
implicit and popularity" in docs/benchmarks.md (between markers, so that the rest of the
file, written by vs_als.py, is kept; vs_als.py keeps the marked sections in turn;
``--datasets`` with nothing after it re-renders this section alone).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from vs_als import (  # noqa: E402
    RANK,
    REAL,
    RESULTS,
    ROOT,
    SEED,
    _prepared,
    _session,
    dataset_path,
    machine,
    rating_range,
)
from vs_als import run_child as vs_als_run_child  # noqa: E402

from spark_cf.config import RankingConfig  # noqa: E402

K = 10
RELEVANT_SHARE = 0.8  # relevant: held-out rating >= this x the top of the rating scale
ALS_ITERATIONS = 10
ALS_REGS = (0.01, 0.1, 1.0)
ALS_ALPHAS = (1.0, 10.0, 40.0)
ALS_EXPLICIT_REG = 0.1
# the shipped top-N model (conf/default.toml's [ranking]) unless a grid is given
OURS_REGS = (RankingConfig.reg,)
OURS_ALPHAS = (RankingConfig.alpha,)
OURS_ITERS = RankingConfig.max_iter
SYSTEMS = ("popularity", "als-implicit", "als-explicit", "ours-ratings", "ours-ranking")
RESULT_FILE = RESULTS / "ranking_vs_als.json"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- ranking_vs_als.py: begin -->"
END = "<!-- ranking_vs_als.py: end -->"
NOT_AVAILABLE = "ranking objective not available"
METRICS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k")


def ranking_available() -> bool:
    """Whether spark-cf's ``fit`` takes ``objective`` (the ranking objective)."""
    from spark_cf.training.fit import fit

    return "objective" in inspect.signature(fit).parameters


# ------------------------------------------------------------------------------ children


def _split(spark, path: str, *, mean_normalization: bool, biases: bool):
    """vs_als.py's split (:func:`vs_als._prepared`), so both benchmarks hold out the same."""
    return _prepared(spark, path, biases, mean_normalization)


class Split:
    """The split on the driver: training pairs, relevant held-out pairs, evaluation users."""

    def __init__(self, data, threshold: float) -> None:
        import numpy as np

        from spark_cf.schema import IS_VAL, ITEM_IDX, RATING, USER_IDX

        a = data.arrays()  # sorted by (user_idx, item_idx)
        val = a[IS_VAL]
        self.num_users, self.num_items = data.index.num_users, data.index.num_items
        self.train_users = a[USER_IDX][~val].astype(np.int64)
        self.train_items = a[ITEM_IDX][~val].astype(np.int64)
        self.train_ratings = a[RATING][~val].astype(np.float64)
        self.val_users = a[USER_IDX][val].astype(np.int64)
        self.val_items = a[ITEM_IDX][val].astype(np.int64)
        self.val_ratings = a[RATING][val].astype(np.float64)
        rel = self.val_ratings >= threshold
        self.rel_users, self.rel_items = self.val_users[rel], self.val_items[rel]
        self.eval_users = np.unique(self.rel_users)
        trained = np.zeros(self.num_users, dtype=bool)
        trained[self.train_users] = True
        held = np.stack([self.val_users, self.val_items]).astype(np.int64).tobytes()
        self.facts = {
            "users": self.num_users,
            "items": self.num_items,
            "train": int(data.num_train),
            "held_out": int(data.num_val),
            "relevant_pairs": int(rel.sum()),
            "eval_users": int(len(self.eval_users)),
            "eval_users_without_training": int((~trained[self.eval_users]).sum()),
            "held_out_sha256": hashlib.sha256(held).hexdigest(),
        }

    def metrics(self, user_factors, item_factors, item_offsets, users) -> dict:
        """The @k metrics of lists scored ``user_factors @ item_factors.T + item_offsets``
        for ``users`` (evaluation users absent from it get no list), training items
        excluded, by spark-cf's top-N kernel."""
        import numpy as np

        from spark_cf.outputs.evaluation import ranking_metrics
        from spark_cf.outputs.recommend import top_n_block

        users = np.asarray(users, dtype=np.int64)
        pos = np.full(self.num_users, -1, dtype=np.int64)
        pos[users] = np.arange(len(users))
        ex = pos[self.train_users] >= 0
        best_i, _, counts = top_n_block(
            np.ascontiguousarray(user_factors[users], dtype=np.float64),
            None,
            np.ascontiguousarray(item_factors, dtype=np.float64),
            np.asarray(item_offsets, dtype=np.float64),
            pos[self.train_users][ex],
            self.train_items[ex],
            K,
        )
        keep = np.arange(K)[None, :] < counts[:, None]
        rec_users = np.broadcast_to(users[:, None], keep.shape)[keep]
        rec_ranks = np.broadcast_to(np.arange(1, K + 1)[None, :], keep.shape)[keep]
        return ranking_metrics(
            rec_users, best_i[keep], rec_ranks, self.rel_users, self.rel_items, K
        )


def _metrics_row(m: dict) -> dict:
    return {key: m[key] for key in METRICS} | {"metric_users": m["users"]}


def child_popularity(path: str, threshold: float) -> dict:
    import numpy as np

    spark = _session("rank-popularity")
    split = Split(_split(spark, path, mean_normalization=False, biases=False), threshold)
    spark.stop()
    t = time.perf_counter()
    counts = np.bincount(split.train_items, minlength=split.num_items).astype(np.float64)
    fit_s = time.perf_counter() - t
    ones = np.ones((split.num_users, 1))
    m = split.metrics(ones, counts[:, None], np.zeros(split.num_items), split.eval_users)
    return {"split": split.facts, "runs": [{"fit_s": round(fit_s, 4), **_metrics_row(m)}]}


def _als_factors(model, n: tuple[int, int], rank: int):
    """ALS's factors as dense (n, rank) arrays by index, and which rows it has."""
    import numpy as np

    out, known = [], []
    for frame, size in ((model.userFactors, n[0]), (model.itemFactors, n[1])):
        t = frame.toArrow()
        ids = t.column("id").to_numpy().astype(np.int64)
        feats = t.column("features").combine_chunks().flatten().to_numpy()
        f = np.zeros((size, rank))
        f[ids] = np.asarray(feats, dtype=np.float64).reshape(len(ids), rank)
        has = np.zeros(size, dtype=bool)
        has[ids] = True
        out.append(f)
        known.append(has)
    return out[0], out[1], known[0], known[1]


def child_als(path: str, threshold: float, implicit: bool, regs, alphas) -> dict:
    import numpy as np
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from spark_cf.schema import IS_VAL, ITEM_IDX, RATING, USER_IDX

    spark = _session("rank-als-implicit" if implicit else "rank-als-explicit")
    spark.sparkContext.setCheckpointDir(tempfile.mkdtemp(prefix="als-checkpoints-"))
    data = _split(spark, path, mean_normalization=False, biases=False)
    split = Split(data, threshold)
    train = data.ratings.where(~F.col(IS_VAL)).select(USER_IDX, ITEM_IDX, RATING).cache()
    train.count()
    cols = {"userCol": USER_IDX, "itemCol": ITEM_IDX, "ratingCol": RATING}
    # warm the JVM up (code paths, JIT) with one short fit, as vs_als.py does
    ALS(rank=RANK, maxIter=1, implicitPrefs=implicit, **cols).fit(train)
    runs = []
    for reg in regs:
        for alpha in alphas if implicit else [None]:
            extra = {"alpha": alpha} if implicit else {}
            als = ALS(
                rank=RANK,
                maxIter=ALS_ITERATIONS,
                regParam=reg,
                implicitPrefs=implicit,
                seed=SEED,
                checkpointInterval=10,
                **extra,
                **cols,
            )
            t = time.perf_counter()
            model = als.fit(train)
            fit_s = time.perf_counter() - t
            U, V, has_u, has_i = _als_factors(model, (split.num_users, split.num_items), RANK)
            offsets = np.where(has_i, 0.0, -np.inf)  # items ALS never saw: never listed
            users = split.eval_users[has_u[split.eval_users]]
            m = split.metrics(U, V, offsets, users)
            row = {"reg": reg, "alpha": alpha, "fit_s": round(fit_s, 2), **_metrics_row(m)}
            if not implicit:  # held-out RMSE; pairs ALS cannot score get the training mean
                pred = np.sum(U[split.val_users] * V[split.val_items], axis=1)
                ok = has_u[split.val_users] & has_i[split.val_items]
                pred = np.where(ok, pred, split.train_ratings.mean())
                row["rmse"] = float(np.sqrt(np.mean((pred - split.val_ratings) ** 2)))
                row["unscored"] = int((~ok).sum())
            row["users_listed"] = int(len(users))
            runs.append(row)
            print(
                f"ALS {'implicit' if implicit else 'explicit'} reg {reg} alpha {alpha}: "
                f"fit {fit_s:.1f} s, nDCG@{K} {m['ndcg_at_k']:.4f}",
                flush=True,
            )
            model.userFactors.unpersist()
            model.itemFactors.unpersist()
    spark.stop()
    return {"split": split.facts, "runs": runs}


def _evaluate_ours(spark, data, model, threshold: float) -> dict:
    from pyspark.sql import functions as F

    from spark_cf.outputs.evaluation import evaluate_model
    from spark_cf.schema import IS_VAL, ITEM, ITEM_IDX, RATING, USER, USER_IDX

    truth = data.ratings.where(F.col(IS_VAL)).select(USER, ITEM, RATING).toArrow()
    exclude = data.ratings.where(~F.col(IS_VAL)).select(USER_IDX, ITEM_IDX)
    return evaluate_model(
        spark, model, truth, exclude, k=K, relevance_threshold=threshold, clip=None
    )


def child_ours_ratings(path: str, threshold: float) -> dict:
    from spark_cf.training.fit import fit

    spark = _session("rank-ours-ratings")
    # with biases, mean normalisation is the global mean (spark_cf.data.prepare)
    data = _split(spark, path, mean_normalization=True, biases=True)
    split = Split(data, threshold)
    # the ratings model as it was when its RMSE was recorded (fit's defaults then)
    then = {"biases": True, "reg_param": 10.0, "lbfgs_precondition": "none"}
    fit(data, **then, max_iter=2)  # warm-up, as vs_als.py does
    t = time.perf_counter()
    model, result = fit(data, **then)  # conf/default.toml's defaults otherwise
    fit_s = time.perf_counter() - t
    ev = _evaluate_ours(spark, data, model, threshold)
    spark.stop()
    row = {
        "settings": "biases=True, reg_param 10, lbfgs (precondition none), max_iter 100",
        "fit_s": round(fit_s, 2),
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "rmse": ev["rmse"],
        **_metrics_row(ev),
    }
    print(f"spark-cf ratings: fit {fit_s:.1f} s, nDCG@{K} {ev['ndcg_at_k']:.4f}", flush=True)
    return {"split": split.facts, "runs": [row]}


def child_ours_ranking(path: str, threshold: float, regs, alphas, iters: int) -> dict:
    from spark_cf.config import Config, fit_arguments
    from spark_cf.training.fit import fit

    if "objective" not in inspect.signature(fit).parameters:
        return {"available": False, "note": NOT_AVAILABLE, "runs": []}
    spark = _session("rank-ours-ranking")
    data = _split(spark, path, mean_normalization=False, biases=False)
    split = Split(data, threshold)

    def ranking_fit(reg: float, alpha: float, max_iter: int):
        # the nightly job's arguments for its top-N model (conf/default.toml), with the
        # grid's reg, alpha and max_iter
        args = fit_arguments(Config(), ranking=True)
        args.update(reg_param=reg, alpha=alpha, max_iter=max_iter, rank=RANK)
        return fit(data, **args)

    ranking_fit(regs[0], alphas[0], 2)  # warm-up
    runs = []
    for reg in regs:
        for alpha in alphas:
            t = time.perf_counter()
            model, result = ranking_fit(reg, alpha, iters)
            fit_s = time.perf_counter() - t
            ev = _evaluate_ours(spark, data, model, threshold)
            runs.append(
                {
                    "reg": reg,
                    "alpha": alpha,
                    "max_iter": iters,
                    "fit_s": round(fit_s, 2),
                    "iterations": result.iterations,
                    "stop_reason": result.stop_reason,
                    "rmse": None,  # scores, not ratings: RMSE is not meaningful
                    **_metrics_row(ev),
                }
            )
            print(
                f"spark-cf ranking reg {reg} alpha {alpha}: fit {fit_s:.1f} s, "
                f"{result.iterations} iterations, nDCG@{K} {ev['ndcg_at_k']:.4f}",
                flush=True,
            )
    spark.stop()
    return {"available": True, "split": split.facts, "runs": runs}


# --------------------------------------------------------------------------------- parent


def run_child(args: list[str]) -> tuple[dict, dict[str, float], float]:
    """Run this script as a child (``--child ...``): :func:`vs_als.run_child`."""
    return vs_als_run_child(args, script=__file__)


def best(runs: list[dict]) -> dict | None:
    """The run with the highest nDCG@k (the first of equals)."""
    return max(runs, key=lambda r: r["ndcg_at_k"]) if runs else None


def targets(results: dict) -> list[dict]:
    """Issue 13's targets; ``met`` is None while the ranking objective is missing."""
    out = []
    for name, r in results["datasets"].items():
        s = r["systems"]
        als = best(s["als-implicit"]["runs"])
        pop = s["popularity"]["runs"][0]
        ours_sys = s.get("ours-ranking", {})
        ours = best(ours_sys.get("runs", []))
        pending = f"pending: {ours_sys.get('note', NOT_AVAILABLE)}"
        nd = f"nDCG@{K} of spark-cf's ranking"
        checks = [  # (target, ours, the bound, the value's text, higher is better)
            (f"{nd} >= ALS implicit's best", "ndcg_at_k", als["ndcg_at_k"], "ALS implicit"),
            (f"{nd} >= 1.5x popularity", "ndcg_at_k", 1.5 * pop["ndcg_at_k"], "1.5 x popularity"),
            ("fit s of spark-cf's best ranking config <= ALS implicit's best's", "fit_s",
             als["fit_s"], "ALS implicit"),
        ]  # fmt: skip
        for target, key, bound, what in checks:
            fit = key == "fit_s"
            if ours is None:
                need = f"<= {bound} s" if fit else f">= {bound:.4f}"
                value, met = f"{pending} (needs {need})", None
            elif fit:
                value, met = f"{ours[key]} s vs {what} {bound} s", ours[key] <= bound
            else:
                value, met = f"{ours[key]:.4f} vs {what} {bound:.4f}", ours[key] >= bound
            out.append({"target": f"{name}: {target}", "value": value, "met": met})
        ratings = s["ours-ratings"]["runs"][0]
        base = r.get("ratings_rmse_baseline")
        out.append(
            {
                "target": f"{name}: RMSE of the published (ratings model's) predictions unchanged",
                "value": f"{ratings['rmse']:.6f} vs the recorded {base['rmse']:.6f} "
                f"({base['date']})",
                "met": abs(ratings["rmse"] - base["rmse"]) <= 1e-6,
            }
        )
    return out


def _f(x) -> str:
    return "" if x is None else f"{x:.4f}"


def _row(system: str, setting: str, run: dict, iterations="", bold: bool = False) -> str:
    cells = [_f(run[k]) for k in METRICS]
    if bold:
        cells = [f"**{c}**" for c in cells]
    rmse = _f(run.get("rmse")) if run.get("rmse") is not None else "-"
    return (
        f"| {system} | {setting} | {' | '.join(cells)} | {run['fit_s']} | {iterations} | {rmse} |"
    )


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        BEGIN,
        "## Top-N against ALS implicit and popularity",
        "",
        f"Made by `python benchmarks/ranking_vs_als.py` ({m['cpus']} cores, "
        f"{m['memory_gib']} GiB, Python {m['python']}, pyspark {m['pyspark']}), local[2]; "
        "the figures are in `benchmarks/results/ranking_vs_als.json`. One split per data "
        "set, spark-cf's seeded 20% random split (seed 42), the same for every system "
        "(checked: held-out count and a hash of the held-out pairs); each system in its "
        "own process. Relevant: a held-out rating >= 0.8 x the top of the scale (4 on "
        "ml-latest-small's 0.5..5, 8 on MovieTweetings' 0..10). Each user with a "
        f"relevant held-out rating gets a top-{K} list with their training items "
        "excluded; P@10, R@10, nDCG@10 and MAP@10 by "
        "`spark_cf.outputs.evaluation.ranking_metrics`, averaged over the same users for "
        "all systems (a user a system cannot score, e.g. all of whose ratings were held "
        "out for ALS, counts with an empty list).",
        "",
        f"Popularity: items by training rating count, ties to the smaller id. ALS: rank "
        f"{RANK}, {ALS_ITERATIONS} iterations, implicitPrefs=True on the grid regParam "
        f"{list(ALS_REGS)} x alpha {list(ALS_ALPHAS)} (the best by nDCG@10 in bold), and "
        f"explicit at regParam {ALS_EXPLICIT_REG}; its lists are computed exactly from its "
        "factors on the driver (every item scored, training items excluded, by spark-cf's "
        "top-N kernel). spark-cf ratings: biases, reg 10, L-BFGS with the scalar start "
        "(the defaults when it was recorded), 100 iterations at most, ranked by the "
        "predicted rating with the published top-N "
        "(`evaluate_model`). spark-cf ranking: the nightly job's top-N model "
        "(conf/default.toml's [ranking]: `fit(objective='ranking', ...)`, no normalisation), "
        "L-BFGS (the curvature's start, the default); its RMSE is not meaningful. Fit seconds: the "
        "fit call alone (spark-cf's includes blocking the ratings), after a warm-up fit.",
    ]
    if any(
        not r["systems"].get("ours-ranking", {}).get("runs") for r in results["datasets"].values()
    ):
        lines += [
            "",
            "The spark-cf ranking rows are pending: this `fit` does not take `objective` yet "
            "(the ranking objective is on another branch); the script runs them, and the "
            "targets, once it does (`--systems ours-ranking` re-measures only them).",
        ]
    if results.get("note"):
        lines += ["", f"Note: {results['note']}"]
    for name, r in results["datasets"].items():
        s = r["systems"]
        facts = r["split"]
        lines += [
            "",
            f"### {name}",
            "",
            f"Measured {r['date']}. {facts['users']:,} users, {facts['items']:,} items, "
            f"{facts['train']:,} training and {facts['held_out']:,} held-out ratings; "
            f"relevant: >= {r['relevance_threshold']:g}, {facts['relevant_pairs']:,} "
            f"pairs, {facts['eval_users']:,} evaluation users "
            f"({facts['eval_users_without_training']} of them with no training rating).",
            "",
            "| system | setting | P@10 | R@10 | nDCG@10 | MAP@10 | fit s | iterations | RMSE |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines.append(_row("popularity", "training counts", s["popularity"]["runs"][0]))
        als_best = best(s["als-implicit"]["runs"])
        for run in s["als-implicit"]["runs"]:
            setting = f"reg {run['reg']:g}, alpha {run['alpha']:g}"
            lines.append(_row("ALS implicit", setting, run, ALS_ITERATIONS, run is als_best))
        for run in s["als-explicit"]["runs"]:
            lines.append(_row("ALS explicit", f"reg {run['reg']:g}", run, ALS_ITERATIONS))
        for run in s["ours-ratings"]["runs"]:
            lines.append(_row("spark-cf ratings", "defaults, biases", run, run["iterations"]))
        ours = s.get("ours-ranking", {})
        if ours.get("runs"):
            ours_best = best(ours["runs"])
            for run in ours["runs"]:
                setting = f"reg {run['reg']:g}, alpha {run['alpha']:g}, {run['max_iter']} it."
                bold = run is ours_best
                lines.append(_row("spark-cf ranking", setting, run, run["iterations"], bold))
        else:
            lines.append(
                f"| spark-cf ranking | pending: {ours.get('note', NOT_AVAILABLE)} | | | | | | | |"
            )
    lines += ["", "### Targets (issue 13)", "", "| target | measured | |", "|---|---|---|"]
    for t in results["targets"]:
        status = "pending" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"| {t['target']} | {t['value']} | {status} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    """Put the section between its markers in docs/benchmarks.md (appended the first time)."""
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=list(REAL),
        choices=list(REAL),
        help="data sets to (re)measure; none: only re-render the markdown",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        default=list(SYSTEMS),
        choices=SYSTEMS,
        help="systems to (re)measure; the others keep their last results",
    )
    parser.add_argument("--ours-regs", nargs="+", type=float, default=list(OURS_REGS))
    parser.add_argument("--ours-alphas", nargs="+", type=float, default=list(OURS_ALPHAS))
    parser.add_argument("--ours-iters", type=int, default=OURS_ITERS)
    parser.add_argument(
        "--note", help="a remark on the run shown with the table (e.g. the machine's load)"
    )
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        c, path, thr = args.child, args.data, args.threshold
        if c == "popularity":
            answer = child_popularity(path, thr)
        elif c == "als-implicit":
            answer = child_als(path, thr, True, ALS_REGS, ALS_ALPHAS)
        elif c == "als-explicit":
            answer = child_als(path, thr, False, [ALS_EXPLICIT_REG], None)
        elif c == "ours-ratings":
            answer = child_ours_ratings(path, thr)
        else:
            answer = child_ours_ranking(
                path, thr, args.ours_regs, args.ours_alphas, args.ours_iters
            )
        Path(args.out).write_text(json.dumps(answer))
        return 0

    started = time.perf_counter()
    results = {"machine": machine(), "datasets": {}}
    if RESULT_FILE.exists():
        old = json.loads(RESULT_FILE.read_text())
        results["datasets"] = old.get("datasets", {})
        if not args.datasets:
            results["machine"] = old["machine"]
            results["note"] = old.get("note")
    if args.note is not None:
        results["note"] = args.note

    def save() -> None:
        results["targets"] = targets(results)
        RESULTS.mkdir(exist_ok=True)
        RESULT_FILE.write_text(json.dumps(results, indent=2) + "\n")
        write_doc(markdown(results))

    available = ranking_available()
    for name in args.datasets:
        path = str(dataset_path(name))
        threshold = RELEVANT_SHARE * rating_range(name)[1]
        entry = results["datasets"].get(name, {})
        if entry.get("relevance_threshold") not in (None, threshold):
            entry = {}  # another evaluation: measure everything again
        systems = entry.setdefault("systems", {})
        todo = [s for s in SYSTEMS if s in args.systems or s not in systems]
        for system in todo:
            if system == "ours-ranking" and not available:
                print(f"{name} {system}: {NOT_AVAILABLE}", flush=True)
                systems[system] = {"available": False, "note": NOT_AVAILABLE, "runs": []}
                continue
            child = ["--child", system, "--data", path, "--threshold", repr(threshold)]
            if system == "ours-ranking":
                child += ["--ours-regs", *map(repr, args.ours_regs)]
                child += ["--ours-alphas", *map(repr, args.ours_alphas)]
                child += ["--ours-iters", str(args.ours_iters)]
            answer, peak, seconds = run_child(child)
            answer["peak_gib"], answer["child_s"] = peak, round(seconds, 1)
            systems[system] = answer
            print(f"{name} {system}: child {seconds:.0f} s, peak {peak.get('total')} GiB")
        splits = {s: a["split"] for s, a in systems.items() if "split" in a}
        first = next(iter(splits.values()))
        differ = [s for s, f in splits.items() if f != first]
        if differ:
            raise SystemExit(
                f"{name}: the split differs between children: " + json.dumps(splits, indent=1)
            )
        for system, answer in systems.items():
            for run in answer.get("runs", []):
                if run["metric_users"] != first["eval_users"]:
                    raise SystemExit(
                        f"{name} {system}: metrics over {run['metric_users']} users, the "
                        f"split has {first['eval_users']} evaluation users"
                    )
        entry.update(
            {
                "relevance_threshold": threshold,
                "split": first,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        rmse = systems["ours-ratings"]["runs"][0]["rmse"]
        entry.setdefault("ratings_rmse_baseline", {"rmse": rmse, "date": entry["date"]})
        results["datasets"][name] = entry
        save()
    if not args.datasets:
        save()
    for t in results["targets"]:
        status = "pending" if t["met"] is None else ("met    " if t["met"] else "NOT met")
        print(f"{status}  {t['target']}: {t['value']}")
    print(f"ranking_vs_als.py: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
