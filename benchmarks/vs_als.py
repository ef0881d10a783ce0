"""spark-cf against Spark MLlib ALS, side by side on the same split and machine.

    python benchmarks/vs_als.py                      # every data set, about an hour
    python benchmarks/vs_als.py --datasets ml-latest-small movietweetings-100k --no-e2e

Data sets: the two real sets in ../shared/data (converted once to Parquet under
benchmarks/work/) and generated sets of 1M, 5M and 20M ratings (``gen-1M`` ...; the
synthetic generator, written once under benchmarks/work/).

For each data set, one run of this command measures, each system in its own process
(so that its peak memory is its own) on the same held-out split (spark-cf's seeded
random split, 20%):

- ALS: rank 10, 10 iterations, ``regParam`` tuned on a small grid, a checkpoint folder
  set; fit seconds per reg and held-out RMSE (users or items ALS cannot score get the
  training mean, as spark-cf gives them a mean); ``recommendForAllUsers(N)`` seconds.
- spark-cf: each variant (optimiser, model, reg) worth showing: fit seconds (blocking
  the ratings included), iterations, held-out RMSE at the end and at its best, and the
  seconds from the start of the fit to the first iterate at or below ALS's best RMSE;
  on generated sets the run stops there. Top-N for all users, the same N, rated items
  not excluded (as ALS), and with them excluded (as the nightly job).
- the NumPy reference's seconds per evaluation, the empty Spark job's seconds, and the
  peak resident memory of the driver (Python and JVM) and of the Python workers.

With ``--e2e`` (default on) it also times the whole nightly job (``jobs/nightly.py``,
spark-submit) against ``benchmarks/als_nightly.py``, an ALS script doing the same steps.

Results: benchmarks/results/vs_als.json and the table in docs/benchmarks.md; each target
of the issue prints as met or not met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
WORK = HERE / "work"
RESULTS = HERE / "results"

RANK = 10
TOP_N = 10
HOLDOUT = 0.2
SEED = 42
ALS_ITERATIONS = 10
#: on the real sets ALS also runs 20 iterations at each reg (the best of both is its best)
ALS_REAL_ITERATIONS = (10, 20)
#: "within": the first iteration whose held-out RMSE is within this of the run's best
WITHIN = 0.002
ALS_REGS = {"real": (0.05, 0.1, 0.2, 0.5, 1.0), "generated": (0.01, 0.02, 0.05)}
DRIVER_MEMORY = "12g"
SPARK_CONF = {"spark.driver.memory": DRIVER_MEMORY, "spark.sql.shuffle.partitions": "8"}

REAL = {
    "ml-latest-small": ("ml-latest-small/ratings.csv", "movielens", (0.5, 5.0)),
    "movietweetings-100k": ("movietweetings-100k/ratings.dat", "movietweetings", (0.0, 10.0)),
}
GENERATED = {"gen-1M": 1_000_000, "gen-5M": 5_000_000, "gen-20M": 20_000_000}
ALL = list(REAL) + list(GENERATED)

# name: (model settings, train settings); the regs were tuned on the study sets.
# "none", "counts", "curvature": L-BFGS's starting inverse Hessian (train.lbfgs_precondition;
# "none" was the default before the curvature's). "conf-local" and "conf-nightly" are the
# shipped configuration files' [model] and [train] as they are (see SHIPPED).
NONE, COUNTS, CURVATURE = (
    {"optimizer": "lbfgs", "lbfgs_precondition": p} for p in ("none", "counts", "curvature")
)
VARIANTS = {
    "lbfgs-reg10": ({"biases": False, "reg": 10.0}, NONE),
    "lbfgs-reg3": ({"biases": False, "reg": 3.0}, NONE),
    "lbfgs-biased-reg3": ({"biases": True, "reg": 3.0}, NONE),
    "lbfgs-biased-pre-reg3": ({"biases": True, "reg": 3.0}, COUNTS),
    "lbfgs-biased-curv-reg3": ({"biases": True, "reg": 3.0}, CURVATURE),
    "lbfgs-biased-reg20": ({"biases": True, "reg": 20.0}, NONE),
    "lbfgs-biased-curv-reg10": ({"biases": True, "reg": 10.0}, CURVATURE),
    "lbfgs-biased-curv-reg20": ({"biases": True, "reg": 20.0}, CURVATURE),
    "lbfgs-curv-reg10": ({"biases": False, "reg": 10.0}, CURVATURE),
    "adam-biased-reg10": (
        {"biases": True, "reg": 10.0},
        {"optimizer": "adam", "learning_rate": 0.01},
    ),
    "conf-local": ("conf/local.toml", None),
    "conf-nightly": ("conf/nightly.toml", None),
}
#: the variants read from a shipped configuration file ([model] and [train] as they are)
SHIPPED = ("conf-local", "conf-nightly")
REAL_VARIANTS = [
    "lbfgs-reg10",
    "lbfgs-curv-reg10",
    "lbfgs-biased-reg20",
    "lbfgs-biased-curv-reg10",
    "lbfgs-biased-curv-reg20",
    "adam-biased-reg10",
    "conf-local",
    "conf-nightly",
]
# the generated sets are denser (150 ratings per user): a lighter reg
GENERATED_VARIANTS = ["lbfgs-biased-pre-reg3", "lbfgs-biased-curv-reg3", "conf-nightly"]
MAX_ITER = 200


# ------------------------------------------------------------------------------ data sets


def dataset_path(name: str) -> Path:
    """The data set as ratings Parquet under benchmarks/work/, made on first use."""
    WORK.mkdir(exist_ok=True)
    out = WORK / f"{name}.parquet"
    if out.exists():
        return out
    if name in REAL:
        rel, fmt, _ = REAL[name]
        src = SHARED / rel
        if not src.exists():
            raise SystemExit(f"{src} is missing: the real sets live in ../shared/data")
        subprocess.run(
            [sys.executable, str(ROOT / "jobs" / "convert.py"), "--input", str(src)]
            + ["--output", str(out), "--format", fmt, "--partitions", "1"],
            check=True,
        )
    else:
        sys.path.insert(0, str(HERE))
        from iteration_speed import spec_for

        from spark_cf.data.synthetic import write_parquet

        write_parquet(spec_for(GENERATED[name]), str(out))
    return out


def rating_range(name: str) -> tuple[float, float]:
    return REAL[name][2] if name in REAL else (0.5, 5.0)


# ------------------------------------------------------------------------- peak memory


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def _rss_and_kind(pid: int, root: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if "java" in cmd.split(" ", 1)[0]:
        kind = "driver_jvm"  # in local mode the executors live in the driver's JVM
    elif pid == root or "spark-submit" in cmd:
        kind = "driver_python"
    elif "pyspark" in cmd or "python" in cmd:
        kind = "python_workers"
    else:
        kind = "other"
    return rss * 1024, kind


class PeakMemory:
    """Samples the resident memory of a process tree (Linux /proc) every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            children = _children()
            stack, now = [self.pid], {}
            while stack:
                p = stack.pop()
                stack.extend(children.get(p, []))
                got = _rss_and_kind(p, self.pid)
                if got:
                    now[got[1]] = now.get(got[1], 0) + got[0]
            now["total"] = sum(now.values())
            for k, v in now.items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self._stop.wait(0.2)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v / 2**30, 2) for k, v in sorted(self.peak.items())}


