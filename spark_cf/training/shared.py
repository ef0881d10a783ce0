"""Several trainings over the same blocks sharing Spark jobs.

``model.reg = "auto"`` trains its grid of regularisations this way
(:func:`spark_cf.training.fit.fit`), and the parity tests their matrix of optimisers.
The regularisation is added on the driver (:meth:`SparkObjective.evaluate_many`), so
trainings with different ``reg`` share the blocks' pass too."""

from __future__ import annotations

import threading

import numpy as np

from spark_cf.training.blocks import SparkObjective
from spark_cf.training.optimizers import Evaluation


class SharedEvaluations:
    """Lets several trainings over the same blocks share Spark jobs.

    Each training (in its own driver thread) evaluates through :meth:`proxy`; once every
    training still running is waiting for an evaluation, one Spark job evaluates all their
    points (:meth:`SparkObjective.evaluate_many`). A training that ends calls :meth:`done`.
    The results are exactly those of separate jobs: each point is summed on its own.
    """

    def __init__(self, objective: SparkObjective, runs: int) -> None:
        self.objective = objective
        self.active = runs
        self.jobs = 0
        self._pending: dict[object, tuple[np.ndarray, float | None]] = {}
        self._results: dict[object, object] = {}
        self._cond = threading.Condition()

    def proxy(self, key: object, reg: float | None = None):
        """The objective for the training called ``key``, with the regularisation ``reg``
        (None: the shared objective's)."""

        def evaluate(w: np.ndarray) -> Evaluation:
            with self._cond:
                self._pending[key] = (w, reg)
                self._run_if_all_waiting()
                while key not in self._results:
                    self._cond.wait()
                result = self._results.pop(key)
            if isinstance(result, BaseException):
                raise result
            return result

        return evaluate

    def done(self) -> None:
        """Say that one training has ended (successfully or not)."""
        with self._cond:
            self.active -= 1
            self._run_if_all_waiting()

    def _run_if_all_waiting(self) -> None:
        if not self._pending or len(self._pending) < self.active:
            return
        keys = list(self._pending)
        points, regs = zip(*(self._pending.pop(k) for k in keys))
        try:
            results: list = self.objective.evaluate_many(list(points), list(regs))
        except Exception as exc:  # every waiting training gets the failure
            results = [exc] * len(keys)
        self.jobs += 1
        self._results.update(zip(keys, results))
        self._cond.notify_all()
