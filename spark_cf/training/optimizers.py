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
  It needs no learning rate. Its initial inverse Hessian (``lbfgs_precondition``):

  - ``"curvature"`` (the default): ``1 / diag(H)``, the diagonal of the Gauss-Newton
    curvature at the current point (``Evaluation.curvature``: for item i's feature f,
    ``sum_{u rated i} theta_uf^2 + reg``, the diagonal of the k x k block ALS solves
    with; for a bias, its ratings + reg), recomputed at every iteration by the same
    pass as the gradient. Its scale is the step's own, so the first step is a unit
    Gauss-Newton step and no ``gamma`` is needed. In NumPy on ml-latest-small (biased,
    reg 10/20, rank 10) it reaches within 0.002 of the best held-out RMSE in 11 to 15
    iterations against 18 to 52 for ``"none"``, and the whole k x k blocks instead of
    their diagonal gain at most one or two iterations for k times the bytes
    (``benchmarks/preconditioners.py``);
  - ``"counts"``: ``gamma D`` with ``D = 1 / (ratings of the row + 1)`` for every
    parameter of an item's or a user's row
    (:func:`spark_cf.training.params.row_preconditioner`), ``gamma = s.y / y.D.y``;
  - ``"none"``: the scalar ``gamma I`` of the textbook.
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
    #: the diagonal of the Gauss-Newton curvature at the point (regularisation included),
    #: laid out like ``grad``; only when the optimiser asks for it (``needs_curvature``)
    curvature: np.ndarray | None = None
    #: with the user side on the executors (:mod:`spark_cf.training.partitioned`) the
    #: gradient is not gathered: ``grad`` is empty, and these say its squared norm and
    #: whether every parameter and gradient value is finite
    grad_norm_sq: float | None = None
    finite: bool | None = None
    #: the partitioned path's totals of the slices' sums (its dot products for L-BFGS)
    sums: dict | None = None

    @property
    def grad_norm(self) -> float:
        if self.grad_norm_sq is not None:
            return math.sqrt(self.grad_norm_sq)
        return float(np.linalg.norm(self.grad))

    @property
    def train_rmse(self) -> float:
        return math.sqrt(self.sse / self.count) if self.count else float("nan")

    @property
    def val_rmse(self) -> float:
        return math.sqrt(self.val_sse / self.val_count) if self.val_count else float("nan")

    def is_finite(self) -> bool:
        if self.finite is not None:
            return bool(self.finite and math.isfinite(self.cost))
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
    lbfgs_precondition: str = "curvature"


class Optimizer(ABC):
    """One update rule with its state (arrays and numbers, saved in checkpoints)."""

    name: str = ""
    #: whether a cost that rises means the learning rate is too large
    monotone: bool = True

    #: whether its evaluations must carry ``Evaluation.curvature``
    needs_curvature: bool = False

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


def gd_rule(w, g, state, s: OptimizerSettings, t: int):
    """``gd``'s update of ``w`` (a whole vector or any slice of it, with ``state``'s
    slices): elementwise, so the executors apply it to their slices
    (:mod:`spark_cf.training.partitioned`) with the same bits."""
    return w - s.learning_rate * g


def momentum_rule(w, g, state, s: OptimizerSettings, t: int):
    """``momentum``: ``v <- mu v - lr g``; ``w <- w + v`` (``state["velocity"]`` updated)."""
    state["velocity"] = s.momentum * state["velocity"] - s.learning_rate * g
    return w + state["velocity"]


def nesterov_rule(w, g, state, s: OptimizerSettings, t: int):
    """``nesterov``: ``v' <- mu v - lr g``; ``w <- w - mu v + (1 + mu) v'``."""
    previous = state["velocity"]
    state["velocity"] = s.momentum * previous - s.learning_rate * g
    return w - s.momentum * previous + (1.0 + s.momentum) * state["velocity"]


def adam_rule(w, g, state, s: OptimizerSettings, t: int):
    """``adam`` at step ``t`` (from 1): the moments ``state["m"]``, ``state["v"]`` updated."""
    state["m"] = s.adam_beta1 * state["m"] + (1.0 - s.adam_beta1) * g
    state["v"] = s.adam_beta2 * state["v"] + (1.0 - s.adam_beta2) * (g * g)
    m_hat = state["m"] / (1.0 - s.adam_beta1**t)
    v_hat = state["v"] / (1.0 - s.adam_beta2**t)
    return w - s.learning_rate * m_hat / (np.sqrt(v_hat) + s.adam_epsilon)


#: the elementwise update rules and the state vectors each keeps (zeros at the start)
ELEMENTWISE_RULES = {
    "gd": (gd_rule, ()),
    "momentum": (momentum_rule, ("velocity",)),
    "nesterov": (nesterov_rule, ("velocity",)),
    "adam": (adam_rule, ("m", "v")),
}


class GradientDescent(Optimizer):
    name = "gd"

    def step(self, w, ev, f):
        w_new = gd_rule(w, ev.grad, {}, self.settings, 0)
        return w_new, self._eval(f, w_new)


