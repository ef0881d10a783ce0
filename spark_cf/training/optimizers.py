"""Update rules on the full-batch gradient, run on the driver.

Every optimiser sees the objective as a function ``f(w) -> Evaluation`` (cost, gradient
and fit statistics at ``w``, one Spark job on the distributed path) and moves from the
current point to the next, returning the evaluation there. The same code serves the
NumPy reference and the Spark path, so both follow the same trajectory.

Rules (``g`` the gradient at the current ``w``, ``lr`` the learning rate, ``mu`` the momentum):

- ``gd``: ``w <- w - lr g`` (the course's batch gradient descent);
- ``momentum``: ``v <- mu v - lr g``; ``w <- w + v``;
- ``nesterov``: ``v' <- mu v - lr g``; ``w <- w - mu v + (1 + mu) v'`` (the form that keeps
  the evaluation point as the iterate, Bengio et al. 2013);
- ``adam``: bias-corrected first and second moments, ``w <- w - lr m^ / (sqrt(s^) + eps)``;
- ``lbfgs``: limited-memory BFGS two-loop direction, backtracking line search with the
  Armijo condition (quadratic interpolation), curvature pairs kept only when ``s.y > 0``.
  It needs no learning rate. With ``lbfgs_precondition`` its initial inverse Hessian is
  diagonal, ``gamma D`` with ``D = 1 / (ratings of the row + 1)`` for every parameter of
  an item's or a user's row (:func:`spark_cf.training.params.row_preconditioner`) and ``gamma =
  s.y / y.D.y``, instead of ``gamma I``: a row's curvature grows with its ratings, and on
  skewed data the scalar start can make L-BFGS crawl (measured on 1M generated ratings,
  biased model: held-out RMSE 0.59 after 18 iterations instead of 54; on ml-latest-small
  and MovieTweetings no gain, so it is off by default).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Evaluation:
    """The objective at one point: cost, gradient and the data-fit sums behind them."""

    cost: float
    grad: np.ndarray
    sse: float = 0.0
    count: int = 0
    val_sse: float = 0.0
    val_count: int = 0

    @property
    def train_rmse(self) -> float:
        return math.sqrt(self.sse / self.count) if self.count else float("nan")

    @property
    def val_rmse(self) -> float:
        return math.sqrt(self.val_sse / self.val_count) if self.val_count else float("nan")

    def is_finite(self) -> bool:
        return bool(math.isfinite(self.cost) and np.isfinite(self.grad).all())


Objective = Callable[[np.ndarray], Evaluation]


@dataclass(frozen=True)
class OptimizerSettings:
    """Settings of all optimisers (each uses its own); see ``[train]`` in conf/default.toml."""

    learning_rate: float = 0.001
    momentum: float = 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lbfgs_memory: int = 10
    lbfgs_precondition: bool = False


class Optimizer(ABC):
    """One update rule with its state (arrays and numbers, saved in checkpoints)."""

    name: str = ""
    #: whether a cost that rises means the learning rate is too large
    monotone: bool = True

    def __init__(self, settings: OptimizerSettings, size: int) -> None:
        self.settings = settings
        self.size = size
        self.evaluations = 0
        #: set when the last step could not decrease the cost at all (training stops)
        self.stalled = False

    @abstractmethod
    def step(self, w: np.ndarray, ev: Evaluation, f: Objective) -> tuple[np.ndarray, Evaluation]:
        """Move from ``w`` (where ``f`` gave ``ev``) to the next iterate and evaluate it."""

    def _eval(self, f: Objective, w: np.ndarray) -> Evaluation:
        self.evaluations += 1
        return f(w)

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint: numbers and NumPy arrays only."""
        return {"evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evaluations = int(state["evaluations"])


class GradientDescent(Optimizer):
    name = "gd"

    def step(self, w, ev, f):
        w_new = w - self.settings.learning_rate * ev.grad
        return w_new, self._eval(f, w_new)


class Momentum(Optimizer):
    name = "momentum"
    monotone = False

    def __init__(self, settings: OptimizerSettings, size: int) -> None:
        super().__init__(settings, size)
        self.velocity = np.zeros(size)

    def step(self, w, ev, f):
        s = self.settings
        self.velocity = s.momentum * self.velocity - s.learning_rate * ev.grad
        w_new = w + self.velocity
        return w_new, self._eval(f, w_new)

    def state_dict(self):
        return {**super().state_dict(), "velocity": self.velocity}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.velocity = np.array(state["velocity"], dtype=np.float64)


class Nesterov(Momentum):
    name = "nesterov"

    def step(self, w, ev, f):
        s = self.settings
        previous = self.velocity
        self.velocity = s.momentum * previous - s.learning_rate * ev.grad
        w_new = w - s.momentum * previous + (1.0 + s.momentum) * self.velocity
        return w_new, self._eval(f, w_new)


class Adam(Optimizer):
    name = "adam"
    monotone = False

    def __init__(self, settings: OptimizerSettings, size: int) -> None:
        super().__init__(settings, size)
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def step(self, w, ev, f):
        s = self.settings
        self.t += 1
        g = ev.grad
        self.m = s.adam_beta1 * self.m + (1.0 - s.adam_beta1) * g
        self.v = s.adam_beta2 * self.v + (1.0 - s.adam_beta2) * (g * g)
        m_hat = self.m / (1.0 - s.adam_beta1**self.t)
        v_hat = self.v / (1.0 - s.adam_beta2**self.t)
        w_new = w - s.learning_rate * m_hat / (np.sqrt(v_hat) + s.adam_epsilon)
        return w_new, self._eval(f, w_new)

    def state_dict(self):
        return {**super().state_dict(), "m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.m = np.array(state["m"], dtype=np.float64)
        self.v = np.array(state["v"], dtype=np.float64)
        self.t = int(state["t"])


class LBFGS(Optimizer):
    name = "lbfgs"

    #: Armijo sufficient-decrease constant and the most evaluations one line search may use
    c1 = 1e-4
    max_line_search = 20

    def __init__(
        self, settings: OptimizerSettings, size: int, preconditioner: np.ndarray | None = None
    ) -> None:
        super().__init__(settings, size)
        self.preconditioner = preconditioner if settings.lbfgs_precondition else None
        m = settings.lbfgs_memory
        self.s = np.zeros((m, size))
        self.y = np.zeros((m, size))
        self.rho = np.zeros(m)
        self.stored = 0  # how many pairs are in memory
        self.head = 0  # next slot to write (ring buffer)

    def _order(self) -> list[int]:
        """Slots from the oldest pair to the newest."""
        m = self.s.shape[0]
        return [(self.head - self.stored + k) % m for k in range(self.stored)]

    def direction(self, g: np.ndarray) -> np.ndarray:
        """The two-loop recursion: ``-H g`` with H the L-BFGS inverse Hessian estimate."""
        q = g.copy()
        order = self._order()
        alphas = np.zeros(len(order))
        for n, slot in reversed(list(enumerate(order))):
            alphas[n] = self.rho[slot] * float(self.s[slot] @ q)
            q -= alphas[n] * self.y[slot]
        D = self.preconditioner
        if order:
            last = order[-1]
            yv = self.y[last]
            if D is None:
                q *= float(self.s[last] @ yv) / float(yv @ yv)
            else:
                q *= D * (float(self.s[last] @ yv) / float(yv @ (D * yv)))
        elif D is not None:
            q *= D
        for n, slot in enumerate(order):
            beta = self.rho[slot] * float(self.y[slot] @ q)
            q += (alphas[n] - beta) * self.s[slot]
        return -q

    def step(self, w, ev, f):
        g = ev.grad
        d = self.direction(g)
        slope = float(g @ d)
        if not slope < 0:  # not a descent direction: forget the curvature, go downhill
            self.stored = 0
            d = -g
            slope = -float(g @ g)
        # First step (no curvature yet): a unit move along the gradient's direction.
        alpha = 1.0 if self.stored else min(1.0, 1.0 / max(float(np.linalg.norm(g)), 1e-300))
        new_ev = None
        for _ in range(self.max_line_search):
            w_new = w + alpha * d
            new_ev = self._eval(f, w_new)
            if new_ev.is_finite() and new_ev.cost <= ev.cost + self.c1 * alpha * slope:
                break
            # Quadratic interpolation of the cost along d, kept within [0.1, 0.5] alpha.
            if math.isfinite(new_ev.cost):
                denom = 2.0 * (new_ev.cost - ev.cost - slope * alpha)
                trial = -slope * alpha * alpha / denom if denom > 0 else 0.5 * alpha
                alpha = min(max(trial, 0.1 * alpha), 0.5 * alpha)
            else:
                alpha *= 0.1
        else:
            # No sufficient decrease along d within the budget: stay where we are and say
            # so; the training loop stops (the gradient's scale is at rounding level).
            self.stalled = True
            return w, ev
        assert new_ev is not None
        s_vec = w_new - w
        y_vec = new_ev.grad - g
        sy = float(s_vec @ y_vec)
        if new_ev.is_finite() and sy > 1e-12 * float(s_vec @ s_vec):
            slot = self.head
            self.s[slot] = s_vec
            self.y[slot] = y_vec
            self.rho[slot] = 1.0 / sy
            self.head = (self.head + 1) % self.s.shape[0]
            self.stored = min(self.stored + 1, self.s.shape[0])
        return w_new, new_ev

    def state_dict(self):
        return {
            **super().state_dict(),
            "s": self.s,
            "y": self.y,
            "rho": self.rho,
            "stored": self.stored,
            "head": self.head,
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.s = np.array(state["s"], dtype=np.float64)
        self.y = np.array(state["y"], dtype=np.float64)
        self.rho = np.array(state["rho"], dtype=np.float64)
        self.stored = int(state["stored"])
        self.head = int(state["head"])


OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (GradientDescent, Momentum, Nesterov, Adam, LBFGS)
}


def make_optimizer(
    name: str,
    settings: OptimizerSettings,
    size: int,
    preconditioner: np.ndarray | None = None,
) -> Optimizer:
    """The optimiser called ``name`` (one of gd, momentum, nesterov, adam, lbfgs).

    ``preconditioner``: L-BFGS's diagonal (see the module docstring); the others ignore it.
    """
    try:
        cls = OPTIMIZER_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZER_CLASSES)}"
        ) from None
    if cls is LBFGS:
        return LBFGS(settings, size, preconditioner)
    return cls(settings, size)
