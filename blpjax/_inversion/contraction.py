"""Fixed-point solvers for one market's mean utilities, as pure ``lax.while_loop`` programs.

A solver takes a contraction map x -> g(x) on one market's δ (padded entries must map to
themselves) and returns the fixed point, the number of map evaluations and a :class:`Status`
code. Batched with ``vmap`` over markets, every market keeps its own iterate, counter and flag:
a market that has converged is frozen (its state stops changing) while the others go on, and the
batch stops when the slowest market is done.

Methods: ``"squarem"`` (Varadhan and Roland's SQUAREM, scheme 3 with PyBLP's step bounds),
``"anderson"`` (type-II Anderson acceleration with a short memory), ``"newton"`` (safeguarded Newton steps on
the residual g(x) − x with the exact Jacobian, which the caller supplies with the map) and ``"simple"`` iteration.
Convergence is ‖g(x) − x‖∞ < tol over real products, tol = 1e-14 by default (as in PyBLP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._base.errors import BLPSpecificationError, Status

_METHODS = ("auto", "squarem", "anderson", "newton", "simple")
#: ``method="auto"`` picks Anderson for markets of at least this many (padded) product × agent pairs and SQUAREM below:
#: Anderson needs about half of SQUAREM's evaluations but each of its steps carries a small least-squares problem,
#: which pays once an evaluation is large (warm, Intel 2 cores, 2026-12-02: blp 0.59 s vs 0.84 s, Mixtape 11–33%
#: faster, Petrin 3%; Nevo's 24 × 20 markets 0.43 s vs 0.26 s; benchmarks/README.md "Inner solvers")
AUTO_ANDERSON_PAIRS = 4096
#: after a Newton step is refused (its residual was not smaller), this many plain steps before the next one
_NEWTON_COOL = 3


class ContractionConfig(eqx.Module):
    """How mean utilities are solved for.

    Attributes:
        method: ``"auto"`` (default: ``"anderson"`` for markets of at least 4,096 product × agent pairs,
            ``"squarem"`` below), ``"squarem"``, ``"anderson"``, ``"newton"`` or ``"simple"``.
        tol: absolute tolerance on the ∞-norm of a step.
        max_evaluations: cap on contraction-map evaluations per market.
        anderson_memory: number of past steps Anderson acceleration mixes.
        anderson_max_step: the largest Anderson extrapolation, as a multiple of the plain step's size
            (‖g(x) − x‖∞); longer ones are shortened along their direction.
        logit_start: where the warm start's residual ‖g(δ) − δ‖∞ exceeds ``SECOND_START_RESIDUAL`` (0.1), also
            evaluate the map at the logit δ (the plain-logit inversion of the observed shares) and start the market
            from whichever of the two has the smaller residual: one more evaluation then, against warm starts left
            far off by an optimiser's wild trial step (on Mixtape Exercise 2.5, trust-constr's 10th evaluation: 247
            evaluations from the last δ, 13 from the logit δ). The iteration goes on from the chosen start's plain
            step, so the evaluation at the chosen start is not repeated.
    """

    method: str = eqx.field(static=True, default="auto")
    tol: float = eqx.field(static=True, default=1e-14)
    max_evaluations: int = eqx.field(static=True, default=5000)
    anderson_memory: int = eqx.field(static=True, default=5)
    anderson_max_step: float = eqx.field(static=True, default=10.0)
    logit_start: bool = eqx.field(static=True, default=True)

    def for_market(self, J: int, I: int) -> ContractionConfig:
        """The configuration a market of J products and I agents is solved with (``"auto"`` resolved)."""
        if self.method != "auto":
            return self
        return dataclasses.replace(self, method="anderson" if J * I >= AUTO_ANDERSON_PAIRS else "squarem")

    def __check_init__(self):
        if self.method not in _METHODS:
            raise BLPSpecificationError(f"ContractionConfig.method must be one of {_METHODS}, got {self.method!r}")
        if not isinstance(self.logit_start, bool):
            raise BLPSpecificationError(
                f"ContractionConfig.logit_start must be True or False, not {self.logit_start!r}"
            )
        for name in ("tol", "anderson_max_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise BLPSpecificationError(f"ContractionConfig.{name} must be a positive number, not {value!r}")
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
    # the stall guard of the accelerated methods: the smallest step seen, evaluations since it last fell by
    # a tenth, and whether the method has fallen back to plain steps
    best: Array
    since: Array
    plain: Array


# an accelerated method that has not cut its smallest step by a tenth in this many evaluations falls back to
# plain steps, which the contraction makes converge (far from the solution the map can saturate: with every δ
# large the outside share vanishes and g(δ) = δ + log ΣS shifts δ uniformly with a constant residual, along which
# extrapolation finds no direction of descent)
_STALL_EVALUATIONS = 100


def _init(x0):
    zero = jnp.asarray(0, jnp.int32)
    false = jnp.asarray(False)
    return dict(x=x0, n=zero, done=false, status=zero, best=jnp.asarray(jnp.inf, x0.dtype), since=zero, plain=false)


def _update(state: _State, x_new, x_old, mask, tol, max_evaluations):
    """Account for one map evaluation x_old -> x_new; freeze the state once done."""
    # one reduction for both tests: x_old is finite while the state is live, so the step norm is
    # finite exactly when x_new is (a NaN or ±inf entry makes the max NaN or inf)
    norm = _step_norm(x_new, x_old, mask)
    finite = jnp.isfinite(norm)
    converged = norm < tol
    live = ~state.done
    improved = norm < 0.9 * state.best
    best = jnp.where(live & (norm < state.best), norm, state.best)
    since = jnp.where(live, jnp.where(improved, 0, state.since + 1), state.since)
    plain = state.plain | (since >= _STALL_EVALUATIONS)
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
    return _State(x, n, state.done | newly_done, status, state.extra, best, since, plain)


def _safeguarded(s: _State, reject, gx, x_back, mask, tol, max_evaluations) -> _State:
    """The state after evaluating g at an extrapolated point: accounted as a step to ``gx`` (converged, failed or
    live), or, where ``reject`` (the point did not reduce the residual), an evaluation spent without moving: the
    iteration resumes from ``x_back``, the last accepted point's plain step."""
    accepted = _update(s, gx, s.x, mask, tol, max_evaluations)
    n = s.n + jnp.where(s.done, 0, 1)
    exhausted = n >= max_evaluations
    status = jnp.where(s.done, s.status, jnp.where(exhausted, Status.MAX_EVALUATIONS, s.status))
    since = jnp.where(s.done, s.since, s.since + 1)
    rejected = dataclasses.replace(
        s,
        x=x_back,
        n=n,
        done=s.done | exhausted,
        status=status,
        since=since,
        plain=s.plain | (since >= _STALL_EVALUATIONS),
    )
    return jax.tree_util.tree_map(lambda a, b: jnp.where(reject, a, b), rejected, accepted)