def run_child(args: list[str], script: str = __file__) -> tuple[dict, dict[str, float], float]:
    """Run ``script`` (this one by default) as a child (``--child ...``); its JSON answer,
    peak GiB, seconds."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, script, *args, "--out", out])
    mem = PeakMemory(proc.pid)
    code = proc.wait()
    peak = mem.stop()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"child {' '.join(args)} failed with exit code {code}")
    answer = json.loads(Path(out).read_text())
    os.unlink(out)
    return answer, peak, seconds


# ------------------------------------------------------------------------------ children


def _session(name: str):
    from spark_cf.session import build_session

    return build_session("local[2]", f"spark-cf-bench-{name}", SPARK_CONF)


def _prepared(spark, path: str, biases: bool, mean_normalization: bool = True):
    """The benchmark's one split of ``path`` (seeded, HOLDOUT held out)."""
    from spark_cf.data.prepare import prepare

    df = spark.read.parquet(path).select("user_id", "item_id", "rating")
    return prepare(
        df,
        holdout_fraction=HOLDOUT,
        split="random",
        seed=SEED,
        mean_normalization=mean_normalization,
        biases=biases,
    )


def _median(fn, repeats: int) -> float:
    sys.path.insert(0, str(HERE))
    from iteration_speed import median_seconds

    return median_seconds(fn, repeats)


