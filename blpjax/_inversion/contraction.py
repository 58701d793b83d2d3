"""Fixed-point solvers for one market's mean utilities, as pure ``lax.while_loop`` programs.

A solver takes a contraction map x -> g(x) on one market's δ (padded entries must map to
themselves) and returns the fixed point, the number of map evaluations and a :class:`Status`
code. Batched with ``vmap`` over markets, every market keeps its own iterate, counter and flag:
a market that has converged is frozen (its state stops changing) while the others go on, and the
batch stops when the slowest market is done.

Methods: ``"squarem"`` (Varadhan and Roland's SQUAREM, scheme 3 with PyBLP's step bounds),
``"anderson"`` (type-II Anderson acceleration with a short memory) and ``"simple"`` iteration.
Convergence is ‖g(x) − x‖∞ < tol over real products, tol = 1e-14 by default (as in PyBLP).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._base.errors import BLPSpecificationError, Status

_METHODS = ("squarem", "anderson", "simple")


class ContractionConfig(eqx.Module):
    """How mean utilities are solved for.

    Attributes:
        method: ``"squarem"`` (default), ``"anderson"`` or ``"simple"``.
        tol: absolute tolerance on the ∞-norm of a step.
        max_evaluations: cap on contraction-map evaluations per market.
        anderson_memory: number of past steps Anderson acceleration mixes.
    """

    method: str = eqx.field(static=True, default="squarem")
    tol: float = eqx.field(static=True, default=1e-14)
    max_evaluations: int = eqx.field(static=True, default=5000)
    anderson_memory: int = eqx.field(static=True, default=5)

    def __check_init__(self):
        if self.method not in _METHODS:
            raise BLPSpecificationError(f"ContractionConfig.method must be one of {_METHODS}, got {self.method!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, int | float) or not self.tol > 0:
            raise BLPSpecificationError(f"ContractionConfig.tol must be a positive number, not {self.tol!r}")
        for name in ("max_evaluations", "anderson_memory"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BLPSpecificationError(f"ContractionConfig.{name} must be a positive integer, not {value!r}")


class FixedPoint(eqx.Module):
    """Result of one market's solve (fields gain a leading T axis when vmapped)."""

    x: Float[Array, " J"]
    evaluations: Int[Array, ""]
    status: Int[Array, ""]


def _step_norm(new, old, mask):
    return jnp.max(jnp.where(mask, jnp.abs(new - old), 0.0))


def _finite(x, mask):
    return jnp.all(jnp.where(mask, jnp.isfinite(x), True))


class _State(eqx.Module):
    x: Array
    n: Array
    done: Array
    status: Array
    extra: tuple


def _update(state: _State, x_new, x_old, mask, tol, max_evaluations):
    """Account for one map evaluation x_old -> x_new; freeze the state once done."""
    # one reduction for both tests: x_old is finite while the state is live, so the step norm is
    # finite exactly when x_new is (a NaN or ±inf entry makes the max NaN or inf)
    norm = _step_norm(x_new, x_old, mask)
    finite = jnp.isfinite(norm)
    converged = norm < tol
    n = state.n + jnp.where(state.done, 0, 1)
    exhausted = n >= max_evaluations
    status = jnp.where(
        state.done,
        state.status,
        jnp.where(
            ~finite,
            Status.NONFINITE,
            jnp.where(converged, Status.CONVERGED, jnp.where(exhausted, Status.MAX_EVALUATIONS, 0)),
        ),
    )
    newly_done = ~state.done & (~finite | converged | exhausted)
    # keep the last finite iterate on failure; the new one otherwise
    x = jnp.where(state.done | ~finite, state.x, x_new)
    return _State(x, n, state.done | newly_done, status, state.extra)


