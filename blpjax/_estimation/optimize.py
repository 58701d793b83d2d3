"""Outer-loop optimisers over θ.

Both drivers minimise one jitted value-and-gradient function f(x, δ₀) -> (q, ∇q, Evaluation)
whose warm start δ₀ is explicit state carried from evaluation to evaluation:

- :class:`ScipyOptimizer`: SciPy's L-BFGS-B (with bounds), BFGS or trust-constr on the host,
  one device call per evaluation.
- :class:`OptaxOptimizer`: any optax transformation (default optax's L-BFGS with its zoom line
  search) in a ``lax.while_loop``; the whole loop is one jitted program that can be vmapped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from .._base import config
from .._base.errors import BLPSpecificationError

_SCIPY = ("auto", "l-bfgs-b", "bfgs", "trust-constr", "return")


class ScipyOptimizer(eqx.Module):
    """SciPy optimiser settings. ``gtol`` is SciPy's gradient tolerance (PyBLP's default 1e-8).

    ``method="return"`` does not optimise: the GMM steps are evaluated at the given parameters (PyBLP's
    ``Optimization('return')``: results, post-estimation and inference at fixed estimates).

    ``method="auto"`` (the default) is BFGS without bounds and L-BFGS-B with them: on PyBLP's Nevo problem,
    whose parameters differ in scale by four orders of magnitude, L-BFGS-B's ten-pair memory stops 1,000
    iterations short of the optimum (objective 4.5622 against 4.5615) where BFGS reaches it.

    ``restarts``: when the line search fails before the gradient criterion is met (BFGS's "precision
    loss", L-BFGS-B's abnormal termination), restart from the point reached with a fresh quasi-Newton
    approximation, at most this many times and only while that lowers the objective (0: never, as PyBLP).

    Near the optimum the objective's rounding (from the contraction's tolerance) can hide the decreases SciPy's
    line search looks for; BFGS and L-BFGS-B then stop at an evaluated point that meets ``gtol`` with an objective
    within rounding (``settings.precision_decrement`` × max(1, |q|)) of the lowest, or, once six evaluations in a
    row near the lowest point improve neither the objective nor the gradient, report "precision loss" there
    without SciPy's further fruitless evaluations (then certified or restarted as below).

    ``certify``: before restarting, check such a point with the exact Hessian of the objective: when it is
    positive definite and a Newton step would lower q by less than its numerical precision (the gradient
    reflects curvature, not distance from the optimum), the step has converged. One Hessian per step that
    ends this way (on PyBLP's Petrin problem ≈ 4.5 s, 10% of a solve); the Hessian is kept for
    ``results.hessian``. ``False``: report the optimiser's failure as it is (as PyBLP).
    """

    method: str = eqx.field(static=True, default="auto")
    gtol: float = eqx.field(static=True, default=1e-8)
    xtol: float = eqx.field(static=True, default=1e-8)
    maxiter: int = eqx.field(static=True, default=1000)
    verbose: bool = eqx.field(static=True, default=False)
    restarts: int = eqx.field(static=True, default=3)
    certify: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.method not in _SCIPY:
            raise BLPSpecificationError(f"ScipyOptimizer.method must be one of {_SCIPY}, got {self.method!r}")
        _positive("ScipyOptimizer.gtol", self.gtol)
        _positive("ScipyOptimizer.xtol", self.xtol)
        _positive_int("ScipyOptimizer.maxiter", self.maxiter, zero=True)
        _positive_int("ScipyOptimizer.restarts", self.restarts, zero=True)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer) or not value > 0:
        raise BLPSpecificationError(f"{name} must be a positive number, not {value!r}.")


def _positive_int(name: str, value, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < (0 if zero else 1):
        raise BLPSpecificationError(
            f"{name} must be a {'non-negative' if zero else 'positive'} integer, not {value!r}."
        )


class OptaxOptimizer(eqx.Module):
    """A jitted optax loop. ``transform=None`` means ``optax.lbfgs()``.

    Stops when the largest absolute (projected) gradient entry is below ``gtol`` or after
    ``max_steps`` updates. Bounds are enforced by projection after every update. ``verbose=True`` prints one
    line per update (``jax.debug.print``), with the columns of :class:`ScipyOptimizer`'s (less evaluations and time).
    """

    transform: Any = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=500)
    gtol: float = eqx.field(static=True, default=1e-8)
    verbose: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        t = self.transform
        if t is not None and not (hasattr(t, "init") and hasattr(t, "update")):
            hint = f" (e.g. optax.{t}(learning_rate=...))" if isinstance(t, str) else ""
            raise BLPSpecificationError(
                f"OptaxOptimizer.transform must be an optax GradientTransformation (with init and update), not "
                f"{type(t).__name__}{hint}."
            )
        _positive_int("OptaxOptimizer.max_steps", self.max_steps, zero=True)
        _positive("OptaxOptimizer.gtol", self.gtol)


class OptimizeResult(eqx.Module):
    x: Any
    delta: Any
    success: Any
    iterations: Any
    evaluations: Any
    message: str = eqx.field(static=True, default="")


def _projected_gradient_norm(x, g, lower, upper):
    """The largest absolute gradient entry, ignoring entries at a bound that point outwards (NumPy or JAX)."""
    xp = np if all(isinstance(a, np.ndarray | float) for a in (x, g, lower, upper)) else jnp
    at_lower = (x <= lower) & (g > 0)
    at_upper = (x >= upper) & (g < 0)
    return xp.max(xp.where(at_lower | at_upper, 0.0, xp.abs(g)), initial=0.0)


class _Progress:
    """Progress lines for ``verbose=True``, one per outer (optimiser) iteration: the objective, the largest
    projected gradient entry, the step length ‖Δθ‖, the objective evaluations so far, the contraction
    iterations of the iteration's last evaluation (total over markets and the largest in one market),
    markets whose inversion failed, and the elapsed time. θ itself is not printed."""

    COLUMNS = (
        f"{'iter':>5} {'evals':>5} {'objective':>16} {'|proj grad|':>11} {'|step|':>10} "
        f"{'contraction':>11} {'max':>6} {'failed':>6} {'seconds':>8}"
    )

    OPTAX_COLUMNS = (
        f"{'step':>5} {'objective':>16} {'|proj grad|':>11} {'|step|':>10} {'contraction':>11} {'max':>6} {'failed':>6}"
    )

    def __init__(self, lower, upper):
        self.lower, self.upper = np.asarray(lower), np.asarray(upper)
        self.t0 = time.perf_counter()
        self.k = 0
        self.previous = None
        self.last: dict[bytes, tuple] = {}

    def header(self, method: str, x0) -> None:
        self.previous = np.asarray(x0, np.float64)
        print(f"  {method}: {self.previous.size} nonlinear parameters", flush=True)
        print("  " + self.COLUMNS, flush=True)

    def evaluated(self, x, q: float, g: np.ndarray, ev) -> None:
        key = np.asarray(x, np.float64).tobytes()
        iterations = np.asarray(ev.evaluations)
        failed = int(np.sum(np.asarray(ev.status) != 0))
        pg = float(_projected_gradient_norm(np.asarray(x, np.float64), g, self.lower, self.upper))
        self.last[key] = (q, pg, int(iterations.sum()), int(iterations.max(initial=0)), failed)
        while len(self.last) > 64:  # the iterate a callback reports may be an earlier evaluation (trust-constr)
            del self.last[next(iter(self.last))]

    def iteration(self, x, evaluations: int) -> None:
        x = np.asarray(x, np.float64)
        self.k += 1
        q, pg, total, most, failed = self.last.get(x.tobytes(), (np.nan,) * 2 + (-1,) * 3)
        step = float(np.linalg.norm(x - self.previous)) if self.previous is not None else np.nan
        self.previous = x
        print(
            f"  {self.k:5d} {evaluations:5d} {q:16.10g} {pg:11.3g} {step:10.3g} {total:11d} {most:6d} {failed:6d} "
            f"{time.perf_counter() - self.t0:8.2f}",
            flush=True,
        )


@jax.jit
def predicted_start(delta, jacobian, x, x_at):
    """The warm start at ``x`` from δ solved at ``x_at`` and its derivative: δ + (dδ/dx)(x − x_at), first-order
    accurate (the contraction then starts O(‖Δx‖²) from the solution instead of O(‖Δx‖)); δ itself where the
    prediction is not finite."""
    predicted = delta + jacobian @ (x - x_at)
    return jnp.where(jnp.isfinite(predicted), predicted, delta)


def _start(state, x):
    """The warm start for an evaluation at ``x`` (the last successful evaluation's δ, predicted to first order when
    that evaluation carried dδ/dx)."""
    if state.get("jacobian") is None:
        return state["delta"]
    return predicted_start(state["delta"], state["jacobian"], x, state["x"])


class _Stop(Exception):
    """Raised from the objective to end SciPy's run at ``x`` (see :class:`_Endgame`)."""

    def __init__(self, x, success: bool, message: str):
        super().__init__(message)
        self.x, self.success, self.message = x, success, message


class _Endgame:
    """Two early stops for SciPy's line searches near the optimum, where the objective's rounding (from the
    contraction's tolerance: ≈ 1e-11 relative on PyBLP's Petrin problem, whose q moves by ±2e-9 between two
    evaluations 1e-12 apart) hides the decreases they look for. With ``precision`` = ``settings.precision_decrement``
    × max(1, |q|):

    - an evaluated point meets the gradient criterion (SciPy's: the largest projected gradient entry ≤ gtol) and its
      objective is within ``precision`` of the lowest seen: converged there (SciPy's line search would reject the
      point on rounding and go on, often to "precision loss" ≈ 20 evaluations later);
    - ``patience`` evaluations in a row, all within a small neighbourhood of the lowest point, lower neither the
      objective by more than ``precision`` nor the smallest gradient seen by half: the line search has stalled. It
      is reported as SciPy's "precision loss" at the lowest point, where the driver checks convergence with the
      exact Hessian (or restarts), without the evaluations SciPy spends before giving up.
    """

    def __init__(self, gtol: float, lower, upper, patience: int = 6, neighbourhood: float = 1e-4):
        self.gtol, self.lower, self.upper = gtol, lower, upper
        self.patience, self.neighbourhood = patience, neighbourhood
        self.best_q, self.best_x, self.smallest, self.still = np.inf, None, np.inf, 0

    def __call__(self, x: np.ndarray, q: float, g: np.ndarray) -> None:
        precision = config.settings.precision_decrement * max(1.0, abs(q))
        pg = float(_projected_gradient_norm(x, g, self.lower, self.upper))
        if pg <= self.gtol and q <= self.best_q + precision:
            where = (
                "the lowest objective so far"
                if q <= self.best_q
                else f"an objective {q - self.best_q:.2g} above the lowest, within its numerical precision {precision:.2g}"
            )
            raise _Stop(
                x,
                True,
                f"the gradient criterion is met (largest projected entry {pg:.3g} <= gtol {self.gtol:g}) at an "
                f"evaluated point with {where}",
            )
        near = self.best_x is not None and np.max(np.abs(x - self.best_x)) <= self.neighbourhood * max(
            1.0, float(np.max(np.abs(self.best_x)))
        )
        if q < self.best_q - precision or pg < 0.5 * self.smallest or not near:
            self.still = 0
        else:
            self.still += 1
        if q < self.best_q:
            self.best_q, self.best_x = q, x
        self.smallest = min(self.smallest, pg)
        if self.still >= self.patience:
            raise _Stop(
                self.best_x,
                False,
                f"Desired error not necessarily achieved due to precision loss: the line search stalled ({self.still} "
                f"evaluations in a row near the lowest point lowered neither the objective beyond its numerical "
                f"precision {precision:.2g} nor the gradient)",
            )


def scipy_minimize(
    value_and_grad: Callable, x0: np.ndarray, delta0, lower: np.ndarray, upper: np.ndarray, opt: ScipyOptimizer
) -> OptimizeResult:
    """Drive SciPy with a jitted ``value_and_grad(x, δ₀) -> (q, grad, Evaluation)``; an Evaluation with
    ``delta_jacobian`` makes the next warm start a first-order prediction (:func:`predicted_start`). BFGS and
    L-BFGS-B stop early in the endgame that the objective's rounding makes (:class:`_Endgame`)."""
    state = {"delta": delta0, "n": 0, "t0": time.perf_counter(), "best": np.inf, "finite": 0, "failed": set()}
    state["endgame"] = None
    progress = _Progress(lower, upper) if opt.verbose else None

    def fun(x):
        x_in = jnp.asarray(x)
        q, g, ev = value_and_grad(x_in, _start(state, x_in))
        q, g = float(q), np.asarray(g, dtype=np.float64)
        state["n"] += 1
        if progress is not None:
            progress.evaluated(x, q, g, ev)
        if np.isfinite(q) and np.all(np.isfinite(g)):
            state["finite"] += 1
            if np.all(np.asarray(ev.status) == 0):
                state["delta"] = ev.delta  # warm start the next evaluation
                state["x"], state["jacobian"] = x_in, getattr(ev, "delta_jacobian", None)
                if state["endgame"] is not None:
                    state["endgame"](np.array(x, np.float64), q, g)
            state["best"] = min(state["best"], q)
            return q, g
        # PyBLP-style reversion: a failed inversion must never look like an improvement
        state["failed"].add(np.asarray(x, np.float64).tobytes())
        return (1e10 if not np.isfinite(state["best"]) else 10 * state["best"] + 1e6), np.zeros_like(g)

    def callback(*args):
        state["iterations"] = state.get("iterations", 0) + 1
        if progress is not None:
            progress.iteration(args[0] if not hasattr(args[0], "x") else args[0].x, state["n"])

    bounded = np.any(np.isfinite(lower)) or np.any(np.isfinite(upper))
    bounds = list(zip(lower, upper, strict=True)) if bounded else None
    if opt.method == "auto":  # BFGS's full inverse-Hessian copes with badly scaled parameters; bounds need L-BFGS-B
        opt = dataclasses.replace(opt, method="l-bfgs-b" if bounded else "bfgs")
    if opt.method == "bfgs" and bounded:
        raise ValueError("SciPy's BFGS does not support bounds; use method='l-bfgs-b' or 'trust-constr'.")

    def run(start, maxiter):
        if opt.method == "l-bfgs-b":
            options = {"gtol": opt.gtol, "maxiter": maxiter}
            return scipy.optimize.minimize(
                fun, start, jac=True, method="L-BFGS-B", bounds=bounds, options=options, callback=callback
            )
        if opt.method == "bfgs":
            options = {"gtol": opt.gtol, "maxiter": maxiter}
            return scipy.optimize.minimize(fun, start, jac=True, method="BFGS", options=options, callback=callback)
        options = {"gtol": opt.gtol, "xtol": opt.xtol, "maxiter": maxiter}
        sb = scipy.optimize.Bounds(lower, upper) if bounded else None
        return scipy.optimize.minimize(
            fun, start, jac=True, method="trust-constr", bounds=sb, options=options, callback=callback
        )

    if progress is not None:
        progress.header(opt.method, x0)
    if opt.method == "return" or opt.maxiter == 0:
        # no iteration at all (SciPy's L-BFGS-B takes a step even with maxiter=0): evaluate at the start
        fun(np.asarray(x0, np.float64))
        finite = state["finite"] == 1
        if opt.method == "return":
            success = finite
            message = "evaluated at the given parameters (method='return', PyBLP's Optimization('return'))"
        else:
            success, message = False, "maxiter=0: evaluated at the starting values, not optimised"
        if not finite:
            message = "the objective or its gradient is not finite at the given parameters"
        return OptimizeResult(np.asarray(x0, np.float64), state["delta"], success, 0, state["n"], message)
    if opt.method in ("bfgs", "l-bfgs-b"):
        state["endgame"] = _Endgame(opt.gtol, lower, upper)
    try:
        res = run(x0, opt.maxiter)
    except _Stop as stop:
        iterations = state.get("iterations", 0)
        return OptimizeResult(np.asarray(stop.x), state["delta"], stop.success, iterations, state["n"], stop.message)
    success, message = bool(res.success), str(res.message)
    if state["finite"] == 0:
        # a failed inversion is reported to SciPy as a high value with a zero gradient (never as an
        # improvement), which SciPy would take for a stationary point: not a success
        success, message = False, "every objective evaluation was non-finite (NaN or inf); SciPy stopped at the start"
    elif not success and (gradient := res.get("grad") if opt.method == "trust-constr" else res.get("jac")) is not None:
        # "precision loss" and similar line-search failures at a point that meets the gradient criterion (trust-constr's
        # ``jac`` holds the constraints' Jacobians; its objective gradient is ``grad``)
        pg = float(_projected_gradient_norm(np.asarray(res.x), np.asarray(gradient, np.float64), lower, upper))
        failed = np.asarray(res.x, np.float64).tobytes() in state["failed"]
        if not failed and np.isfinite(res.fun) and pg <= opt.gtol:
            success = True
            message = (
                f"{message} (accepted: the projected gradient's largest entry {pg:.3g} is within gtol {opt.gtol:g})"
            )
    return OptimizeResult(np.asarray(res.x), state["delta"], success, int(getattr(res, "nit", 0)), state["n"], message)


def _line_search_failed(message: str) -> bool:
    """SciPy's report of a failed line search (BFGS's "precision loss", L-BFGS-B's abnormal termination)."""
    message = message.lower()
    return "precision loss" in message or "abnormal" in message or "line search" in message


def optax_minimize(value_and_grad: Callable, value: Callable, x0, delta0, lower, upper, opt: OptaxOptimizer):
    """A pure, jittable optax loop (returns an :class:`OptimizeResult` of arrays); bounds are arrays (traced).

    Stops when the largest projected gradient entry is below ``opt.gtol``, after ``opt.max_steps``
    updates, or at a non-finite gradient. Cheap to ``vmap`` (a Monte Carlo over replications, many
    starting points): under ``vmap`` a ``while_loop`` runs its body for every member until the slowest
    one stops, so a member that is done is handed a zero gradient: its line search accepts at once
    and its inversions start at the solution (one cheap pass), and the batched loop discards its update,
    so every member ends exactly where it would alone.
    """
    tx = optax.with_extra_args_support(opt.transform if opt.transform is not None else optax.lbfgs())
    lower = jnp.asarray(lower)
    upper = jnp.asarray(upper)
    x0 = jnp.clip(jnp.asarray(x0), lower, upper)
    q0, g0, ev0 = value_and_grad(x0, delta0)
    # the warm start: the last successful evaluation's δ at x_at, predicted to first order where the evaluations
    # carry dδ/dx (see scipy_minimize)
    jac0 = getattr(ev0, "delta_jacobian", None)

    def start(y, delta, x_at, jac):
        return delta if jac is None else predicted_start(delta, jac, y, x_at)

    def active(x, g, k):
        gn = _projected_gradient_norm(x, g, lower, upper)
        return (k < opt.max_steps) & (gn > opt.gtol) & jnp.all(jnp.isfinite(g))

    def cond(c):
        x, _, _, g, _, k, _, _ = c
        return active(x, g, k)

    def body(c):
        x, state, q, g, delta, k, n, (x_at, jac) = c
        g_in = jnp.where(active(x, g, k), g, 0.0)
        value_fn = lambda y: value(y, start(y, delta, x_at, jac))  # noqa: E731
        updates, state = tx.update(g_in, state, x, value=q, grad=g_in, value_fn=value_fn)
        x = jnp.clip(optax.apply_updates(x, updates), lower, upper)
        q, g, ev = value_and_grad(x, start(x, delta, x_at, jac))
        ok = jnp.all(ev.status == 0)
        delta = jnp.where(ok, ev.delta, delta)
        if jac is not None:
            x_at, jac = jnp.where(ok, x, x_at), jnp.where(ok, ev.delta_jacobian, jac)
        if opt.verbose:  # one line per update (see _Progress for the columns)
            jax.debug.print(
                "  {k:5d} {q:16.10g} {gn:11.3g} {s:10.3g} {c:11d} {m:6d} {f:6d}",
                k=k + 1,
                q=q,
                gn=_projected_gradient_norm(x, g, lower, upper),
                s=jnp.linalg.norm(x - c[0]),
                c=jnp.sum(ev.evaluations),
                m=jnp.max(ev.evaluations),
                f=jnp.sum(ev.status != 0),
            )
        return x, state, q, g, delta, k + 1, n + 1, (x_at, jac)

    init = (x0, tx.init(x0), q0, g0, ev0.delta, jnp.asarray(0), jnp.asarray(1), (x0, jac0))
    x, _, q, g, delta, k, n, _ = jax.lax.while_loop(cond, body, init)
    success = (_projected_gradient_norm(x, g, lower, upper) <= opt.gtol) & jnp.isfinite(q)
    return OptimizeResult(x, delta, success, k, n)