def _empty_job_seconds(spark) -> float:
    sc = spark.sparkContext
    rdd = sc.parallelize(range(sc.defaultParallelism), sc.defaultParallelism).cache()
    rdd.count()
    return _median(lambda: rdd.map(lambda x: x).collect(), 7)


def _noop(df) -> float:
    t = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t


def child_als(path: str, regs: list[float], iterations: list[int]) -> dict:
    import numpy as np
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    from spark_cf.schema import IS_VAL, ITEM_IDX, RATING, USER_IDX

    spark = _session("als")
    checkpoints = tempfile.mkdtemp(prefix="als-checkpoints-")
    spark.sparkContext.setCheckpointDir(checkpoints)
    data = _prepared(spark, path, biases=False)
    train = data.ratings.where(~F.col(IS_VAL)).select(USER_IDX, ITEM_IDX, RATING).cache()
    test = data.ratings.where(F.col(IS_VAL)).select(USER_IDX, ITEM_IDX, RATING).cache()
    train.count(), test.count()
    fallback = data.rating_mean
    # warm the JVM up (code paths, JIT) with one short fit, as child_ours does
    ALS(rank=RANK, maxIter=1, userCol=USER_IDX, itemCol=ITEM_IDX, ratingCol=RATING).fit(train)
    runs, best = [], None
    for iters, reg in ((i, r) for i in iterations for r in regs):
        als = ALS(
            rank=RANK,
            maxIter=iters,
            regParam=reg,
            userCol=USER_IDX,
            itemCol=ITEM_IDX,
            ratingCol=RATING,
            coldStartStrategy="nan",
            seed=SEED,
            checkpointInterval=10,
        )
        t = time.perf_counter()
        model = als.fit(train)
        fit_s = time.perf_counter() - t
        table = model.transform(test).select(RATING, "prediction").toArrow()
        y = table.column(RATING).to_numpy()
        pred = table.column("prediction").to_numpy(zero_copy_only=False).astype(np.float64)
        unscored = int(np.isnan(pred).sum())
        pred = np.where(np.isnan(pred), fallback, pred)
        rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
        runs.append(
            {
                "reg": reg,
                "iterations": iters,
                "fit_s": round(fit_s, 2),
                "rmse": rmse,
                "unscored": unscored,
            }
        )
        print(
            f"ALS reg {reg}, {iters} iterations: fit {fit_s:.1f} s, held-out RMSE {rmse:.4f}",
            flush=True,
        )
        if best is None or rmse < best[1]["rmse"]:
            if best is not None:
                best[0].userFactors.unpersist()
                best[0].itemFactors.unpersist()
            best = (model, runs[-1])
    topn_s = _noop(best[0].recommendForAllUsers(TOP_N))
    out = {
        "regs": runs,
        "best": best[1],
        "iterations": best[1]["iterations"],
        "top_n_s": round(topn_s, 2),
        "empty_job_s": round(_empty_job_seconds(spark), 4),
        "users": data.index.num_users,
        "items": data.index.num_items,
        "train": data.num_train,
        "held_out": data.num_val,
    }
    spark.stop()
    return out