#: the second start is evaluated only where the first start's residual max |g(x₀) − x₀| exceeds this (or is not
#: finite): a warm start that close beats the logit δ, whose residual is of the order of the random coefficients'
#: utilities; the evaluation it saves is most of the cost of a solve from a good (predicted) warm start
SECOND_START_RESIDUAL = 0.1


def _two_starts(g, init: _State, x0, x1, mask, tol, max_evaluations, prime) -> _State:
    """The state after evaluating g at the first start and, where its residual exceeds ``SECOND_START_RESIDUAL``,
    at the second, and taking a plain step from the one with the smaller residual (the evaluations accounted; the
    method's memory primed as after its first iteration from that start). The second evaluation sits in a loop of at
    most one iteration, so that under ``vmap`` it costs nothing when no market of the batch needs it."""
    g0 = g(x0)
    norm0 = _step_norm(g0, x0, mask)
    need = ~(norm0 <= SECOND_START_RESIDUAL)
    _, g1, tried = jax.lax.while_loop(
        lambda c: c[0], lambda c: (jnp.asarray(False), g(x1), jnp.asarray(True)), (need, x1, jnp.asarray(False))
    )
    use1 = tried & jnp.isfinite(_step_norm(g1, x1, mask)) & ~(norm0 <= _step_norm(g1, x1, mask))
    x, gx = jnp.where(use1, x1, x0), jnp.where(use1, g1, g0)
    s = _update(dataclasses.replace(init, x=x), gx, x, mask, tol, max_evaluations)
    n = s.n + tried.astype(s.n.dtype)  # the other start's evaluation
    exhausted = ~s.done & (n >= max_evaluations)
    status = jnp.where(exhausted, Status.MAX_EVALUATIONS, s.status)
    return dataclasses.replace(s, n=n, done=s.done | exhausted, status=status, extra=prime(x, gx))


