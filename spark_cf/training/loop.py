"""The training loop, shared by the NumPy reference and the Spark path.

Objective (the course's collaborative filtering cost, on mean-normalised ratings)::

    J(X, Theta) = 1/2 sum_{r(i,j)=1} (theta_j . x_i - y_ij)^2
                  + reg/2 sum_i |x_i|^2 + reg/2 sum_j |theta_j|^2

Gradients::

    dJ/dx_i     = sum_{j: r(i,j)=1} (theta_j . x_i - y_ij) theta_j + reg x_i
    dJ/dtheta_j = sum_{i: r(i,j)=1} (theta_j . x_i - y_ij) x_i     + reg theta_j

With ``model.biases`` the prediction is ``theta_j . x_i + b_i + b_u`` on ratings centred on
their global mean, and ``reg/2 (sum b_i^2 + sum b_u^2)`` joins the cost.

The other objective, ``ranking`` (implicit feedback over all pairs, confidence-weighted),
is in :mod:`spark_cf.training.objective`; the loop sees either only through evaluations.

Update: every iteration computes both gradients from the same old X and Theta, then moves
all parameters at once (simultaneous update) by the configured optimiser
(:mod:`spark_cf.training.optimizers`). The loop stops after ``max_iter`` iterations, or when the
relative decrease ``(J_prev - J) / |J_prev|`` falls in ``[0, tol)``, or when the optimiser
can make no progress. Divergence (a NaN or infinite cost or parameter, or under ``gd`` a
cost that rises ``divergence_patience`` times in a row) raises
:class:`~spark_cf.errors.DivergenceError`. One INFO line per iteration is logged, and the
history (cost, gradient norm, train and validation RMSE, seconds) is returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from spark_cf.errors import DivergenceError
from spark_cf.training.optimizers import Evaluation, Objective, Optimizer

log = logging.getLogger(__name__)

#: a cost this many times the starting cost counts as divergence for every optimiser
BLOW_UP_FACTOR = 1e6


class Checkpointing(Protocol):
    """What the loop asks of a checkpointer (:class:`spark_cf.training.checkpoints.Checkpointer`
    keeps the states in files): a state to resume from, whether an iteration is due, and
    where to hand a state to keep."""

    def load(self, fingerprint: str) -> dict[str, Any] | None: ...

    def due(self, iteration: int) -> bool: ...

    def save(self, fingerprint: str, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """The fitted parameter vector and how the run went."""

    w: np.ndarray
    history: list[dict[str, float]]
    iterations: int
    stop_reason: str
    evaluations: int
    seconds: float
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_cost(self) -> float:
        return self.history[-1]["cost"]


def _record(iteration: int, ev: Evaluation, seconds: float, evaluations: int) -> dict[str, float]:
    return {
        "iteration": iteration,
        "cost": float(ev.cost),
        "grad_norm": ev.grad_norm,
        "train_rmse": ev.train_rmse,
        "val_rmse": ev.val_rmse,
        "seconds": seconds,
        "evaluations": evaluations,
    }


def _check_finite(ev: Evaluation, w: np.ndarray, iteration: int, optimizer: str) -> None:
    finite = w.all_finite() if hasattr(w, "all_finite") else np.isfinite(w).all()
    if not (ev.is_finite() and finite):
        raise DivergenceError(
            f"training diverged at iteration {iteration} ({optimizer}): the cost or a "
            f"parameter became NaN or infinite; lower train.learning_rate (or use "
            f"train.optimizer = 'lbfgs', which needs none). Nothing was published."
        )


def minimize(
    objective: Objective,
    w0: np.ndarray,
    optimizer: Optimizer,
    *,
    max_iter: int,
    tol: float,
    divergence_patience: int = 3,
    checkpointer: Checkpointing | None = None,
    fingerprint: str = "",
    callback: Callable[[int, float, float], None] | None = None,
    stop_when: Callable[[dict[str, float]], bool | str] | None = None,
) -> TrainResult:
    """Run ``optimizer`` on ``objective`` from ``w0`` (see the module docstring for the rules).

    Parameters
    ----------
    objective
        ``f(w) -> Evaluation``; on the Spark path each call is one Spark job.
    w0
        The starting parameters (:func:`spark_cf.training.params.initial_parameters`).
    optimizer
        A fresh optimiser from :func:`spark_cf.training.optimizers.make_optimizer`.
    max_iter, tol, divergence_patience
        Stopping and divergence rules.
    checkpointer
        Given ``(w, optimiser state, iteration, history)`` after each iteration it says is
        due; the run starts from the state it loads, if any (a checkpointer refuses a
        state whose ``fingerprint`` differs: another config or input). None: no
        checkpoints. The loop itself reads and writes no files.
    fingerprint
        Identifies the data and the settings the trajectory depends on.
    callback
        Called as ``callback(iteration, elapsed_seconds, cost)`` after each iteration.
    stop_when
        Called with each iteration's history record; a true answer stops the run, with
        the reason ``"stop_when"`` or the answer when it is a string (the benchmarks stop
        at a target held-out RMSE; ``model.reg = "auto"`` when the held-out RMSE rises).
        A resumed run first shows it the records of the checkpoint's history (answers
        ignored), so that a rule with state stops where the uninterrupted run would.
    """
    started = time.perf_counter()
    history: list[dict[str, float]]
    resumed_from = None
    rises = 0
    state = None
    if checkpointer is not None:
        state = checkpointer.load(fingerprint)
    if state is not None:
        w = state["w"]
        iteration = int(state["iteration"])
        history = state["history"]
        rises = int(state["rises"])
        optimizer.load_state_dict(state["optimizer"])
        resumed_from = iteration
        if state["stop_reason"]:  # the run had already stopped at its last checkpoint
            max_iter = iteration
        if stop_when is not None:  # a stop rule with state sees the records it missed
            for record in history[1:]:
                stop_when(record)
        t0 = time.perf_counter()
        ev = objective(w)
        log.info(
            "resumed from the checkpoint at iteration %d (cost %.6g) in %s",
            iteration,
            ev.cost,
            checkpointer,
        )
    else:
        w = np.array(w0, dtype=np.float64, copy=True)
        iteration = 0
        t0 = time.perf_counter()
        ev = objective(w)
        optimizer.evaluations += 1
        history = [_record(0, ev, time.perf_counter() - t0, optimizer.evaluations)]
        log.info(
            "iteration 0: cost %.6g, |grad| %.4g, train RMSE %.4f",
            ev.cost,
            history[0]["grad_norm"],
            ev.train_rmse,
        )
    _check_finite(ev, w, iteration, optimizer.name)
    initial_cost = history[0]["cost"]
    stop_reason = (state or {}).get("stop_reason") or "max_iter"
    while iteration < max_iter:
        t0 = time.perf_counter()
        w_new, ev_new = optimizer.step(w, ev, objective)
        iteration += 1
        _check_finite(ev_new, w_new, iteration, optimizer.name)
        seconds = time.perf_counter() - t0
        history.append(_record(iteration, ev_new, seconds, optimizer.evaluations))
        decrease = (ev.cost - ev_new.cost) / max(abs(ev.cost), 1e-300)
        if decrease < 0:
            rises += 1
        else:
            rises = 0
        if optimizer.monotone and optimizer.name == "gd" and rises >= divergence_patience:
            raise DivergenceError(
                f"training diverged: the cost rose {rises} iterations in a row under gd "
                f"(to {ev_new.cost:.6g} at iteration {iteration}); lower "
                f"train.learning_rate. Nothing was published."
            )
        if ev_new.cost > BLOW_UP_FACTOR * max(initial_cost, 1e-300):
            raise DivergenceError(
                f"training diverged: the cost grew from {initial_cost:.6g} to "
                f"{ev_new.cost:.6g} by iteration {iteration} ({optimizer.name}); lower "
                f"train.learning_rate. Nothing was published."
            )
        w, ev = w_new, ev_new
        done = iteration
        mean_seconds = (time.perf_counter() - started) / max(done - (resumed_from or 0), 1)
        log.info(
            "iteration %d/%d: cost %.10g, |grad| %.4g, train RMSE %.4f%s, %.3f s, ~%.0f s left",
            iteration,
            max_iter,
            ev.cost,
            history[-1]["grad_norm"],
            ev.train_rmse,
            f", validation RMSE {ev.val_rmse:.4f}" if ev.val_count else "",
            seconds,
            mean_seconds * (max_iter - iteration),
        )
        if callback is not None:
            callback(iteration, time.perf_counter() - started, ev.cost)
        stop = None
        verdict = stop_when(history[-1]) if stop_when is not None else None
        if verdict:
            stop = verdict if isinstance(verdict, str) else "stop_when"
        elif optimizer.stalled:
            stop = "no_progress"
        elif 0 <= decrease < tol:
            stop = "converged"
        if checkpointer is not None and checkpointer.due(iteration):
            checkpointer.save(
                fingerprint,
                {
                    "w": as_array(w),
                    "iteration": iteration,
                    "history": history,
                    "rises": rises,
                    "stop_reason": stop or "",
                    "optimizer": optimizer.state_dict(),
                },
            )
        if stop is not None:
            stop_reason = stop
            break
    total = time.perf_counter() - started
    log.info(
        "training stopped after %d iterations (%s), cost %.10g, %d evaluations, %.1f s",
        iteration,
        stop_reason,
        ev.cost,
        optimizer.evaluations,
        total,
    )
    return TrainResult(
        w=as_array(w),
        history=history,
        iterations=iteration,
        stop_reason=stop_reason,
        evaluations=optimizer.evaluations,
        seconds=total,
        resumed_from=resumed_from,
    )


def as_array(w) -> np.ndarray:
    """The flat parameter vector ``w``, gathered to the driver when it is a handle on
    parameters kept on the executors (:class:`spark_cf.training.partitioned.PartitionedPoint`)."""
    return w.to_array() if hasattr(w, "to_array") else w


def fingerprint_of(parts: dict[str, Any]) -> str:
    """A short stable hash of JSON-able ``parts`` (settings and data summary)."""
    import hashlib
    import json

    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