def child_ours(path: str, variants: list[str], target: float, stop_at_target: bool) -> dict:
    import numpy as np

    from spark_cf.config import Config, ModelConfig, TrainConfig, fit_arguments, load_config
    from spark_cf.outputs.recommend import top_n
    from spark_cf.reference.numpy_cf import ReferenceObjective
    from spark_cf.schema import IS_VAL, ITEM_IDX, RATING, USER_IDX
    from spark_cf.training.fit import fit
    from spark_cf.training.params import Layout, initial_parameters

    def config_of(name: str, max_iter: int = MAX_ITER) -> Config:
        model_over, train_over = VARIANTS[name]
        if name in SHIPPED:  # the file's [model] and [train] as they are
            return load_config(ROOT / model_over)
        return Config(
            model=ModelConfig(rank=RANK, seed=SEED, **model_over),
            train=TrainConfig(max_iter=max_iter, **train_over),
        )

    spark = _session("ours")
    prepared = {}
    rows, models = [], {}
    # warm the JVM and the Python workers up with one short fit, as child_als does
    warm = config_of(variants[0], max_iter=2)
    prepared[warm.model.biases] = _prepared(spark, path, warm.model.biases)
    fit(prepared[warm.model.biases], **fit_arguments(warm.replace(model={"reg": 10.0})))
    for name in variants:
        cfg = config_of(name)
        biases = cfg.model.biases
        if biases not in prepared:
            prepared[biases] = _prepared(spark, path, biases)
        data = prepared[biases]
        model_over = {"biases": biases, "reg": cfg.model.reg, "rank": cfg.model.rank}
        train_over = {
            "optimizer": cfg.train.optimizer,
            "lbfgs_precondition": cfg.train.lbfgs_precondition,
            "max_iter": cfg.train.max_iter,
        }
        stamps: dict[int, float] = {}
        t0 = time.perf_counter()

        def callback(iteration, _elapsed, _cost, stamps=stamps, t0=t0):
            stamps[iteration] = time.perf_counter() - t0

        def reached(record):
            return stop_at_target and record["val_rmse"] <= target

        def first_stamp(objective, stamps=stamps, t0=t0):
            def stamped(w):
                ev = objective(w)
                stamps.setdefault(0, time.perf_counter() - t0)  # iteration 0: w0's evaluation
                return ev

            return stamped

        # "auto" trains its grid in threads and takes no wrapper: iteration 0's stamp is
        # then missing (0.0), and a stamp is the latest of the grid's models at that iteration
        model, result = fit(
            data,
            **fit_arguments(cfg),
            callback=callback,
            stop_when=reached,
            **({} if cfg.model.reg == "auto" else {"wrap_objective": first_stamp}),
        )
        fit_s = time.perf_counter() - t0
        hist = result.history
        val = [h["val_rmse"] for h in hist]
        hit = next((h["iteration"] for h in hist if h["val_rmse"] <= target), None)
        within = next(h["iteration"] for h in hist if h["val_rmse"] <= min(val) + WITHIN)
        loop_s = sum(h["seconds"] for h in hist[1:])
        rows.append(
            {
                "variant": name,
                "model": model_over,
                "train": train_over,
                "fit_s": round(fit_s, 2),
                "iterations": result.iterations,
                "evaluations": result.evaluations,
                "stop_reason": result.stop_reason,
                "rmse": val[-1],
                "best_rmse": min(val),
                "best_rmse_iteration": int(np.argmin(val)),
                "within_iteration": within,
                "reg_chosen": result.extra.get("reg"),
                "reg_grid": result.extra.get("reg_grid"),
                "reach_iteration": hit,
                "reach_s": round(stamps[hit], 2) if hit is not None else None,
                "setup_s": round(fit_s - result.seconds, 2),
                "iteration_s": round(loop_s / max(result.iterations, 1), 4),
                "evaluation_s": round(loop_s / max(result.evaluations - 1, 1), 4),
                # (iteration, seconds since the fit started, held-out RMSE)
                "curve": [
                    [h["iteration"], round(stamps.get(h["iteration"], 0.0), 3), h["val_rmse"]]
                    for h in hist
                ],
            }
        )
        models[name] = model
        print(
            f"spark-cf {name}: fit {fit_s:.1f} s, {result.iterations} iterations, held-out "
            f"RMSE {val[-1]:.4f} (best {min(val):.4f}), ALS's {target:.4f} "
            + (f"reached at {stamps[hit]:.1f} s" if hit is not None else "not reached"),
            flush=True,
        )
    if stop_at_target:  # generated sets: the first to ALS's best RMSE
        best = min(rows, key=lambda r: (r["reach_s"] is None, r["reach_s"] or 0.0, r["rmse"]))
    else:
        best = min(rows, key=lambda r: r["rmse"])
    model = models[best["variant"]]
    data = prepared[best["model"]["biases"]]
    topn_s = _noop(top_n(spark, model, None, n=TOP_N))
    rated = data.ratings.select(USER_IDX, ITEM_IDX)
    topn_excl_s = _noop(top_n(spark, model, rated, n=TOP_N))
    # the NumPy reference on the same training ratings (course model, one core)
    a = data.arrays()
    train = ~a[IS_VAL]
    layout = Layout(data.index.num_items, data.index.num_users, RANK)
    w = initial_parameters(layout, init_scale=0.1, seed=SEED)
    y = a[RATING] - prepared.get(False, data).normalization.offsets(a[ITEM_IDX])
    reference = ReferenceObjective(layout, a[ITEM_IDX][train], a[USER_IDX][train], y[train], 10.0)
    ref_s = _median(lambda: reference(w), 3)
    out = {
        "variants": rows,
        "best": best["variant"],
        "top_n_s": round(topn_s, 2),
        "top_n_excluding_rated_s": round(topn_excl_s, 2),
        "reference_evaluation_s": round(ref_s, 4),
        "empty_job_s": round(_empty_job_seconds(spark), 4),
    }
    spark.stop()
    return out