def fixed_point(
    g: Callable[[Array], Array], x0: Float[Array, " J"], mask: Bool[Array, " J"], config: ContractionConfig
) -> FixedPoint:
    """Solve x = g(x) for one market."""
    tol, max_ev = config.tol, config.max_evaluations
    x0 = jnp.where(mask, x0, 0.0)
    zero = jnp.asarray(0, jnp.int32)
    if config.method == "simple":

        def body(s: _State):
            return _update(s, g(s.x), s.x, mask, tol, max_ev)

        init = _State(x0, zero, jnp.asarray(False), zero, ())
    elif config.method == "squarem":

        def body(s: _State):
            (step_max,) = s.extra
            x0_ = s.x
            x1 = g(x0_)
            s1 = _update(s, x1, x0_, mask, tol, max_ev)
            x2 = g(x1)
            s2 = _update(s1, x2, x1, mask, tol, max_ev)
            r = x1 - x0_
            v = (x2 - x1) - r
            rr = jnp.sum(jnp.where(mask, r * r, 0.0))
            vv = jnp.sum(jnp.where(mask, v * v, 0.0))
            alpha = -jnp.sqrt(rr / jnp.where(vv > 0, vv, 1.0))
            alpha = jnp.where(jnp.isfinite(alpha) & (vv > 0), alpha, -1.0)
            alpha = -jnp.maximum(1.0, jnp.minimum(step_max, -alpha))
            step_max = jnp.where(-alpha == step_max, step_max * 4.0, step_max)
            x3 = x0_ - 2.0 * alpha * r + alpha**2 * v
            x3 = jnp.where(_finite(x3, mask), x3, x2)
            x4 = g(x3)
            s3 = _update(s2, x4, x3, mask, tol, max_ev)
            return _State(s3.x, s3.n, s3.done, s3.status, (jnp.where(s2.done, s.extra[0], step_max),))

        init = _State(x0, zero, jnp.asarray(False), zero, (jnp.asarray(1.0, x0.dtype),))
    else:  # anderson: type II with memory m, a tiny ridge, and a restart safeguard
        m = config.anderson_memory
        J = x0.shape[0]

        def body(s: _State):
            dF, dG, count, f_last, g_last, norm_last, valid, accelerated = s.extra
            gx = g(s.x)
            f = jnp.where(mask, gx - s.x, 0.0)
            norm = jnp.max(jnp.abs(f))
            # safeguard: an extrapolated point whose residual is not finite or larger than the last accepted
            # point's is rejected, and the iteration restarts (empty memory) from that point's plain step
            # g(x_last), which the contraction makes smaller; a plain step is never rejected
            reject = valid & accelerated & ~(norm <= norm_last)
            accepted = _update(s, gx, s.x, mask, tol, max_ev)
            n = s.n + jnp.where(s.done, 0, 1)
            exhausted = n >= max_ev
            status = jnp.where(s.done, s.status, jnp.where(exhausted, Status.MAX_EVALUATIONS, s.status))
            rejected = _State(g_last, n, s.done | exhausted, status, s.extra)
            s1 = jax.tree_util.tree_map(lambda a, b: jnp.where(reject, a, b), rejected, accepted)
            # accepted: push (Δf, Δg) into the memory and extrapolate
            slot = count % m
            push = valid & ~reject
            dF = jnp.where(push, dF.at[:, slot].set(f - f_last), dF)
            dG = jnp.where(push, dG.at[:, slot].set(gx - g_last), dG)
            count = jnp.where(reject, 0, count + push.astype(count.dtype))
            filled = (jnp.arange(m) < jnp.minimum(count, m)).astype(f.dtype)
            dFm = dF * filled[None, :]
            gram = dFm.T @ dFm
            ridge = 1e-12 * jnp.maximum(jnp.trace(gram), 1e-300)
            gamma = jnp.linalg.solve(gram + jnp.diag(ridge + (1.0 - filled)), dFm.T @ f)
            x_new = gx - (dG * filled[None, :]) @ gamma
            extrapolated = (count > 0) & _finite(x_new, mask)
            x_new = jnp.where(mask, jnp.where(extrapolated, x_new, gx), s.x)
            x_next = jnp.where(s1.done, s1.x, jnp.where(reject, g_last, x_new))
            last = (
                jnp.where(reject, f_last, f),
                jnp.where(reject, g_last, gx),
                jnp.where(reject, norm_last, norm),
            )
            extra = (dF, dG, count, *last, valid | ~reject, ~reject & extrapolated)
            return _State(x_next, s1.n, s1.done, s1.status, extra)

        z = jnp.zeros((J, m), x0.dtype)
        inf = jnp.asarray(jnp.inf, x0.dtype)
        false = jnp.asarray(False)
        extra = (z, z, zero, jnp.zeros_like(x0), x0, inf, false, false)
        init = _State(x0, zero, jnp.asarray(False), zero, extra)

    out = jax.lax.while_loop(lambda s: ~s.done, body, init)
    return FixedPoint(out.x, out.n, out.status)
