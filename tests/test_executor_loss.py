"""The user side on the executors (train.user_side = "executors") on a real Spark
standalone cluster (a master and two workers on 127.0.0.1): jobs/train.py submitted as
users do gives the same model, bit for bit, as local[2]; and a run that loses an
executor (its JVM killed mid-training, with the cached states it held) finishes with
the same model, bit for bit, as the undisturbed run: Spark recomputes the lost states
from their lineage, cut at the checkpoints in spark.checkpoint.dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spark_cf.config import load_config
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.nightly.run import run_train
from spark_cf.packaging import build_zip

sys.path.insert(0, str(Path(__file__).parent))
from cluster import StandaloneCluster, cluster_env  # noqa: E402

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
ITERATIONS = 20
KILL_AT = 8


def executor_pids(root: Path) -> list[int]:
    """The executor JVMs whose working folders (a worker's, per application) are under
    ``root``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")  # <worker dir>/<app>/<executor id>
        except OSError:
            continue
        if "CoarseGrainedExecutorBackend" in cmd and cwd.startswith(str(root)):
            found.append(int(entry))
    return found


def model_arrays(folder: Path) -> dict[str, np.ndarray]:
    """The published model's factors and biases, in id order, as arrays."""
    out = {}
    for table, key in (("user_factors", "user_id"), ("item_factors", "item_id")):
        t = pq.read_table(folder / table).sort_by(key)
        out[table] = np.array(t["features"].to_pylist(), dtype=np.float64)
        if "bias" in t.column_names:
            out[f"{table}_bias"] = t["bias"].to_numpy()
    return out


def test_a_run_that_loses_an_executor_ends_with_the_undisturbed_model(tmp_path, spark):
    ratings = tmp_path / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=3000, num_items=300, num_ratings=30000, true_rank=4, seed=5),
        str(ratings),
    )
    conf = tmp_path / "job.toml"
    conf.write_text(
        '[spark]\nmaster = "local[2]"\n'
        f'conf = {{ "spark.checkpoint.dir" = "{tmp_path / "lineage"}" }}\n'
        f'[input]\npath = "{ratings}"\n'
        "[model]\nrank = 4\nbiases = true\nreg = 3.0\n"
        f"[train]\nmax_iter = {ITERATIONS}\ntol = 0.0\nnum_user_blocks = 4\n"
        'num_item_blocks = 2\nuser_side = "executors"\n'
        f'[output]\nroot = "{tmp_path / "out"}"\n'
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    build_zip(work / "spark_cf.zip")
    shutil.copy(ROOT / "jobs" / "train.py", work / "train.py")

    def submit(master: str, out: Path, on_line=None) -> str:
        proc = subprocess.Popen(
            [
                str(SPARK_SUBMIT),
                "--master",
                master,
                "--py-files",
                "spark_cf.zip",
                "train.py",
                "--config",
                str(conf),
                "--model-out",
                str(out),
            ],
            cwd=work,
            env=cluster_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line)
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:  # a failed check: leave no job running
                proc.kill()
                proc.wait()
        output = "".join(lines)
        assert code == 0, output[-4000:]
        return output

    cluster_dir = tmp_path / "cluster"
    with StandaloneCluster(cluster_dir, workers=2, cores=1, memory="2g") as cluster:
        undisturbed = submit(cluster.url, tmp_path / "undisturbed")
        assert f"({ITERATIONS} iterations" in undisturbed

        killed: list[int] = []

        def kill_an_executor(line: str) -> None:
            if killed or f"iteration {KILL_AT}/{ITERATIONS}" not in line:
                return
            pids = executor_pids(cluster_dir)
            assert len(pids) == 2, pids  # one per worker
            os.kill(pids[0], signal.SIGKILL)  # the JVM, with its cached blocks
            killed.append(pids[0])

        disturbed = submit(cluster.url, tmp_path / "disturbed", kill_an_executor)
        assert killed, "the run ended before the kill"
        # a new executor replaced the killed one, and Spark recomputed what it held
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and killed[0] in executor_pids(cluster_dir):
            time.sleep(0.2)
        assert killed[0] not in executor_pids(cluster_dir)
        assert "Lost executor" in disturbed or "lost executor" in disturbed.lower(), disturbed[
            -3000:
        ]

    a = model_arrays(tmp_path / "undisturbed")
    b = model_arrays(tmp_path / "disturbed")
    assert a.keys() == b.keys() and a["user_factors"].shape == (3000, 4)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    meta_a = json.loads((tmp_path / "undisturbed" / "metadata.json").read_text())
    meta_b = json.loads((tmp_path / "disturbed" / "metadata.json").read_text())
    assert meta_a["final_cost"] == meta_b["final_cost"]
    assert meta_a["iterations"] == meta_b["iterations"] == ITERATIONS

    # the same configuration on local[2] (this process's session): the same bits
    local = tmp_path / "local"
    run_train(spark, load_config(str(conf)), str(local))
    c = model_arrays(local)
    for name in a:
        np.testing.assert_array_equal(a[name], c[name], err_msg=name)
