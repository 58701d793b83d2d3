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
from jaxtyping import Array, Float, Int

from ._implicit import Market, Theta, market_mu
from ._shares import choice


class DatasetArrays(eqx.Module):
    """One micro dataset's θ-independent arrays, over the T_d markets it covers.

    Attributes:
        markets: positions of the dataset's markets in the problem's market axis.
        weights: survey weights w_dijt, ``(T_d, I, A)`` or ``(T_d, I, A, B)``.
        values: the values v_pijt of the dataset's parts, stacked: ``(P_d, T_d, I, A[, B])``.
        outside_first: axis 1 includes the outside good (A = 1 + J).
        second: weights have a second-choice axis.
        outside_second: the second-choice axis includes the outside good (B = 1 + J).
        observations: N_d, the number of survey observations.
        factors: when every part's values are an outer product per market, v_pij = a_pi b_pj (a
            demographic times a product characteristic, the common case), ``(a, b)`` with shapes
            ``(P_d, T_d, I)`` and ``(P_d, T_d, A)``: the objective then reads O(I·A) numbers per part
            and market instead of the dense values (first choices only; ``None`` otherwise).
        weight_factors: likewise ``(c, d)`` with shapes ``(T_d, I)`` and ``(T_d, A)`` when the weights
            are w_dij = c_i d_j in every market (all ones, an agent group times a product set, ...):
            with ``factors`` too, the weights array is not read and the probabilities are only
            multiplied by the P + 1 columns d ⊙ b_p, d (``None`` otherwise).
        all_markets: the dataset covers every market of the problem, in order (no gather).
    """

    markets: Int[Array, " Td"]
    weights: Array
    values: Array
    outside_first: bool = eqx.field(static=True)
    second: bool = eqx.field(static=True)
    outside_second: bool = eqx.field(static=True)
    observations: int = eqx.field(static=True)
    factors: tuple[Array, Array] | None = None
    weight_factors: tuple[Array, Array] | None = None
    all_markets: bool = eqx.field(static=True, default=False)


class MicroSetup(eqx.Module):
    """Everything the objective needs to evaluate micro moments.

    Attributes:
        datasets: one :class:`DatasetArrays` per dataset.
        parts: for each part (global order), ``(dataset position, position within the dataset)``.
        moments: for each moment, the global positions of its parts.
        functions: for each moment, f mapping the vector of its parts' values to a scalar.
        observed: observed values of the moments.
    """

    datasets: tuple[DatasetArrays, ...]
    observed: Float[Array, " MM"]
    parts: tuple[tuple[int, int], ...] = eqx.field(static=True)
    moments: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    functions: tuple[Callable, ...] = eqx.field(static=True)

    @property
    def MM(self) -> int:
        return len(self.moments)


def _exp_masked(log_p, keep):
    return jnp.where(keep, jnp.exp(jnp.where(keep, log_p, 0.0)), 0.0)


def first_choice_probabilities(delta: Float[Array, " J"], theta: Theta, market: Market):
    """(P, P0): inside choice probabilities ``(I, J)`` (0 on padding) and the outside good's ``(I,)``.

    The objective computes them once per market and hands them to the supply side and the micro
    moments, so that one evaluation has one forward pass and one reverse pass through them.
    """
    return _first_choices(delta, theta, market)[3:]


def _first_choices(delta, theta: Theta, market: Market):
    """μ, log P (I×J), log-sum-exp (I,), P (0 on padding) and P0 of one market."""
    mu_ = market_mu(theta, market)
    rho = theta.rho if theta.nested else None
    log_p, lse = choice(delta, mu_, market.mask, market.nest_ids, rho)
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
            lp, ls = choice(delta, mu_, keep, market.nest_ids, rho)
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
    """Σ_j s_ij B_kj for the rows k of B, ``(I, K)``, without forming the (I, 1+J) probabilities."""
    P, P0 = probs
    if not outside_first:
        return P @ B.T
    return P0[:, None] * B[:, 0][None, :] + P @ B[:, 1:].T


def _factored_terms(probs, market, ds: DatasetArrays, second_moments: bool, factors, weight_factors):
    """:func:`_dataset_terms` when values (a_pi b_pj) and weights (c_i d_j) are outer products.

    Σ_ij w_i c_i d_j s_ij a_pi b_pj = Σ_i w_i c_i a_pi (Σ_j s_ij d_j b_pj): the probabilities are read
    once, against the P + 1 rows d ⊙ b_p and d (and the P² rows d ⊙ b_p b_q for second moments).
    """
    a, b = factors  # (P, I), (P, A)
    c, d = weight_factors  # (I,), (A,)
    P = a.shape[0]
    u = market.weights * c  # (I,)
    rows = jnp.concatenate([b, jnp.ones((1, b.shape[1]), b.dtype)]) * d[None, :]
    G = _first_choice_products(probs, ds.outside_first, rows)  # (I, P + 1)
    num = jnp.sum(a * (u[:, None] * G[:, :P]).T, axis=1)
    den = u @ G[:, P]
    if not second_moments:
        return num, den, None
    a2 = (a[:, None, :] * a[None, :, :]).reshape(P * P, -1)
    b2 = (b[:, None, :] * b[None, :, :]).reshape(P * P, -1)
    G2 = _first_choice_products(probs, ds.outside_first, b2 * d[None, :])  # (I, P²)
    return num, den, jnp.sum(a2 * (u[:, None] * G2).T, axis=1).reshape(P, P)


