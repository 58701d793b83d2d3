"""Micro moments (Conlon & Gortmaker 2025) as pure functions of (θ, δ): the numerical core.

A micro dataset d gives survey weights w_dijt; a part p of it gives values v_pijt of the same
shape; the model analogue of the part is

    v_p(θ) = Σ_t Σ_i w_it Σ_j s_ijt w_dijt v_pijt / Σ_t Σ_i w_it Σ_j s_ijt w_dijt,

pooled over the dataset's markets, and a micro moment is ḡ_m = observed_m − f_m(v) for a smooth f
(a ratio, a covariance, ...). Shapes of w_dijt per market (outside good first wherever it appears):

- ``(I, J)`` / ``(I, 1+J)``: first choices, without / with the outside good;
- ``(I, J, J)``, ``(I, 1+J, J)``, ``(I, J, 1+J)``, ``(I, 1+J, 1+J)``: first choice j (axis 1) and
  second choice k (axis 2). The probability of (j, k) is s_ik(−j) − s_ik, the rise in k's
  choice probability when j leaves the choice set (= s_ij s_ik(−j) in the logit; recomputed
  exactly with j removed under RCNL), as in PyBLP.

Weights and values do not depend on θ: they are evaluated once (:mod:`._micro_data`) and
travel here as arrays. Everything θ-dependent is a JAX function of (θ, δ(θ)), so the total
derivative dv/dθ, including dδ/dθ through the implicit contraction, comes from autodiff:
per market the cost is linear in I·J (second-choice datasets excepted, whose weights are
I·J·J by definition); no J×J×I tensor of ∂s_ij/∂δ_k is formed.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._model.market import Market, Theta, market_factored, market_mu
from .._model.shares import choice, column_sums


class MicroMarket(eqx.Module):
    """What a weights or values function sees: one market's padded data (J products, I agents).

    Attributes:
        products: every numeric ``product_data`` column by name, each ``(J,)``.
        agents: every numeric ``agent_data`` column by name, each ``(I,)``.
        X1, X2: the linear and nonlinear characteristics, ``(J, K1)`` and ``(J, K2)``.
        demographics: ``(I, D)``, in the problem's ``demographics`` order.
        nodes: ``(I, K2)``; weights: agent integration weights ``(I,)``.
        mask: True for real products (padding is harmless: padded products have zero probability
            and padded agents zero weight).
        t: the market's position on the problem's market axis (lets a function look up per-market
            arrays, e.g. agent scores for optimal micro moments).
        J, I: padded numbers of products and agents (the shapes to return).
    """

    products: dict[str, Float[Array, " J"]]
    agents: dict[str, Float[Array, " I"]]
    X1: Float[Array, "J K1"]
    X2: Float[Array, "J K2"]
    demographics: Float[Array, "I D"]
    nodes: Float[Array, "I K2"]
    weights: Float[Array, " I"]
    mask: Bool[Array, " J"]
    t: Int[Array, ""]
    J: int = eqx.field(static=True)
    I: int = eqx.field(static=True)


class DatasetSpec(eqx.Module):
    """A micro dataset's static description (part of the compiled program).

    Attributes:
        outside_first: axis 1 of the weights includes the outside good (A = 1 + J).
        second: weights have a second-choice axis.
        outside_second: the second-choice axis includes the outside good (B = 1 + J).
        observations: N_d, the number of survey observations.
        parts: P_d, the number of the dataset's parts.
        factored_values: every part's values are an outer product per market, v_pij = a_pi b_pj (a
            demographic times a product characteristic, the common case; first choices only): the
            objective reads O(I·A) numbers per part and market instead of the dense values.
        factored_weights: ``factored_values`` and the weights are w_dij = c_i d_j in every market (all
            ones, an agent group times a product set, ...): the probabilities are then only multiplied
            by the P + 1 columns d ⊙ b_p, d, and no weights array is kept.
        markets: positions of the markets the survey covers on the problem's market axis.
        full: the survey covers every market: its arrays have the problem's market axis and its terms are
            part of every market's contribution; otherwise its arrays are compact (one row per market it
            covers, in ``markets`` order) and its terms are computed for those markets only.
    """

    outside_first: bool = eqx.field(static=True)
    second: bool = eqx.field(static=True)
    outside_second: bool = eqx.field(static=True)
    observations: int = eqx.field(static=True)
    parts: int = eqx.field(static=True)
    factored_values: bool = eqx.field(static=True, default=False)
    factored_weights: bool = eqx.field(static=True, default=False)
    markets: tuple[int, ...] = eqx.field(static=True, default=())
    full: bool = eqx.field(static=True, default=True)


class DatasetMarket(eqx.Module):
    """One micro dataset's θ-independent arrays in one market (a leading axis when batched: every market of
    the problem for a survey of all markets, else the survey's own markets).

    Attributes:
        weights: survey weights w_dijt, ``(I, A)`` or ``(I, A, B)`` (None with factored weights).
        values: the dataset's parts' values, ``(P_d, I, A[, B])`` (None with factored values).
        a, b: the factors of the values, ``(P_d, I)`` and ``(P_d, A)`` (None unless factored).
        c, d: the factors of the weights, ``(I,)`` and ``(A,)`` (None unless factored).
    """

    weights: Array | None = None
    values: Array | None = None
    a: Array | None = None
    b: Array | None = None
    c: Array | None = None
    d: Array | None = None

    def dense_values(self) -> Array:
        """The values v_pij, from their factors when factored (``(..., P_d, I, A[, B])``)."""
        if self.values is not None:
            return self.values
        return self.a[..., :, :, None] * self.b[..., :, None, :]

    def dense_weights(self) -> Array:
        """The weights w_dij, from their factors when factored."""
        if self.weights is not None:
            return self.weights
        return self.c[..., :, None] * self.d[..., None, :]


class MicroSetup(eqx.Module):
    """Everything the objective needs to evaluate micro moments.

    Attributes:
        datasets: one :class:`DatasetMarket` per dataset, batched over its markets (all T markets when
            ``specs[d].full``, else the markets ``specs[d].markets``).
        observed: observed values of the moments.
        specs: one :class:`DatasetSpec` per dataset.
        parts: for each part (global order), ``(dataset position, position within the dataset)``.
        moments: for each moment, the global positions of its parts.
        functions: for each moment, f mapping the vector of its parts' values to a scalar.
    """

    datasets: tuple[DatasetMarket, ...]
    observed: Float[Array, " MM"]
    specs: tuple[DatasetSpec, ...] = eqx.field(static=True)
    parts: tuple[tuple[int, int], ...] = eqx.field(static=True)
    moments: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    functions: tuple[Callable, ...] = eqx.field(static=True)

    @property
    def MM(self) -> int:
        return len(self.moments)


def _exp_masked(log_p, keep):
    return jnp.where(keep, jnp.exp(jnp.where(keep, log_p, 0.0)), 0.0)


def first_choice_probabilities(delta: Float[Array, " J"], theta: Theta, market: Market):
    """(Pᵀ, P0): inside choice probabilities products by agents, ``(J, I)`` (0 on padding), and the outside good's
    ``(I,)``.

    The objective computes them once per market and hands them to the supply side and the micro moments, so that
    one evaluation has one forward and one reverse pass through them. Without nesting they come from exp(μ) in the
    layout of the share inversion (:class:`.shares.FactoredMarket`): the same μ and exp(μ) as the contraction's and
    its implicit derivative's, which XLA forms once, where the log-space (I, J) form computed μ a second time.
    """
    if theta.nested:
        P, P0 = _first_choices(delta, theta, market)[3:]
        return P.T, P0
    return market_factored(theta, market).choices_t(delta)


def _first_choices(delta, theta: Theta, market: Market):
    """μ, log P (I×J), log-sum-exp (I,), P (0 on padding) and P0 of one market."""
    mu_ = market_mu(theta, market)
    rho = theta.rho if theta.nested else None
    log_p, lse = choice(delta, mu_, market.mask, market.nest_ids, rho, market.epsilon_scale)
    return mu_, log_p, lse, _exp_masked(log_p, market.mask[None, :]), jnp.exp(-lse)


def choice_probabilities(
    delta: Float[Array, " J"],
    theta: Theta,
    market: Market,
    outside_first: bool,
    second: bool,
    outside_second: bool,
) -> Array:
    """Per-agent probabilities of the choices a dataset observes, shaped like its weights.

    First choices: s_ij (with s_i0 in column 0 when ``outside_first``). Second choices: the
    probability of first choice j then second choice k, s_ik(−j) − s_ik (0 when k = j).
    """
    mask = market.mask
    rho = theta.rho if theta.nested else None
    mu_, log_p, lse, P, P0 = _first_choices(delta, theta, market)  # P (I, J), P0 (I,)
    Pf = jnp.concatenate([P0[:, None], P], axis=1)  # (I, 1+J), outside first
    if not second:
        return Pf if outside_first else P
    J = delta.shape[0]
    if not theta.nested:
        # s_ik(-j) - s_ik = s_ij s_ik / (1 - s_ij) over the full choice set {0} ∪ J
        log_pf = jnp.concatenate([-lse[:, None], jnp.where(mask[None, :], log_p, -jnp.inf)], axis=1)
        one_minus = -jnp.expm1(jnp.minimum(log_pf, 0.0))
        D = Pf[:, :, None] * Pf[:, None, :] / jnp.where(one_minus > 0, one_minus, 1.0)[:, :, None]
    else:

        def eliminated(j):
            keep = mask & (jnp.arange(J) != j)
            lp, ls = choice(delta, mu_, keep, market.nest_ids, rho, market.epsilon_scale)
            return jnp.concatenate([jnp.exp(-ls)[:, None], _exp_masked(lp, keep[None, :])], axis=1)

        after = jax.vmap(eliminated)(jnp.arange(J))  # (J, I, 1+J): choice probabilities with j removed
        inside_rows = jnp.moveaxis(after - Pf[None], 0, 1)  # (I, J, 1+J)
        # removing the outside good (its own nest) scales every inside probability by 1/(1 - s_i0)
        outside_row = P * (P0 / jnp.maximum(1.0 - P0, 1e-300))[:, None]
        outside_row = jnp.concatenate([jnp.zeros_like(P0)[:, None], outside_row], axis=1)
        D = jnp.concatenate([outside_row[:, None, :], inside_rows], axis=1)
        D = jnp.where(D > 0, D, 0.0)  # rounding below zero, as PyBLP truncates
        D = D * jnp.concatenate([jnp.ones(1, bool), mask])[None, :, None]
    D = D * (1.0 - jnp.eye(J + 1))[None]
    rows = slice(0, None) if outside_first else slice(1, None)
    cols = slice(0, None) if outside_second else slice(1, None)
    return D[:, rows, cols]


def _first_choice_products(probs, outside_first: bool, B):
    """Σ_j s_ij B_kj for the rows k of B, ``(I, K)``, without forming the (I, 1+J) probabilities (``probs``: the
    products-by-agents (Pᵀ, P0) of :func:`first_choice_probabilities`)."""
    Pt, P0 = probs
    if not outside_first:
        return column_sums(Pt, B.T)
    return P0[:, None] * B[:, 0][None, :] + column_sums(Pt, B[:, 1:].T)


def _factored_terms(probs, market, spec: DatasetSpec, second_moments: bool, arrays: DatasetMarket):
    """:func:`dataset_market_terms` when values (a_pi b_pj) and weights (c_i d_j) are outer products.

    Σ_ij w_i c_i d_j s_ij a_pi b_pj = Σ_i w_i c_i a_pi (Σ_j s_ij d_j b_pj): the probabilities are read
    once, against the P + 1 rows d ⊙ b_p and d (and the P² rows d ⊙ b_p b_q for second moments).
    """
    a, b, c, d = arrays.a, arrays.b, arrays.c, arrays.d  # (P, I), (P, A), (I,), (A,)
    P = a.shape[0]
    u = market.weights * c  # (I,)
    rows = jnp.concatenate([b, jnp.ones((1, b.shape[1]), b.dtype)]) * d[None, :]
    G = _first_choice_products(probs, spec.outside_first, rows)  # (I, P + 1)
    num = jnp.sum(a * (u[:, None] * G[:, :P]).T, axis=1)
    den = u @ G[:, P]
    if not second_moments:
        return num, den, None
    a2 = (a[:, None, :] * a[None, :, :]).reshape(P * P, -1)
    b2 = (b[:, None, :] * b[None, :, :]).reshape(P * P, -1)
    G2 = _first_choice_products(probs, spec.outside_first, b2 * d[None, :])  # (I, P²)
    return num, den, jnp.sum(a2 * (u[:, None] * G2).T, axis=1).reshape(P, P)


def dataset_market_terms(
    delta, theta: Theta, market: Market, arrays: DatasetMarket, spec: DatasetSpec, second_moments: bool, probs=None
):
    """One market's Σ ω v_p (numerators, ``(P_d,)``), Σ ω (denominator) and optionally Σ ω v_p v_q.

    ω_ij = w_i s_ij w_dij is the weight of a choice in the survey. ``probs``: the market's
    :func:`first_choice_probabilities` when the caller already has them (factored weights only).
    """
    if spec.factored_weights:
        if probs is None:
            probs = first_choice_probabilities(delta, theta, market)
        return _factored_terms(probs, market, spec, second_moments, arrays)
    probs = choice_probabilities(delta, theta, market, spec.outside_first, spec.second, spec.outside_second)
    agent_w = market.weights.reshape(market.weights.shape + (1,) * (probs.ndim - 1))
    omega = agent_w * arrays.weights * probs
    den = jnp.sum(omega)
    if spec.factored_values:
        a, b = arrays.a, arrays.b  # (P, I), (P, A): Σ_ij ω_ij a_pi b_pj
        num = jnp.sum(a * (b @ omega.T), axis=1)
        if not second_moments:
            return num, den, None
        # Σ_ij ω_ij v_pij v_qij with v_pij = a_pi b_pj: the same form with the P² products a_p a_q,
        # b_p b_q (no P × I × A values array is read)
        P = a.shape[0]
        a2 = (a[:, None, :] * a[None, :, :]).reshape(P * P, -1)
        b2 = (b[:, None, :] * b[None, :, :]).reshape(P * P, -1)
        return num, den, jnp.sum(a2 * (b2 @ omega.T), axis=1).reshape(P, P)
    values = arrays.values
    axes = tuple(range(omega.ndim))
    num = jnp.sum(omega[None] * values, axis=tuple(a + 1 for a in axes))
    if not second_moments:
        return num, den, None
    flat_v = values.reshape(values.shape[0], -1)
    return num, den, (flat_v * omega.reshape(-1)[None]) @ flat_v.T
