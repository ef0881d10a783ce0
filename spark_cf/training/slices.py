"""The optimisers on parameters cut into slices, for training with the user side on the
executors (:mod:`spark_cf.training.partitioned`). No Spark import here.

The parameters are cut into the *item slice* (X row-major, then the item biases), kept
on the driver, and one *user slice* per user block (that block's Theta rows, then its
user biases), kept with the block's ratings on the executors. A slice is a dict of flat
float64 vectors of one length, by name:

- ``w`` the parameters, ``g`` the gradient there, ``c`` the curvature diagonal (when
  L-BFGS asks for it);
- the elementwise optimisers' state (``velocity``; ``m`` and ``v``), updated by the very
  rules of :mod:`spark_cf.training.optimizers` (elementwise, so each slice gets the bits
  the whole vector would);
- L-BFGS's: ``d`` the direction, ``wt``, ``gt``, ``ct`` the last trial point and its
  gradient and curvature, ``s<slot>``, ``y<slot>`` the kept pairs; ``D`` the ``counts``
  preconditioner.

One :class:`Move` says how *every* slice goes to the next point to evaluate; the driver
applies it to the item slice, each task to its user slices. The only quantities that
need all slices are dot products: each slice returns its partial Gram matrices
(:func:`slice_sums`) and the driver adds them in a fixed order (the item slice, then
the user blocks in order), so the result does not depend on the cores.

L-BFGS on slices is "vector-free" (Chen, Wang and Zhang, NIPS 2014): the two-loop
recursion is replaced by the compact form of the same matrix (Byrd, Nocedal and
Schnabel 1994, theorem 2.2)::

    H = H0 + [S  H0 Y] [[R^-T (D + Y^T H0 Y) R^-1, -R^-T], [-R^-1, 0]] [S^T; Y^T H0]

(``R`` the upper triangle of ``S^T Y``, ``D`` its diagonal, ``H0 = gamma diag(h)``), so
the direction ``-H g = -(S p + gamma h o (g + Y q))`` needs only the dot products
``S^T g``, ``Y^T h Y``, ``Y^T h g``, ``g^T h g`` and the pairs' ``s_i . y_j``, which the
evaluation's pass returns (:class:`CompactLBFGS`). In exact arithmetic this is the
direction of :class:`spark_cf.training.optimizers.LBFGS`; in floating point it agrees to
rounding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numba
import numpy as np

from spark_cf.training.optimizers import ELEMENTWISE_RULES, OptimizerSettings


@dataclass(frozen=True)
class Direction:
    """An L-BFGS direction as coefficients: ``d = -(sum p_i s_i + gamma h o (g + sum q_i
    y_i))`` over the pairs in ``order`` (slots, oldest first), or ``d = -g`` when not
    ``scaled``."""

    p: tuple[float, ...] = ()
    q: tuple[float, ...] = ()
    order: tuple[int, ...] = ()
    gamma: float = 1.0
    scaled: bool = True


@dataclass(frozen=True)
class Move:
    """How every slice goes to its next point to evaluate.

    kind
        ``"stay"``: evaluate ``w`` as it is (the start, or a resume); ``"rule"``: one step
        of the elementwise ``rule`` (step count ``t``); ``"lbfgs"``: optionally commit the
        last trial (``commit``: it becomes the current point, and with ``store >= 0`` its
        pair goes to that slot), optionally take a new ``direction``, then try
        ``w + alpha d``.
    u_names, w_names
        The vectors whose plain (``u``) and ``h``-weighted (``w``) Gram matrices each slice
        returns after the evaluation (L-BFGS): ``s<slot>``, ``y<slot>``, ``snew``,
        ``ynew`` (the trial's candidate pair) and ``g`` (the new gradient).
    """

    kind: str
    lbfgs: bool = False
    rule: str = ""
    settings: OptimizerSettings | None = None
    t: int = 0
    commit: bool = False
    store: int = -1
    direction: Direction | None = None
    alpha: float = 0.0
    u_names: tuple[str, ...] = ()
    w_names: tuple[str, ...] = ()


def rule_state_names(rule: str) -> tuple[str, ...]:
    """The state vectors the elementwise ``rule`` keeps."""
    return ELEMENTWISE_RULES[rule][1]


def preconditioner_weights(v: dict[str, np.ndarray], precondition: str, c: str) -> np.ndarray:
    """``h``, the diagonal of L-BFGS's initial inverse Hessian before ``gamma``: ``1 / c``
    (``"curvature"``; a zero curvature left unscaled), the ``counts`` diagonal ``D``, or
    ones (``"none"``)."""
    if precondition == "curvature":
        curv = v[c]
        return 1.0 / np.where(curv > 0, curv, 1.0)
    if precondition == "counts":
        return v["D"]
    return np.ones_like(v["w"])


def apply_move(v: dict[str, np.ndarray], move: Move, precondition: str) -> np.ndarray:
    """Move the slice ``v`` to its next point to evaluate (see :class:`Move`) and return it."""
    if move.kind == "stay":
        if move.lbfgs:
            v["wt"] = v["w"]
            return v["wt"]
        return v["w"]
    if move.kind == "rule":
        rule = ELEMENTWISE_RULES[move.rule][0]
        v["w"] = rule(v["w"], v["g"], v, move.settings, move.t)
        return v["w"]
    if move.commit:
        if move.store >= 0:
            v[f"s{move.store}"] = v["wt"] - v["w"]
            v[f"y{move.store}"] = v["gt"] - v["g"]
        v["w"], v["g"] = v["wt"], v["gt"]
        if "ct" in v:
            v["c"] = v["ct"]
    if move.direction is not None:
        v["d"] = direction_vector(v, move.direction, precondition)
    v["wt"] = v["w"] + move.alpha * v["d"]
    return v["wt"]


def direction_vector(v: dict[str, np.ndarray], d: Direction, precondition: str) -> np.ndarray:
    """The slice of the direction ``d`` at the current point ``v["w"]``."""
    if not d.scaled:
        return -v["g"]
    r = v["g"].copy()
    for coef, slot in zip(d.q, d.order):
        r += coef * v[f"y{slot}"]
    r *= d.gamma * preconditioner_weights(v, precondition, "c")
    for coef, slot in zip(d.p, d.order):
        r += coef * v[f"s{slot}"]
    return -r


def record(v: dict[str, np.ndarray], move: Move, g: np.ndarray, c: np.ndarray | None) -> None:
    """Keep the gradient (and curvature) evaluated at the slice's new point."""
    if move.lbfgs:
        v["gt"] = g
        if c is not None:
            v["ct"] = c
    else:
        v["g"] = g
        if c is not None:
            v["c"] = c


def slice_sums(
    v: dict[str, np.ndarray], move: Move, precondition: str, point: np.ndarray
) -> dict[str, object]:
    """What the slice adds to the totals after its evaluation: ``ww = w . w`` (the
    regularisation), ``gg = g . g`` (the gradient's norm), whether all is finite, and
    for L-BFGS the Gram matrices ``U`` (plain) and ``W`` (``h``-weighted at the new
    point) of :attr:`Move.u_names` and :attr:`Move.w_names`."""
    g = v["gt"] if move.lbfgs else v["g"]
    out: dict[str, object] = {
        "ww": dot(point, point),
        "gg": dot(g, g),
        "finite": bool(np.isfinite(point).all() and np.isfinite(g).all()),
    }
    if move.lbfgs:

        def vector(name: str) -> np.ndarray:
            if name == "g":
                return v["gt"]
            if name == "snew":
                return v["wt"] - v["w"]
            if name == "ynew":
                return v["gt"] - v["g"]
            return v[name]

        cache = {n: vector(n) for n in {*move.u_names, *move.w_names}}
        out["U"] = gram(tuple(cache[n] for n in move.u_names), None)
        h = preconditioner_weights(v, precondition, "ct")
        out["W"] = gram(tuple(cache[n] for n in move.w_names), h)
    return out


_CACHE = os.path.isfile(__file__)


@numba.njit(cache=_CACHE, nogil=True)
def _dot(a, b):  # pragma: no cover - compiled
    s = 0.0
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """``a . b`` summed in element order (the same bits whatever the BLAS threads)."""
    if a.shape[0] == 0:
        return 0.0
    return float(_dot(a, b))


@numba.njit(cache=_CACHE, nogil=True)
def _gram(vs, h, weighted, out):  # pragma: no cover - compiled
    r = len(vs)
    n = vs[0].shape[0]
    for j in range(n):
        for a in range(r):
            va = vs[a][j] * h[j] if weighted else vs[a][j]
            for b in range(a, r):
                out[a, b] += va * vs[b][j]


def gram(vectors: tuple[np.ndarray, ...], h: np.ndarray | None) -> np.ndarray:
    """The Gram matrix ``G_ab = sum_j v_a[j] h[j] v_b[j]`` (``h`` None: ones), summed in
    element order; symmetric."""
    r = len(vectors)
    out = np.zeros((r, r))
    if r and vectors[0].shape[0]:
        weights = h if h is not None else np.zeros(0)
        _gram(tuple(vectors), weights, h is not None, out)
    return out + np.triu(out, 1).T


def add_sums(total: dict[str, object] | None, part: dict[str, object]) -> dict[str, object]:
    """``total + part`` (numbers and Gram matrices added, finiteness and-ed)."""
    if total is None:
        return dict(part)
    out = dict(total)
    for key, value in part.items():
        out[key] = (out[key] and value) if key == "finite" else out[key] + value
    return out


# ------------------------------------------------------------------ L-BFGS on the driver


@dataclass
class CompactLBFGS:
    """L-BFGS's scalars on the driver: the ring of kept pairs (slots, as in
    :class:`~spark_cf.training.optimizers.LBFGS`), their ``s_i . y_j`` and ``1 / s.y``,
    and the direction's coefficients from an evaluation's Gram matrices."""

    memory: int
    precondition: str
    head: int = 0
    stored: int = 0
    rho: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: s_i . y_j for slots i, j with pair i no newer than pair j
    sy: dict[tuple[int, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rho.shape[0] != self.memory:
            self.rho = np.zeros(self.memory)

    def order(self) -> list[int]:
        """Slots from the oldest pair to the newest."""
        m = self.memory
        return [(self.head - self.stored + k) % m for k in range(self.stored)]

    def names(self, pair: bool, resume: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The Gram matrices' vectors for the next evaluation (see :class:`Move`): with a
        candidate pair (a trial) or without (the start; ``resume``: the kept pairs'
        ``s_i . y_j`` too)."""
        o = self.order()
        s = tuple(f"s{i}" for i in o)
        y = tuple(f"y{i}" for i in o)
        if pair:
            return (*s, "snew", "ynew", "g"), (*y, "ynew", "g")
        if resume:
            return (*s, *y, "g"), (*y, "g")
        return (*s, "g"), (*y, "g")

    def learn_pairs(self, U: np.ndarray, u_names: tuple[str, ...]) -> None:
        """After a resume: the kept pairs' ``s_i . y_j`` from the start's Gram matrix."""
        at = {n: k for k, n in enumerate(u_names)}
        o = self.order()
        self.sy = {}
        for a, i in enumerate(o):
            for j in o[a:]:
                self.sy[(i, j)] = float(U[at[f"s{i}"], at[f"y{j}"]])

    def accept(self, U: np.ndarray, u_names: tuple[str, ...], keep: bool) -> int:
        """The trial was accepted: keep its pair (``keep``) in the next slot, evicting the
        oldest when full. Returns the slot, or -1 when the pair is not kept."""
        if not keep:
            return -1
        at = {n: k for k, n in enumerate(u_names)}
        slot = self.head
        old = [i for i in self.order() if i != slot]
        self.sy = {key: val for key, val in self.sy.items() if slot not in key}
        for i in old:
            self.sy[(i, slot)] = float(U[at[f"s{i}"], at["ynew"]])
        sy = float(U[at["snew"], at["ynew"]])
        self.sy[(slot, slot)] = sy
        self.rho[slot] = 1.0 / sy
        self.head = (self.head + 1) % self.memory
        self.stored = min(self.stored + 1, self.memory)
        return slot

    def plan(
        self,
        U: np.ndarray,
        u_names: tuple[str, ...],
        W: np.ndarray,
        w_names: tuple[str, ...],
        renamed: dict[str, str],
    ) -> tuple[Direction, float, float]:
        """The direction at the evaluated point, its slope ``g . d`` and the first trial
        step, from that evaluation's Gram matrices (``renamed``: ``snew``/``ynew`` to the
        slot names they were stored under)."""
        au = {renamed.get(n, n): k for k, n in enumerate(u_names)}
        aw = {renamed.get(n, n): k for k, n in enumerate(w_names)}
        curvature = self.precondition == "curvature"
        ug, wg = au["g"], aw["g"]
        o = self.order()
        if o:
            k = len(o)
            last = o[-1]
            gamma = 1.0 if curvature else self.sy[(last, last)] / W[aw[f"y{last}"], aw[f"y{last}"]]
            R = np.zeros((k, k))
            for a, i in enumerate(o):
                for b in range(a, k):
                    R[a, b] = self.sy[(i, o[b])]
            yi = [aw[f"y{i}"] for i in o]
            a_vec = np.array([U[au[f"s{i}"], ug] for i in o])
            b_vec = gamma * np.array([W[y, wg] for y in yi])
            M = gamma * W[np.ix_(yi, yi)]
            u = _back_substitute(R, a_vec)
            z = np.diag(R) * u + M @ u - b_vec
            p = _forward_substitute(R.T, z)
            q = -u
            gHg = gamma * W[wg, wg] + float(a_vec @ p) + float(b_vec @ q)
            direction = Direction(tuple(p), tuple(q), tuple(o), gamma, True)
            slope = -gHg
        else:
            scaled = self.precondition != "none"
            direction = Direction(scaled=scaled)
            slope = -(W[wg, wg] if scaled else U[ug, ug])
        if not slope < 0:  # not a descent direction: forget the pairs, go downhill
            self.stored = 0
            self.sy = {}
            direction = Direction(scaled=curvature)
            slope = -(W[wg, wg] if curvature else U[ug, ug])
        scaled_step = self.stored or curvature
        alpha = 1.0 if scaled_step else min(1.0, 1.0 / max(math.sqrt(U[ug, ug]), 1e-300))
        return direction, float(slope), alpha


def _back_substitute(R: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``R x = b`` for upper-triangular ``R``."""
    n = len(b)
    x = np.zeros(n)
    for i in range(n - 1, -1, -1):
        x[i] = (b[i] - float(R[i, i + 1 :] @ x[i + 1 :])) / R[i, i]
    return x


def _forward_substitute(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``L x = b`` for lower-triangular ``L``."""
    n = len(b)
    x = np.zeros(n)
    for i in range(n):
        x[i] = (b[i] - float(L[i, :i] @ x[:i])) / L[i, i]
    return x
