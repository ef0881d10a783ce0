"""The project's named exceptions; every one derives from :class:`SparkCFError`.

Messages say what went wrong *and* what to do about it, because the nightly job prints
only the message (one line) when it fails.
"""

from __future__ import annotations


class SparkCFError(Exception):
    """Base class of every error spark-cf raises on purpose."""


class ConfigError(SparkCFError):
    """A configuration file or a ``--set`` override is invalid (names the key)."""


class EnvironmentCheckError(SparkCFError):
    """The machine cannot run the job (for example no Java 17+)."""


class SchemaError(SparkCFError):
    """The input misses a column or a column has a type we cannot use."""


class InputError(SparkCFError):
    """The input cannot be used as a whole (no rows left, duplicates under ``error``...)."""


class DivergenceError(SparkCFError):
    """Training diverged: the cost rose or a value became NaN or infinite."""


class CheckpointError(SparkCFError):
    """A checkpoint is missing, corrupt, or belongs to another config or input."""


class ModelError(SparkCFError):
    """A saved model cannot be read or does not fit what it is used for."""


class PublishError(SparkCFError):
    """A publication cannot go on safely (for example a rename onto an existing path)."""


class LockError(SparkCFError):
    """Another live run holds the lock of the path being published (exit code 4)."""