# ---------------------------------------------------------------------------- end to end


def e2e(name: str, path: Path, als_reg: float, als_iterations: int) -> dict:
    """Wall seconds of spark-submit jobs/nightly.py and benchmarks/als_nightly.py, both with
    conf/local.toml and only the input and the output set (ALS at its best reg and
    iterations on this set)."""
    lo, hi = rating_range(name)
    out_root = WORK / "e2e" / name
    sets = [
        f"input.path='{path}'",
        f"input.rating_min={lo}",
        f"input.rating_max={hi}",
        "output.run_date='2026-01-01'",
    ]
    submit = str(Path(sys.executable).parent / "spark-submit")
    common = [submit, "--master", "local[2]", "--driver-memory", DRIVER_MEMORY]
    bin_dir = str(Path(sys.executable).parent)
    env = dict(
        os.environ,
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
    )
    out = {}
    for system, script, extra in (
        ("spark_cf", ROOT / "jobs" / "nightly.py", [f"output.root='{out_root / 'ours'}'"]),
        ("als", HERE / "als_nightly.py", [f"output.root='{out_root / 'als'}'"]),
    ):
        argv = [*common, str(script), "--config", str(ROOT / "conf" / "local.toml")]
        for s in sets + extra:
            argv += ["--set", s]
        if system == "als":
            argv += ["--als-reg", str(als_reg), "--als-iterations", str(als_iterations)]
        log = WORK / f"e2e-{name}-{system}.log"
        t = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            mem = PeakMemory(proc.pid)
            code = proc.wait()
        peak = mem.stop()
        seconds = time.perf_counter() - t
        if code != 0:
            print(f"{script.name} failed (exit {code}); see {log}", flush=True)
            return None
        out[system] = {"seconds": round(seconds, 1), "peak_gib": peak}
        print(f"end to end {name} {system}: {seconds:.1f} s", flush=True)
    out["ratio"] = round(out["spark_cf"]["seconds"] / out["als"]["seconds"], 3)
    return out


# --------------------------------------------------------------------------------- report


