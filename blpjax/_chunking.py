"""Bounded memory for large I×J problems: markets in chunks, gradient in two passes.

A vmapped objective holds every market's I×J arrays at once (exp(μ), choice probabilities, the
implicit derivative's linearisation), and reverse-mode differentiation keeps them all alive until
the backward pass: several T×I×J float64 arrays. Here markets are processed ``batch_size`` at a
time with ``jax.lax.map`` (a ``scan`` over chunks, each chunk vmapped), and the gradient is formed
without differentiating through that loop:

1. forward: δ_t(θ) for every chunk (contraction, no derivative), ḡ_δ = Σ_t Z̃_t'δ_t/N, q;
2. backward: with λ = ∂q/∂ḡ_δ (an M-vector), ∂q/∂θ = Σ_t (Z̃_t λ/N)' ∂δ_t/∂θ, each chunk's term a
   vector-Jacobian product through the implicit-function-theorem derivative at the δ_t found in
   pass 1 (no contraction is rerun), accumulated chunk by chunk.

Peak memory is then the data plus O(batch_size · I · J), not O(T · I · J). The result equals
``jax.value_and_grad`` of :func:`blpjax._objective.objective` to rounding. Each chunk's contraction
also stops when the chunk's slowest market converges rather than the slowest market of all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._contraction import ContractionConfig, FixedPoint
from ._gmm import Concentration, instrument_moments
from ._implicit import Market, Theta, delta_at_solution, solve_delta
from ._logit import logit_delta
from ._objective import Evaluation, Setup


def _map(f, xs, batch_size: int | None):
    """``jax.lax.map`` in chunks of ``batch_size`` markets (one vmap over all when None)."""
    if batch_size is None:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=batch_size)


def _solve_one(theta: Theta, market: Market, shares, mask, delta0, config: ContractionConfig, K2: int) -> FixedPoint:
    if K2 == 0:
        rho = theta.rho if theta.nested else None
        zero = jnp.zeros((), jnp.int32)
        return FixedPoint(logit_delta(shares, mask, market.nest_ids, rho), zero, zero)
    return solve_delta(theta, market, delta0, config)


def _delta_at(theta: Theta, market: Market, shares, mask, delta, K2: int):
    """δ at a known solution, with the first-order implicit derivative in θ."""
    if K2 == 0:
        rho = theta.rho if theta.nested else None
        return logit_delta(shares, mask, market.nest_ids, rho)
    return delta_at_solution(theta, market, delta)


def chunked_solve_deltas(
    theta: Theta,
    setup: Setup,
    delta0: Float[Array, "T J"],
    config: ContractionConfig,
    batch_size: int | None,
) -> FixedPoint:
    """:func:`blpjax._objective.solve_deltas` with markets solved ``batch_size`` at a time.

    Differentiable (through ``scan``), but reverse mode then stores every chunk's residuals;
    use :func:`chunked_value_and_grad` for a gradient in bounded memory.
    """

    def one(args):
        market, shares, mask, d0 = args
        return _solve_one(theta, market, shares, mask, d0, config, setup.K2)

    return _map(one, (setup.market, setup.shares, setup.mask, delta0), batch_size)


def chunked_objective(
    theta: Theta,
    setup: Setup,
    conc: Concentration,
    delta0: Float[Array, "T J"],
    config: ContractionConfig,
    batch_size: int | None = None,
) -> tuple[Array, Evaluation]:
    """q(θ) as :func:`blpjax._objective.objective`, markets solved ``batch_size`` at a time."""
    fp = chunked_solve_deltas(theta, setup, delta0, config, batch_size)
    g_delta = instrument_moments(setup.Z, fp.x, setup.mask, setup.N)
    g = conc.C @ g_delta
    q = setup.N * g @ conc.W @ g
    return q, Evaluation(fp.x, fp.evaluations, fp.status, g_delta)


def q_of_moments(g_delta: Float[Array, " M"], conc: Concentration, N: int) -> Array:
    """q = N ḡ'Wḡ with ḡ = C ḡ_δ (β concentrated out), as in the objective."""
    g = conc.C @ g_delta
    return N * g @ conc.W @ g


def moments_vjp(
    unpack,
    x: Float[Array, " P"],
    setup: Setup,
    delta: Float[Array, "T J"],
    lam: Float[Array, " M"],
    batch_size: int | None,
) -> Float[Array, " P"]:
    """λ' ∂ḡ_δ/∂x = Σ_t (Z̃_t λ/N)' ∂δ_t/∂x, accumulated ``batch_size`` markets at a time.

    Args:
        unpack: x ↦ :class:`Theta` (e.g. ``ParameterSpec.unpack``).
        x: the packed nonlinear parameters.
        setup: the θ-independent arrays.
        delta: δ solving the share equations at x (from a forward pass).
        lam: cotangent of the moment vector ḡ_δ.
        batch_size: markets per chunk (None: all at once).
    """
    cot = jnp.where(setup.mask, setup.Z @ lam, 0.0) / setup.N  # (T, J)

    def one(args):
        market, shares, mask, d, c = args
        _, pullback = jax.vjp(lambda y: _delta_at(unpack(y), market, shares, mask, d, setup.K2), x)
        return pullback(c)[0]

    per_market = _map(one, (setup.market, setup.shares, setup.mask, delta, cot), batch_size)
    return jnp.sum(per_market, axis=0)


def chunked_value_and_grad(
    unpack,
    config: ContractionConfig,
    x: Float[Array, " P"],
    delta0: Float[Array, "T J"],
    conc: Concentration,
    setup: Setup,
    batch_size: int | None = None,
) -> tuple[Array, Float[Array, " P"], Evaluation]:
    """(q, ∂q/∂x, Evaluation) in memory bounded by ``batch_size`` markets' I×J arrays.

    Drop-in for ``blpjax._estimate._value_and_grad(spec, config, x, d0, conc, setup)`` with
    ``unpack = spec.unpack``; jit it with ``unpack``, ``config`` and ``batch_size`` static.
    """
    theta = unpack(x)
    q, ev = chunked_objective(jax.lax.stop_gradient(theta), setup, conc, delta0, config, batch_size)
    lam = jax.grad(q_of_moments)(ev.g_delta, conc, setup.N)
    grad = moments_vjp(unpack, x, setup, ev.delta, lam, batch_size)
    return q, grad, ev