def _dataset_terms(delta, theta, market, weights, values, ds: DatasetArrays, second_moments: bool, factors=None):
    """One market's Σ ω (denominator), Σ ω v_p (numerators) and optionally Σ ω v_p v_q."""
    probs = choice_probabilities(delta, theta, market, ds.outside_first, ds.second, ds.outside_second)
    agent_w = market.weights.reshape(market.weights.shape + (1,) * (probs.ndim - 1))
    omega = agent_w * weights * probs
    den = jnp.sum(omega)
    if factors is not None:
        a, b = factors  # (P, I), (P, A): Σ_ij ω_ij a_pi b_pj
        num = jnp.sum(a * (b @ omega.T), axis=1)
        if not second_moments:
            return num, den, None
        # Σ_ij ω_ij v_pij v_qij with v_pij = a_pi b_pj: the same form with the P² products a_p a_q,
        # b_p b_q (no P × I × A values array is read)
        P = a.shape[0]
        a2 = (a[:, None, :] * a[None, :, :]).reshape(P * P, -1)
        b2 = (b[:, None, :] * b[None, :, :]).reshape(P * P, -1)
        return num, den, jnp.sum(a2 * (b2 @ omega.T), axis=1).reshape(P, P)
    axes = tuple(range(omega.ndim))
    num = jnp.sum(omega[None] * values, axis=tuple(a + 1 for a in axes))
    if not second_moments:
        return num, den, None
    flat_v = values.reshape(values.shape[0], -1)
    second = (flat_v * omega.reshape(-1)[None]) @ flat_v.T
    return num, den, second


def _dataset_sums(theta: Theta, market_batch: Market, deltas, ds: DatasetArrays, second_moments: bool, probs=None):
    if ds.all_markets:
        market, delta = market_batch, deltas
    else:
        market = jax.tree_util.tree_map(lambda a: a[ds.markets], market_batch)
        delta = deltas[ds.markets]
        probs = None if probs is None else (probs[0][ds.markets], probs[1][ds.markets])
    if ds.factors is not None and ds.weight_factors is not None:
        if probs is None:
            probs = jax.vmap(first_choice_probabilities, in_axes=(0, None, 0))(delta, theta, market)
        num, den, second = jax.vmap(
            lambda pr, m, f, wf: _factored_terms(pr, m, ds, second_moments, f, wf),
            in_axes=((0, 0), 0, (1, 1), (0, 0)),
        )(probs, market, ds.factors, ds.weight_factors)
    elif ds.factors is not None:
        num, den, second = jax.vmap(
            lambda d, m, w, f: _dataset_terms(d, theta, m, w, None, ds, second_moments, f),
            in_axes=(0, 0, 0, (1, 1)),
        )(delta, market, ds.weights, ds.factors)
    else:
        num, den, second = jax.vmap(
            lambda d, m, w, v: _dataset_terms(d, theta, m, w, v, ds, second_moments),
            in_axes=(0, 0, 0, 1),
        )(delta, market, ds.weights, ds.values)
    return jnp.sum(num, axis=0), jnp.sum(den), None if second is None else jnp.sum(second, axis=0)


def part_values(theta: Theta, market_batch: Market, deltas: Float[Array, "T J"], micro: MicroSetup, probs=None):
    """Model analogues v_p(θ) of every part, pooled over each dataset's markets.

    ``probs``: :func:`first_choice_probabilities` of every market (batched), when already computed.
    """
    by_dataset = []
    for ds in micro.datasets:
        num, den, _ = _dataset_sums(theta, market_batch, deltas, ds, False, probs)
        by_dataset.append(num / den)
    return jnp.stack([by_dataset[d][k] for d, k in micro.parts])


def moment_values(v: Float[Array, " PM"], micro: MicroSetup) -> Float[Array, " MM"]:
    """f_m(v) for every moment."""
    return jnp.stack(
        [
            jnp.asarray(f(v[jnp.asarray(idx)]), v.dtype).reshape(())
            for idx, f in zip(micro.moments, micro.functions, strict=True)
        ]
    )


def micro_moments(theta: Theta, market_batch: Market, deltas, micro: MicroSetup, probs=None) -> Float[Array, " MM"]:
    """ḡ_M = observed − f(v(θ)), PyBLP's sign convention (``probs`` as in :func:`part_values`)."""
    return micro.observed - moment_values(part_values(theta, market_batch, deltas, micro, probs), micro)


def part_covariances(theta: Theta, market_batch: Market, deltas, micro: MicroSetup) -> Float[Array, "PM PM"]:
    """Cov(v_p, v_q)/N_d for parts of the same dataset (0 across datasets)."""
    PM = len(micro.parts)
    cov = jnp.zeros((PM, PM))
    for d, ds in enumerate(micro.datasets):
        num, den, second = _dataset_sums(theta, market_batch, deltas, ds, True)
        v = num / den
        block = (second / den - jnp.outer(v, v)) / ds.observations
        idx = [g for g, (dd, _) in enumerate(micro.parts) if dd == d]
        local = [micro.parts[g][1] for g in idx]
        cov = cov.at[jnp.ix_(jnp.asarray(idx), jnp.asarray(idx))].set(
            block[jnp.ix_(jnp.asarray(local), jnp.asarray(local))]
        )
    return cov


def moment_covariances(theta: Theta, market_batch: Market, deltas, micro: MicroSetup) -> Float[Array, "MM MM"]:
    """Cov(f(v)) by the delta method, with ∂f/∂v from autodiff (users never write it)."""
    v = part_values(theta, market_batch, deltas, micro)
    F = jax.jacfwd(lambda v_: moment_values(v_, micro))(v)
    cov = F @ part_covariances(theta, market_batch, deltas, micro) @ F.T
    return (cov + cov.T) / 2