def targets(results: dict) -> list[dict]:
    out = []
    sets = results["datasets"]
    for name in REAL:
        if name not in sets:
            continue
        r = sets[name]
        ours = min(v["rmse"] for v in r["spark_cf"]["variants"])
        als = r["als"]["best"]["rmse"]
        out.append(
            {
                "target": f"{name}: held-out RMSE of our best variant <= ALS's best",
                "value": f"{ours:.4f} vs {als:.4f}",
                "met": ours <= als,
            }
        )
    for name in REAL:
        if name not in sets:
            continue
        rows = {v["variant"]: v for v in sets[name]["spark_cf"]["variants"]}
        new, old = rows.get("lbfgs-biased-curv-reg20"), rows.get("lbfgs-biased-reg20")
        if new is not None and "within_iteration" in new:
            out.append(
                {
                    "target": f"{name}: iterations to a held-out RMSE within {WITHIN} of the "
                    "run's best <= 15, cold start (biased, reg 20, curvature)",
                    "value": f"{new['within_iteration']} (precondition none: "
                    f"{old['within_iteration'] if old else 'n/a'})",
                    "met": new["within_iteration"] <= 15,
                }
            )
        als = sets[name]["als"]["best"]
        for shipped in SHIPPED:
            if shipped in rows:
                ours = rows[shipped]["rmse"]
                out.append(
                    {
                        "target": f"{name}: held-out RMSE of {VARIANTS[shipped][0]} as shipped "
                        f"<= ALS's best ({als.get('iterations', 10)} iterations, reg "
                        f"{als['reg']})",
                        "value": f"{ours:.4f} vs {als['rmse']:.4f} (reg chosen "
                        f"{rows[shipped].get('reg_chosen')})",
                        "met": ours <= als["rmse"],
                    }
                )
    for name, limit in (
        ("ml-latest-small", 2.0),
        ("movietweetings-100k", 2.0),
        ("gen-5M", 0.5),
        ("gen-20M", 0.5),
    ):
        if name not in sets:
            continue
        r = sets[name]
        reach = [v["reach_s"] for v in r["spark_cf"]["variants"] if v["reach_s"] is not None]
        als_fit = r["als"]["best"]["fit_s"]
        ratio = min(reach) / als_fit if reach else None
        out.append(
            {
                "target": f"{name}: time to ALS's best RMSE <= {limit:g}x ALS's fit time",
                "value": f"{ratio:.2f}x" if ratio is not None else "never reached",
                "met": ratio is not None and ratio <= limit,
            }
        )
    for name, r in results.get("end_to_end", {}).items():
        out.append(
            {
                "target": f"{name}: nightly job end to end (conf/local.toml) <= 1.0x the ALS "
                "script",
                "value": f"{r['ratio']:.2f}x ({r['spark_cf']['seconds']} s vs "
                f"{r['als']['seconds']} s)",
                "met": r["ratio"] <= 1.0,
            }
        )
    for name, r in sets.items():
        ratio = r["spark_cf"]["top_n_s"] / r["als"]["top_n_s"]
        out.append(
            {
                "target": f"{name}: top-N for all users <= 0.5x recommendForAllUsers",
                "value": f"{ratio:.2f}x",
                "met": ratio <= 0.5,
            }
        )
    if "gen-5M" in sets and "gen-20M" in sets:
        # the same variant on both (the one the 20M set runs)
        name20 = sets["gen-20M"]["spark_cf"]["variants"][0]["variant"]
        per, empty = {}, {}
        for n in ("gen-5M", "gen-20M"):
            row = next(v for v in sets[n]["spark_cf"]["variants"] if v["variant"] == name20)
            per[n] = row["evaluation_s"]
            empty[n] = sets[n]["spark_cf"]["empty_job_s"]
        ratio = per["gen-20M"] / per["gen-5M"]
        net = (per["gen-20M"] - empty["gen-20M"]) / (per["gen-5M"] - empty["gen-5M"])
        out.append(
            {
                "target": f"time per evaluation ({name20}), 20M over 5M, within 3x to 5x",
                "value": f"{ratio:.2f}x ({per['gen-20M']:.3f} s / {per['gen-5M']:.3f} s); "
                f"less the empty job's time: {net:.2f}x",
                "met": 3.0 <= ratio <= 5.0,
            }
        )
        peak = max(sets["gen-20M"]["spark_cf"]["peak_gib"]["total"], 0)
        out.append(
            {
                "target": "20M ratings train within 24 GiB",
                "value": f"peak {peak:.1f} GiB",
                "met": peak < 24,
            }
        )
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks: spark-cf against Spark MLlib ALS",
        "",
        f"Made by `python benchmarks/vs_als.py` on {results['date']} "
        f"({m['cpus']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}, "
        f"pyspark {m['pyspark']}), local[2], driver memory {DRIVER_MEMORY}. Each data set "
        "is measured in one run, both systems in it, each in its own process, on the same "
        "20% random held-out split; `--datasets` re-measures some, so the data sets may "
        "come from different runs (their times below). The figures are in "
        "`benchmarks/results/vs_als.json`.",
        "",
        f"ALS: rank {RANK}, regParam tuned on the held-out RMSE over "
        f"{list(ALS_REGS['real'])} with {' and '.join(map(str, ALS_REAL_ITERATIONS))} "
        f"iterations on the real sets, over {list(ALS_REGS['generated'])} with "
        f"{ALS_ITERATIONS} on the generated ones, a checkpoint folder set. "
        f"spark-cf: rank {RANK}, at most {MAX_ITER} iterations; 'none', 'pre' (counts) and "
        "'curv' (curvature) name L-BFGS's starting inverse Hessian "
        "(`train.lbfgs_precondition`); `conf-local` and `conf-nightly` are those files' "
        '[model] and [train] as shipped (`model.reg = "auto"`: the grid side by side, '
        "the chosen reg in brackets). 'within' is the first iteration whose held-out RMSE "
        f"is within {WITHIN} of the run's best; 'reach' the seconds from the start of the "
        "fit (blocking the ratings included) to the first iterate whose held-out RMSE is at "
        "or below ALS's best; on the generated sets the run stops there. RMSE is unclipped "
        "for both; pairs ALS cannot score get the training mean.",
        "",
        "## Accuracy and fit time",
        "",
        "Measured: "
        + ", ".join(f"{n} {r.get('date', results['date'])}" for n, r in results["datasets"].items())
        + ".",
        "",
        "| data | ratings | ALS best reg (iterations) | ALS fit s | ALS RMSE | spark-cf variant "
        "| fit s | iterations | within | RMSE (best along the run) | reach s | reach / ALS fit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["datasets"].items():
        als = r["als"]["best"]
        for v in r["spark_cf"]["variants"]:
            reach = f"{v['reach_s']}" if v["reach_s"] is not None else "not reached"
            ratio = f"{v['reach_s'] / als['fit_s']:.2f}x" if v["reach_s"] is not None else ""
            variant = v["variant"]
            if v.get("reg_chosen") is not None and v["model"].get("reg") == "auto":
                variant += f" (reg {v['reg_chosen']:g})"
            lines.append(
                f"| {name} | {r['als']['train'] + r['als']['held_out']:,} | {als['reg']} "
                f"({als.get('iterations', ALS_ITERATIONS)}) | {als['fit_s']} | "
                f"{als['rmse']:.4f} | {variant} | {v['fit_s']} | {v['iterations']} | "
                f"{v.get('within_iteration', '')} | {v['rmse']:.4f} ({v['best_rmse']:.4f}) | "
                f"{reach} | {ratio} |"
            )
    lines += [
        "",
        "## Top-N, per-iteration cost and memory",
        "",
        f"Top-N: N = {TOP_N} for every user; ours does not exclude rated items here (as "
        "ALS), and 'excl.' is ours excluding them (as the nightly job). Per evaluation: "
        "one Spark job computing the cost and both gradients (L-BFGS may take more than "
        "one per iteration). Peak memory: resident set, sampled every 0.2 s, of the whole "
        "process tree (driver Python + JVM, which holds the executors in local mode, + "
        "Python workers).",
        "",
        "| data | ALS top-N s | ours s | ours excl. s | ours / ALS | NumPy reference s per "
        "evaluation | ours s per evaluation | empty job s | peak GiB ALS | peak GiB ours "
        "(JVM / Python workers) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["datasets"].items():
        o, a = r["spark_cf"], r["als"]
        per_eval = statistics.median(v["evaluation_s"] for v in o["variants"])
        lines.append(
            f"| {name} | {a['top_n_s']} | {o['top_n_s']} | {o['top_n_excluding_rated_s']} | "
            f"{o['top_n_s'] / a['top_n_s']:.2f}x | {o['reference_evaluation_s']} | "
            f"{per_eval:.3f} | {o['empty_job_s']} | {a['peak_gib'].get('total')} | "
            f"{o['peak_gib'].get('total')} ({o['peak_gib'].get('driver_jvm')} / "
            f"{o['peak_gib'].get('python_workers')}) |"
        )
    if results.get("end_to_end"):
        lines += [
            "",
            "## End to end",
            "",
            "`spark-submit jobs/nightly.py --config conf/local.toml` with only the input and "
            "the output set (ingest, split, train the ratings model with `model.reg = "
            '"auto"` and the top-N model, evaluate with baselines, predict the held-out '
            "pairs, top-N excluding rated items, publish) against `spark-submit "
            "benchmarks/als_nightly.py` with the same settings (the same ingest and split, "
            "ALS fit at its best reg and iterations, held-out predictions, "
            "`recommendForAllUsers`, the factors, published the same way). Wall seconds, JVM "
            "start included; each job's stage timings are in its log and metrics.json.",
            "",
            "| data | nightly s | ALS script s | ratio | measured |",
            "|---|---|---|---|---|",
        ]
        for name, r in results["end_to_end"].items():
            lines.append(
                f"| {name} | {r['spark_cf']['seconds']} | {r['als']['seconds']} | "
                f"{r['ratio']:.2f}x | {r.get('date', results['date'])} |"
            )
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {'met' if t['met'] else 'NOT met'} |")
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine() -> dict:
    import pyspark

    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyspark": pyspark.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=ALL,
        choices=ALL,
        help="data sets to (re)measure; the others keep their last results",
    )
    parser.add_argument(
        "--e2e",
        nargs="*",
        default=["ml-latest-small", "gen-5M"],
        choices=ALL,
        help="data sets for the end-to-end comparison (none: --e2e alone)",
    )
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--child", choices=["als", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--regs", nargs="+", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--iterations", nargs="+", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--stop-at-target", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "als":
            answer = child_als(args.data, args.regs, args.iterations)
        else:
            answer = child_ours(args.data, args.variants, args.target, args.stop_at_target)
        Path(args.out).write_text(json.dumps(answer))
        return 0

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "datasets": {},
        "end_to_end": {},
    }
    previous = RESULTS / "vs_als.json"
    if previous.exists():  # keep the data sets this run does not redo
        old = json.loads(previous.read_text())
        if not args.datasets and (args.no_e2e or not args.e2e):  # only re-render
            results["date"], results["machine"] = old["date"], old["machine"]
        results["datasets"] = {
            k: v for k, v in old.get("datasets", {}).items() if k not in args.datasets
        }
        results["end_to_end"] = old.get("end_to_end", {})

    def save() -> None:
        results["targets"] = targets(results)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "vs_als.json").write_text(json.dumps(results, indent=2) + "\n")
        (ROOT / "docs").mkdir(exist_ok=True)
        doc = ROOT / "docs" / "benchmarks.md"
        # the other benchmarks' sections sit between their markers after ours: keep them
        old = doc.read_text() if doc.exists() else ""
        kept = old[old.index("<!-- ") :] if "<!-- " in old else ""
        doc.write_text(markdown(results) + ("\n" + kept if kept else ""))

    for name in args.datasets:
        path = dataset_path(name)
        regs = ALS_REGS["real" if name in REAL else "generated"]
        iterations = ALS_REAL_ITERATIONS if name in REAL else (ALS_ITERATIONS,)
        als, als_peak, _ = run_child(
            ["--child", "als", "--data", str(path), "--regs", *map(str, regs)]
            + ["--iterations", *map(str, iterations)]
        )
        als["peak_gib"] = als_peak
        variants = REAL_VARIANTS if name in REAL else GENERATED_VARIANTS
        if name == "gen-20M":  # the fastest to ALS's RMSE on 5M, before and now
            variants = ["lbfgs-biased-pre-reg3", "lbfgs-biased-curv-reg3"]
        child = ["--child", "ours", "--data", str(path), "--variants", *variants]
        child += ["--target", repr(als["best"]["rmse"])]
        if name not in REAL:
            child.append("--stop-at-target")
        ours, ours_peak, _ = run_child(child)
        ours["peak_gib"] = ours_peak
        results["datasets"][name] = {"als": als, "spark_cf": ours, "date": _now()}
        print(f"{name}: peak GiB ALS {als_peak}, spark-cf {ours_peak}", flush=True)
        save()
    if not args.no_e2e:
        for name in args.e2e:
            if name not in results["datasets"]:
                continue
            r = results["datasets"][name]
            best = r["als"]["best"]
            timed = e2e(name, dataset_path(name), best["reg"], best.get("iterations", 10))
            if timed is None:
                return 1
            results["end_to_end"][name] = {**timed, "date": _now()}
            save()
    save()
    for t in results["targets"]:
        print(f"{'met    ' if t['met'] else 'NOT met'}  {t['target']}: {t['value']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
