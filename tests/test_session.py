"""The session factory's Java check, with stand-in java executables. No JVM."""

from __future__ import annotations

import os
import stat

import pytest

from spark_cf.errors import EnvironmentCheckError
from spark_cf.session import check_java, java_version


def fake_java(tmp_path, banner: str) -> str:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return str(home)


@pytest.mark.parametrize(
    ("banner", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_402"', 8),
        ('openjdk version "21" 2023-09-19', 21),
    ],
)
def test_reads_the_major_version(tmp_path, banner, major):
    home = fake_java(tmp_path, banner)
    assert java_version(os.path.join(home, "bin", "java")) == major


def test_old_or_missing_java_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", fake_java(tmp_path, 'openjdk version "11.0.2"'))
    with pytest.raises(EnvironmentCheckError, match="Spark 4 needs Java 17\\+, found Java 11"):
        check_java()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(EnvironmentCheckError, match="none was found"):
        check_java()


def test_the_real_java_is_new_enough():
    assert check_java() >= 17