class Momentum(Optimizer):
    name = "momentum"
    monotone = False

    def __init__(self, settings: OptimizerSettings, size: int) -> None:
        super().__init__(settings, size)
        self.velocity = np.zeros(size)

    def step(self, w, ev, f):
        state = {"velocity": self.velocity}
        w_new = momentum_rule(w, ev.grad, state, self.settings, 0)
        self.velocity = state["velocity"]
        return w_new, self._eval(f, w_new)

    def state_dict(self):
        return {**super().state_dict(), "velocity": self.velocity}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.velocity = np.array(state["velocity"], dtype=np.float64)


class Nesterov(Momentum):
    name = "nesterov"

    def step(self, w, ev, f):
        state = {"velocity": self.velocity}
        w_new = nesterov_rule(w, ev.grad, state, self.settings, 0)
        self.velocity = state["velocity"]
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
        self.t += 1
        state = {"m": self.m, "v": self.v}
        w_new = adam_rule(w, ev.grad, state, self.settings, self.t)
        self.m, self.v = state["m"], state["v"]
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
        mode = settings.lbfgs_precondition
        if mode not in LBFGS_PRECONDITIONERS:
            raise ValueError(
                f"lbfgs_precondition = {mode!r}: expected one of {', '.join(LBFGS_PRECONDITIONERS)}"
            )
        self.needs_curvature = mode == "curvature"
        self.preconditioner = preconditioner if mode == "counts" else None
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

    def direction(self, g: np.ndarray, curvature: np.ndarray | None = None) -> np.ndarray:
        """The two-loop recursion: ``-H g`` with H the L-BFGS inverse Hessian estimate
        (``curvature``: the diagonal whose inverse starts it, with ``"curvature"``)."""
        q = g.copy()
        order = self._order()
        alphas = np.zeros(len(order))
        for n, slot in reversed(list(enumerate(order))):
            alphas[n] = self.rho[slot] * float(self.s[slot] @ q)
            q -= alphas[n] * self.y[slot]
        D = self.preconditioner
        if self.needs_curvature:
            if curvature is None:
                raise ValueError("lbfgs_precondition = 'curvature' needs Evaluation.curvature")
            # a row with no curvature (no ratings and reg 0) is left unscaled
            q /= np.where(curvature > 0, curvature, 1.0)
        elif order:
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
        d = self.direction(g, ev.curvature)
        slope = float(g @ d)
        if not slope < 0:  # not a descent direction: forget the pairs, go downhill
            self.stored = 0
            d = self.direction(g, ev.curvature) if self.needs_curvature else -g
            slope = float(g @ d)
        # First step without pairs and without the curvature's scale: a unit move along
        # the gradient's direction; otherwise the full step.
        scaled = self.stored or self.needs_curvature
        alpha = 1.0 if scaled else min(1.0, 1.0 / max(float(np.linalg.norm(g)), 1e-300))
        new_ev = None
        for _ in range(self.max_line_search):
            w_new = w + alpha * d
            new_ev = self._eval(f, w_new)
            if armijo(new_ev, ev.cost, alpha, slope):
                break
            alpha = next_alpha(alpha, slope, ev.cost, new_ev.cost)
        else:
            # No sufficient decrease along d within the budget: stay where we are and say
            # so; the training loop stops (the gradient's scale is at rounding level).
            self.stalled = True
            return w, ev
        assert new_ev is not None
        s_vec = w_new - w
        y_vec = new_ev.grad - g
        sy = float(s_vec @ y_vec)
        if keep_pair(new_ev, sy, float(s_vec @ s_vec)):
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


def armijo(new_ev: Evaluation, cost: float, alpha: float, slope: float) -> bool:
    """L-BFGS's line search accepts ``alpha`` (sufficient decrease from ``cost``)."""
    return new_ev.is_finite() and new_ev.cost <= cost + LBFGS.c1 * alpha * slope


def next_alpha(alpha: float, slope: float, cost: float, new_cost: float) -> float:
    """The next trial step after ``alpha`` was refused: quadratic interpolation of the cost
    along the direction, kept within [0.1, 0.5] alpha (0.1 alpha after a non-finite cost)."""
    if not math.isfinite(new_cost):
        return alpha * 0.1
    denom = 2.0 * (new_cost - cost - slope * alpha)
    trial = -slope * alpha * alpha / denom if denom > 0 else 0.5 * alpha
    return min(max(trial, 0.1 * alpha), 0.5 * alpha)


def keep_pair(new_ev: Evaluation, sy: float, ss: float) -> bool:
    """Whether L-BFGS keeps the pair ``(s, y)``: its curvature ``s.y`` is positive enough."""
    return new_ev.is_finite() and sy > 1e-12 * ss


#: L-BFGS's initial inverse Hessians (``lbfgs_precondition``; see the module docstring)
LBFGS_PRECONDITIONERS = ("curvature", "counts", "none")

OPTIMIZER_CLASSES: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (GradientDescent, Momentum, Nesterov, Adam, LBFGS)
}


def needs_curvature(name: str, settings: OptimizerSettings) -> bool:
    """Whether the optimiser ``name`` with ``settings`` reads ``Evaluation.curvature`` (so
    the objective must compute it)."""
    return name == LBFGS.name and settings.lbfgs_precondition == "curvature"


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
