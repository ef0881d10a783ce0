"""The README as a new user meets it: its Python example runs on the quick-start output and
reproduces the published tables, and every job command it shows uses options the job has."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spark_cf.config import load_config
from spark_cf.data.synthetic import SyntheticSpec, write_parquet
from spark_cf.nightly.run import run_nightly

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def reading_example() -> str:
    """The Python block of the README's "Reading them" paragraph."""
    start = README.index("Reading them")
    block = re.search(r"```python\n(.*?)```", README[start:], flags=re.S)
    assert block is not None, "README: no python block after 'Reading them'"
    return block.group(1)


@pytest.mark.spark
def test_reading_example_reproduces_every_prediction_and_top_n_score(
    spark, tmp_path, monkeypatch, capsys
):
    # the quick-start configuration (biased model, raw ids from 1000) on a small data set,
    # published under ./output as `make nightly` does
    ratings = tmp_path / "ratings.parquet"
    write_parquet(
        SyntheticSpec(num_users=150, num_items=90, num_ratings=3000, true_rank=3, seed=11),
        str(ratings),
    )
    cfg = load_config(
        str(ROOT / "conf" / "local.toml"),
        [
            f"input.path={str(ratings)!r}",
            "train.max_iter=10",
            "ranking.max_iter=10",
            "output.run_date='2026-11-25'",
            # absolute: Hadoop resolves a relative root against the JVM's folder, which a
            # chdir in this process does not move
            f"output.root={str(tmp_path / 'output')!r}",
        ],
    )
    monkeypatch.chdir(tmp_path)
    run_nightly(spark, cfg)
    assert cfg.model.biases, "the quick-start config turns biases on; the example must cover them"

    namespace: dict = {}
    exec(compile(reading_example(), "README.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out.split("\n")
    score, predictions, top = namespace["score"], namespace["predictions"], namespace["top"]
    top_score = namespace["top_score"]
    assert cfg.ranking.enabled and namespace["metrics"]["top_n_model"] == "ranking_model"
    lo, hi = namespace["lo"], namespace["hi"]
    assert len(predictions) > 100 and len(top) > 100

    for row in predictions.itertuples():
        want = row.prediction
        got = float(np.clip(score(row.user_id, row.item_id), lo, hi))
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12), (row, got)
    for row in top.itertuples():
        got = float(top_score(row.user_id, row.item_id))
        assert math.isclose(got, row.score, rel_tol=1e-12, abs_tol=1e-12), (row, got)
    # what it prints: the published value and the rule's value, side by side
    for line in printed[:2]:
        published, ours = (float(v) for v in line.split()[-2:])
        assert math.isclose(published, ours, rel_tol=1e-12, abs_tol=1e-12), line


def job_commands() -> list[list[str]]:
    """Each `jobs/X.py ...` command in the README's shell blocks, as argument lists."""
    commands = []
    for block in fenced_blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if "jobs/" not in line:
                continue
            words = shlex.split(line)
            start = next(i for i, w in enumerate(words) if w.startswith("jobs/"))
            commands.append(words[start:])
    return commands


def job_options(job: str) -> set[str]:
    """The long options a job's --help lists."""
    out = subprocess.run(
        [sys.executable, job, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(--[a-z][a-z-]*)", out.stdout))


def test_every_job_command_in_the_readme_uses_options_the_job_has():
    commands = job_commands()
    jobs = {c[0] for c in commands}
    assert {"jobs/nightly.py", "jobs/convert.py", "jobs/verify.py"} <= jobs, jobs
    options = {job: job_options(job) for job in sorted(jobs)}
    for command in commands:
        job = command[0]
        assert (ROOT / job).exists(), job
        used = {w.split("=", 1)[0] for w in command[1:] if w.startswith("--")}
        unknown = used - options[job]
        assert not unknown, f"README: {' '.join(command)} uses {sorted(unknown)}"
        for word in command[1:]:
            if word.startswith("conf/"):
                assert (ROOT / word).exists(), word


def test_every_make_target_in_the_readme_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    used = set(re.findall(r"\bmake ([a-z][a-z-]*)", README))
    assert used, "the README names no make target"
    assert used <= targets, sorted(used - targets)
