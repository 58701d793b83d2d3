"""Outer-loop optimisers over θ.

Both drivers minimise one jitted value-and-gradient function f(x, δ₀) -> (q, ∇q, Evaluation)
whose warm start δ₀ is explicit state carried from evaluation to evaluation:

- :class:`ScipyOptimizer`: SciPy's L-BFGS-B (with bounds), BFGS or trust-constr on the host,
  one device call per evaluation.
- :class:`OptaxOptimizer`: any optax transformation (default optax's L-BFGS with its zoom line
  search) in a ``lax.while_loop``; the whole loop is one jitted program that can be vmapped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

_SCIPY = ("l-bfgs-b", "bfgs", "trust-constr")


class ScipyOptimizer(eqx.Module):
    """SciPy optimiser settings. ``gtol`` is SciPy's gradient tolerance (PyBLP's default 1e-8)."""

    method: str = eqx.field(static=True, default="l-bfgs-b")
    gtol: float = eqx.field(static=True, default=1e-8)
    xtol: float = eqx.field(static=True, default=1e-8)
    maxiter: int = eqx.field(static=True, default=1000)
    verbose: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.method not in _SCIPY:
            raise ValueError(f"ScipyOptimizer.method must be one of {_SCIPY}, got {self.method!r}")


class OptaxOptimizer(eqx.Module):
    """A jitted optax loop. ``transform=None`` means ``optax.lbfgs()``.

    Stops when the largest absolute (projected) gradient entry is below ``gtol`` or after
    ``max_steps`` updates. Bounds are enforced by projection after every update.
    """

    transform: Any = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=500)
    gtol: float = eqx.field(static=True, default=1e-8)
    verbose: bool = eqx.field(static=True, default=False)


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


def scipy_minimize(
    value_and_grad: Callable, x0: np.ndarray, delta0, lower: np.ndarray, upper: np.ndarray, opt: ScipyOptimizer
) -> OptimizeResult:
    """Drive SciPy with a jitted ``value_and_grad(x, δ₀) -> (q, grad, Evaluation)``."""
    state = {"delta": delta0, "n": 0, "t0": time.perf_counter(), "best": np.inf, "finite": 0, "failed": set()}

    def fun(x):
        q, g, ev = value_and_grad(jnp.asarray(x), state["delta"])
        q, g = float(q), np.asarray(g, dtype=np.float64)
        state["n"] += 1
        if np.isfinite(q) and np.all(np.isfinite(g)):
            state["finite"] += 1
            if np.all(np.asarray(ev.status) == 0):
                state["delta"] = ev.delta  # warm start the next evaluation
            state["best"] = min(state["best"], q)
            return q, g
        # PyBLP-style reversion: a failed inversion must never look like an improvement
        state["failed"].add(np.asarray(x, np.float64).tobytes())
        return (1e10 if not np.isfinite(state["best"]) else 10 * state["best"] + 1e6), np.zeros_like(g)

    def callback(*args):
        if opt.verbose:
            xk = args[0] if not hasattr(args[0], "x") else args[0].x
            print(
                f"  iter: evaluations={state['n']:4d}  objective={state['best']:.10g}  "
                f"elapsed={time.perf_counter() - state['t0']:.2f}s  theta={np.array2string(np.asarray(xk), precision=6)}"
            )

    bounded = np.any(np.isfinite(lower)) or np.any(np.isfinite(upper))
    bounds = list(zip(lower, upper, strict=True)) if bounded else None
    if opt.method == "l-bfgs-b":
        options = {"gtol": opt.gtol, "maxiter": opt.maxiter}
        res = scipy.optimize.minimize(
            fun, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=options, callback=callback
        )
    elif opt.method == "bfgs":
        if bounded:
            raise ValueError("SciPy's BFGS does not support bounds; use method='l-bfgs-b' or 'trust-constr'.")
        res = scipy.optimize.minimize(
            fun, x0, jac=True, method="BFGS", options={"gtol": opt.gtol, "maxiter": opt.maxiter}, callback=callback
        )
    else:
        options = {"gtol": opt.gtol, "xtol": opt.xtol, "maxiter": opt.maxiter}
        sb = scipy.optimize.Bounds(lower, upper) if bounded else None
        res = scipy.optimize.minimize(
            fun, x0, jac=True, method="trust-constr", bounds=sb, options=options, callback=callback
        )
    success, message = bool(res.success), str(res.message)
    if state["finite"] == 0:
        # a failed inversion is reported to SciPy as a high value with a zero gradient (never as an
        # improvement), which SciPy would take for a stationary point: not a success
        success, message = False, "every objective evaluation was non-finite (NaN or inf); SciPy stopped at the start"
    elif not success and hasattr(res, "jac"):
        # "precision loss" and similar line-search failures at a point that meets the gradient criterion
        pg = float(_projected_gradient_norm(np.asarray(res.x), np.asarray(res.jac), lower, upper))
        failed = np.asarray(res.x, np.float64).tobytes() in state["failed"]
        if not failed and np.isfinite(res.fun) and pg <= opt.gtol:
            success = True
            message = (
                f"{message} (accepted: the projected gradient's largest entry {pg:.3g} is within gtol {opt.gtol:g})"
            )
    return OptimizeResult(np.asarray(res.x), state["delta"], success, int(getattr(res, "nit", 0)), state["n"], message)


def optax_minimize(value_and_grad: Callable, value: Callable, x0, delta0, lower, upper, opt: OptaxOptimizer):
    """A pure, jittable optax loop (returns an :class:`OptimizeResult` of arrays)."""
    tx = optax.with_extra_args_support(opt.transform if opt.transform is not None else optax.lbfgs())
    lower = jnp.asarray(lower)
    upper = jnp.asarray(upper)
    x0 = jnp.clip(jnp.asarray(x0), lower, upper)
    q0, g0, ev0 = value_and_grad(x0, delta0)

    def cond(c):
        x, _, _, g, _, k, _ = c
        return (
            (k < opt.max_steps) & (_projected_gradient_norm(x, g, lower, upper) > opt.gtol) & jnp.all(jnp.isfinite(g))
        )

    def body(c):
        x, state, q, g, delta, k, n = c
        updates, state = tx.update(g, state, x, value=q, grad=g, value_fn=lambda y: value(y, delta))
        x = jnp.clip(optax.apply_updates(x, updates), lower, upper)
        q, g, ev = value_and_grad(x, delta)
        delta = jnp.where(jnp.all(ev.status == 0), ev.delta, delta)
        if opt.verbose:
            jax.debug.print("  step {k}: objective={q:.10g} |grad|={gn:.3g}", k=k + 1, q=q, gn=jnp.max(jnp.abs(g)))
        return x, state, q, g, delta, k + 1, n + 1

    init = (x0, tx.init(x0), q0, g0, ev0.delta, jnp.asarray(0), jnp.asarray(1))
    x, _, q, g, delta, k, n = jax.lax.while_loop(cond, body, init)
    success = (_projected_gradient_norm(x, g, lower, upper) <= opt.gtol) & jnp.isfinite(q)
    return OptimizeResult(x, delta, success, k, n)