def fixed_point(
    g: Callable[[Array], Array],
    x0: Float[Array, " J"],
    mask: Bool[Array, " J"],
    config: ContractionConfig,
    newton: Callable[[Array], tuple[Array, Array, Array]] | None = None,
    x_alt: Float[Array, " J"] | None = None,
) -> FixedPoint:
    """Solve x = g(x) for one market. ``newton`` (needed by ``method="newton"``): x ↦ (g(x), the Newton point for the
    fixed point's equations, whether it may be used), from one evaluation. ``x_alt``: a second start; the map is
    evaluated at both and the iteration goes on from the plain step of the one with the smaller residual (ties and
    a non-finite residual at ``x_alt`` keep ``x0``)."""
    if config.method == "auto":  # a caller that does not know the market's size: SQUAREM
        config = dataclasses.replace(config, method="squarem")
    tol, max_ev = config.tol, config.max_evaluations
    x0 = jnp.where(mask, x0, 0.0)
    zero = jnp.asarray(0, jnp.int32)
    if config.method == "newton":
        if newton is None:
            raise BLPSpecificationError("method='newton' needs the map's Newton step (this solve does not supply it).")
        # the exact Jacobian at every step (a chord variant, factorised once per solve, needed 4–8 times the
        # evaluations from estimation's warm starts: measured on Nevo and Mixtape, 2026-12-01)

        def body(s: _State):
            norm_prev, g_prev, from_newton, cool = s.extra
            gx, y, usable = newton(s.x)
            norm = _step_norm(gx, s.x, mask)
            # safeguard: a Newton point whose residual is not smaller than its predecessor's is refused, and the
            # iteration goes on from the predecessor's plain step g(x_prev) (which the contraction makes smaller),
            # with plain steps for a while; a plain step is never refused
            reject = from_newton & ~(norm < norm_prev)
            s1 = _safeguarded(s, reject, gx, g_prev, mask, tol, max_ev)
            use = ~reject & (cool == 0) & usable & _finite(y, mask) & ~s1.plain
            x_next = jnp.where(s1.done, s1.x, jnp.where(reject, g_prev, jnp.where(use, jnp.where(mask, y, s.x), gx)))
            extra = (
                jnp.where(reject, norm_prev, norm),
                jnp.where(reject, g_prev, gx),
                use,
                jnp.where(reject, _NEWTON_COOL, jnp.maximum(cool - 1, 0)),
            )
            return dataclasses.replace(s1, x=x_next, extra=extra)

        inf = jnp.asarray(jnp.inf, x0.dtype)
        init = _State(**_init(x0), extra=(inf, x0, jnp.asarray(False), zero))

        def prime(x, gx):
            return (_step_norm(gx, x, mask), gx, jnp.asarray(False), zero)

    elif config.method == "simple":

        def body(s: _State):
            return _update(s, g(s.x), s.x, mask, tol, max_ev)

        init = _State(**_init(x0), extra=())

        def prime(x, gx):
            return ()

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
            alpha = jnp.where(s.plain, -1.0, alpha)  # α = −1: x3 = x2, three plain steps
            step_max = jnp.where(-alpha == step_max, step_max * 4.0, step_max)
            x3 = x0_ - 2.0 * alpha * r + alpha**2 * v
            x3 = jnp.where(_finite(x3, mask), x3, x2)
            x4 = g(x3)
            s3 = _update(s2, x4, x3, mask, tol, max_ev)
            return dataclasses.replace(s3, extra=(jnp.where(s2.done, s.extra[0], step_max),))

        init = _State(**_init(x0), extra=(jnp.asarray(1.0, x0.dtype),))

        def prime(x, gx):
            return init.extra

    else:  # anderson: type II with memory m, a tiny ridge, and a restart safeguard
        m, max_step = config.anderson_memory, config.anderson_max_step
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
            s1 = _safeguarded(s, reject, gx, g_last, mask, tol, max_ev)
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
            step = -(dG * filled[None, :]) @ gamma
            # a bounded extrapolation: at most ``anderson_max_step`` times the plain step. Far from the solution the
            # map saturates (all δ large: the outside good's share vanishes, g(δ) = δ + log ΣS, a uniform shift with
            # a constant residual) and an unbounded step along the shift lands there with a residual as small as
            # the current one, which the residual test cannot refuse (found on Mixtape Exercise 2.5: δ ≈ 7,800)
            size = jnp.max(jnp.where(mask, jnp.abs(step), 0.0))
            scale = jnp.minimum(1.0, max_step * norm / jnp.where(size > 0, size, 1.0))
            x_new = gx + scale * step
            extrapolated = (count > 0) & _finite(x_new, mask) & ~s1.plain
            x_new = jnp.where(mask, jnp.where(extrapolated, x_new, gx), s.x)
            x_next = jnp.where(s1.done, s1.x, jnp.where(reject, g_last, x_new))
            last = (
                jnp.where(reject, f_last, f),
                jnp.where(reject, g_last, gx),
                jnp.where(reject, norm_last, norm),
            )
            extra = (dF, dG, count, *last, valid | ~reject, ~reject & extrapolated)
            return dataclasses.replace(s1, x=x_next, extra=extra)

        z = jnp.zeros((J, m), x0.dtype)
        inf = jnp.asarray(jnp.inf, x0.dtype)
        false = jnp.asarray(False)
        extra = (z, z, zero, jnp.zeros_like(x0), x0, inf, false, false)
        init = _State(**_init(x0), extra=extra)

        def prime(x, gx):  # the memory after one plain step from x (the body's first iteration)
            f = jnp.where(mask, gx - x, 0.0)
            return (z, z, zero, f, gx, jnp.max(jnp.abs(f)), jnp.asarray(True), false)

    if x_alt is not None:
        init = _two_starts(g, init, x0, jnp.where(mask, x_alt, 0.0), mask, tol, max_ev, prime)

    out = jax.lax.while_loop(lambda s: ~s.done, body, init)
    return FixedPoint(out.x, out.n, out.status)
