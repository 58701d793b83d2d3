"""The numerical core of optimal micro moments (Conlon & Gortmaker 2025): scores of micro observations.

A micro dataset d samples observations n = (market t_n, first choice j_n[, second choice k_n])
with probability

    P_n = Σ_{i∈I_n} w_i s_{i j_n t_n} w_{d i j_n t_n} / Σ_{t∈T_d} Σ_i w_it Σ_j s_ijt w_dijt,

where the rows i ∈ I_n (weights w_i, nodes ν_i, the observation's demographics) integrate its
unobserved heterogeneity and the denominator runs over the problem's agents in the dataset's
markets (PyBLP sums over the markets that appear in the micro data instead; the two agree when
the micro data cover every market of the dataset). The score of an observation is S_n = ∂ log P_n/∂θ, a total derivative through δ(θ)
(implicit function theorem, :func:`._engine.deltas_at_solution`). The mean score of the
observed micro data is the observed value of the *optimal* micro moment for each parameter; its
model analogue averages the *agent scores* (every agent of the problem and every choice treated
as an observation) with the dataset's weights: at θ̂ that average is exactly zero when each agent
is its own observation, which is the information equality E[S] = 0 in the sample.

Numerical core (pure JAX): :class:`Observations` holds padded groups of rows (padded rows have
zero weight and are inert); :func:`score_terms` returns the numerators Σ_i w_i s_i w_di, the
denominator, and their derivatives, by forward-mode autodiff per observation over
δ_t(x) = δ̂_t + (dδ_t/dx)(x − x̂), which carries the exact first derivative of δ(θ) (one J×J
solve per market, computed once). Choice probabilities, second choices and RCNL come from
:func:`._micro.choice_probabilities`, the function micro moments use.

Front (pandas): :func:`micro_scores`, :func:`agent_scores`, :func:`simulate_micro_data`,
:func:`optimal_micro_moments` (also :class:`Results` methods) and :func:`results_at`, a
:class:`Results` at given parameters without optimising.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._base.config import jit
from .._micro.core import MicroMarket, choice_probabilities
from .._model.market import Market
from .._model.params import ParameterSpec
from .pieces import deltas_at_solution

_BATCH = 64  # observations per vectorised batch of the per-observation map


class Observations(eqx.Module):
    """N micro observations, each a group of R rows i ∈ I_n (padded rows have zero weight).

    Attributes:
        t: market positions t_n on the problem's market axis.
        weights: integration weights w_i of the rows, 0 on padding.
        nodes: unobserved tastes ν_i of the rows.
        demographics: demographics of the rows (the problem's ``demographics`` order).
        agents: columns the survey-weights function sees as ``m.agents`` (each ``(N, R)``).
        first: position j_n on the weights' axis 1 (padded; −1 keeps every choice).
        second: position k_n on the weights' axis 2 (second-choice datasets; else ignored).
    """

    t: Int[Array, " N"]
    weights: Float[Array, "N R"]
    nodes: Float[Array, "N R K2"]
    demographics: Float[Array, "N R D"]
    agents: dict[str, Float[Array, "N R"]]
    first: Int[Array, " N"]
    second: Int[Array, " N"]


class Context(eqx.Module):
    """θ̂, δ̂ and dδ/dx of every market, with the market data (batched over T).

    Attributes:
        x: the free parameters x̂.
        delta: δ̂ (T, J), solving the share equations at x̂.
        ddelta: dδ/dx (T, J, P) by the implicit function theorem.
        market: the problem's :class:`._implicit.Market` (its agents), batched over T.
        products: product columns for survey-weights functions, each (T, J).
        X1: (T, J, K1) linear characteristics.
    """

    x: Float[Array, " P"]
    delta: Float[Array, "T J"]
    ddelta: Float[Array, "T J P"]
    market: Market
    products: dict[str, Float[Array, "T J"]]
    X1: Float[Array, "T J K1"]


def _take(tree, t):
    return jax.tree_util.tree_map(lambda a: a[t], tree)


def _delta_t(x, ctx: Context, t):
    """δ_t(x) = δ̂_t + (dδ_t/dx)(x − x̂): exact value and first derivative at x̂."""
    return ctx.delta[t] + ctx.ddelta[t] @ (x - ctx.x)


def _numerator(x, obs: Observations, ctx: Context, spec: ParameterSpec, weights_fn: Callable, flags, select: bool):
    """Σ_{i∈I_n} w_i s_i(·) w_di(·) of one observation: the selected choice, or every choice."""
    theta = spec.unpack(x)
    t = obs.t
    m = _take(ctx.market, t)
    market = Market(
        m.X2, obs.nodes, obs.demographics, obs.weights, m.log_shares, m.mask, m.nest_ids, epsilon_scale=m.epsilon_scale
    )
    view = _view(obs, ctx)
    probs = choice_probabilities(_delta_t(x, ctx, t), theta, market, *flags)
    real = obs.weights > 0
    shape = (-1,) + (1,) * (probs.ndim - 1)
    survey = jnp.where(real.reshape(shape), weights_fn(view), 0.0)  # padded rows: inert even if fn gives NaN
    contrib = jnp.sum(obs.weights.reshape(shape) * survey * probs, axis=0)
    if not select:
        return contrib
    if probs.ndim == 3:
        return contrib[obs.first, obs.second]
    return contrib[obs.first]


def _denominator(x, ctx: Context, markets, survey, spec: ParameterSpec, flags):
    """Σ_{t∈T_d} Σ_i w_it Σ_j s_ijt w_dijt over the problem's agents."""
    theta = spec.unpack(x)

    def one(t, w):
        m = _take(ctx.market, t)
        probs = choice_probabilities(_delta_t(x, ctx, t), theta, m, *flags)
        agent_w = m.weights.reshape((-1,) + (1,) * (probs.ndim - 1))
        return jnp.sum(agent_w * w * probs)

    return jnp.sum(jax.vmap(one)(markets, survey))


def _value_and_jacobian(f, x):
    def both(y):
        v = f(y)
        return v, v

    jac, value = jax.jacfwd(both, has_aux=True)(x)
    return value, jac


@partial(jit, once=True, static_argnames=("spec", "weights_fn", "flags", "select"))
def score_terms(
    obs: Observations,
    ctx: Context,
    markets: Int[Array, " Td"],
    survey: Array,
    *,
    spec: ParameterSpec,
    weights_fn: Callable,
    flags: tuple[bool, bool, bool],
    select: bool,
):
    """Numerators, denominator and their derivatives with respect to the free parameters.

    Args:
        obs: the observations.
        ctx: θ̂, δ̂, dδ/dx and the markets.
        markets: positions of the dataset's markets.
        survey: the dataset's weights on the problem's agents, ``(T_d, I, A[, B])``.
        spec: the parameter structure.
        weights_fn: the dataset's weights function (evaluated on each observation's rows).
        flags: (outside_first, second, outside_second) of the dataset's weights.
        select: keep only each observation's choice (else every choice).

    Returns:
        ``(num, dnum, den, dden)``: num ``(N,)`` or ``(N, A[, B])``, dnum with a trailing P axis,
        den a scalar, dden ``(P,)``.
    """
    x = ctx.x
    N = obs.t.shape[0]
    padded = -N % _BATCH  # inert observations (zero weight) so that every batch has the same shape

    def pad(a):
        return jnp.concatenate([a, jnp.zeros((padded,) + a.shape[1:], a.dtype)])

    obs = jax.tree_util.tree_map(pad, obs)

    def one(o):
        return _value_and_jacobian(lambda y: _numerator(y, o, ctx, spec, weights_fn, flags, select), x)

    num, dnum = jax.lax.map(one, obs, batch_size=_BATCH)
    num, dnum = num[:N], dnum[:N]
    den, dden = _value_and_jacobian(lambda y: _denominator(y, ctx, markets, survey, spec, flags), x)
    return num, dnum, den, dden


def scores_from_terms(num, dnum, den, dden, missing=np.nan) -> np.ndarray:
    """S = ∂num/num − ∂den/den (trailing axis P), ``missing`` where num = 0 (P_n = 0)."""
    num, dnum = np.asarray(num), np.asarray(dnum)
    positive = num > 0
    safe = np.where(positive, num, 1.0)
    S = dnum / safe[..., None] - np.asarray(dden) / float(den)
    return np.where(positive[..., None], S, missing)


@partial(jit, once=True, inline=True, static_argnums=(0,))
def _ddelta(spec: ParameterSpec, setup, x, delta):
    return jax.jacfwd(lambda y: deltas_at_solution(spec.unpack(y), setup, delta))(x)


@partial(jit, once=True, inline=True, static_argnums=(0, 4))
def _weighted_probabilities(spec: ParameterSpec, ctx: Context, markets, survey, flags):
    """w_it s_ijt w_dijt at θ̂ on the problem's agents, ``(T_d, I, A[, B])``."""
    theta = spec.unpack(ctx.x)

    def one(t, w):
        m = _take(ctx.market, t)
        probs = choice_probabilities(ctx.delta[t], theta, m, *flags)
        agent_w = m.weights.reshape((-1,) + (1,) * (probs.ndim - 1))
        return agent_w * w * probs

    return jax.vmap(one)(markets, survey)


def _view(obs: Observations, ctx: Context) -> MicroMarket:
    """The :class:`MicroMarket` of one observation: its market's products, its rows as agents."""
    t = obs.t
    mask = ctx.market.mask[t]
    return MicroMarket(
        _take(ctx.products, t),
        obs.agents,
        ctx.X1[t],
        ctx.market.X2[t],
        obs.demographics,
        obs.nodes,
        obs.weights,
        mask,
        t,
        mask.shape[0],
        obs.weights.shape[0],
    )
