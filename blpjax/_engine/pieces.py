"""The GMM objective as one per-market contribution and one reduction.

Every quantity the objective and the statistics of a GMM step need is a sum over markets of a
pure function of one market (:func:`market_pieces`):

- the demand moments' numerator Z̃_t'δ_t (the instruments are absorbed once, over all markets, so
  this is additive even when fixed effects span markets);
- with a supply side, Z_S,t'f(c_t) with c_t = p_t − η_t(θ, δ_t);
- with micro moments, every dataset's numerators Σ_ij w_i s_ij w_dij v_pij and denominator
  Σ_ij w_i s_ij w_dij in the market (0 in markets the survey does not cover), and for the
  statistics their second moments Σ ω v_p v_q.

:func:`reduce` turns the summed :class:`Pieces` into the moments ḡ and q = N ḡ'Wḡ. A layout
(:mod:`._layouts`) only decides how markets are batched (``vmap``, chunks with ``lax.map``, size
buckets, devices) and how the sums are combined; it never re-implements the objective, its gradient
or the statistics.

The gradient uses the per-market structure too: δ_t is first solved without derivatives; then the
pieces are evaluated at the solution with the first-order implicit derivative dδ_t/dθ
(:func:`._implicit.delta_at_solution`), and their vector-Jacobian product with λ = ∂q/∂(sums)
gives ∂q/∂θ. In one vmapped pass this is ``jax.vjp`` of the summed pieces (the residuals of every
market alive at once); in chunks the pieces are evaluated again, chunk by chunk, in a second pass
(memory bounded by one chunk). For derivatives of any order (the Hessian), :func:`market_solution`
with ``pinned=False`` differentiates through the contraction's implicit rule instead.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._inversion.contraction import ContractionConfig, FixedPoint
from .._inversion.implicit import delta_at_solution, solve_delta
from .._micro.core import DatasetMarket, DatasetSpec, MicroSetup, dataset_market_terms, first_choice_probabilities
from .._model.logit import logit_delta
from .._model.market import Market, Theta
from .._supply.bertrand import SupplyMarket, market_costs
from .gmm import Concentration


class MarketData(eqx.Module):
    """One market's θ-independent arrays for the objective (every leaf gains a leading T axis when batched).

    Attributes:
        market: the share-inversion data (characteristics, agents, observed log shares, mask, nests).
        Z: absorbed demand instruments (0 on padding).
        supply: prices, firms and ∂X2/∂p with a supply side, else None.
        ZS: supply instruments (0 on padding) with a supply side, else None.
        micro: the survey weights and values in this market of each micro dataset that covers every
            market (``DatasetSpec.full``), else None; surveys of some markets are :class:`SubsetData`.
    """

    market: Market
    Z: Float[Array, "J MD"]
    supply: SupplyMarket | None = None
    ZS: Float[Array, "J MS"] | None = None
    micro: tuple[DatasetMarket, ...] | None = None


class Statics(eqx.Module):
    """What the per-market function needs besides θ and the market's arrays (static: part of the program).

    ``share_probabilities``: compute the first-choice probabilities once per market when the supply side
    and a micro dataset with factored weights both read them (``False`` computes them separately, for
    tests of the sharing).
    """

    K2: int = eqx.field(static=True)
    costs_type: str | None = eqx.field(static=True, default=None)
    costs_bounds: tuple[float, float] = eqx.field(static=True, default=(-float("inf"), float("inf")))
    datasets: tuple[DatasetSpec, ...] | None = eqx.field(static=True, default=None)
    share_probabilities: bool = eqx.field(static=True, default=True)


class Pieces(eqx.Module):
    """Additive contributions of one market (or their sum over markets).

    Attributes:
        demand: Z̃_t'δ_t, ``(MD,)``.
        supply: Z_S,t'f(c_t), ``(MS,)`` (None without a supply side).
        micro_num: per dataset, Σ ω v_p over the dataset's parts, ``(P_d,)`` (None without micro moments).
        micro_den: per dataset, Σ ω, ``()``.
        micro_second: per dataset, Σ ω v_p v_q, ``(P_d, P_d)`` (statistics only, else None).
    """

    demand: Float[Array, " MD"]
    supply: Float[Array, " MS"] | None = None
    micro_num: tuple[Array, ...] | None = None
    micro_den: tuple[Array, ...] | None = None
    micro_second: tuple[Array, ...] | None = None


class MarketAux(eqx.Module):
    """Per-market by-products (not summed): counts of cost problems and, with a supply side, η and c."""

    nonpositive: Int[Array, ""]
    clipped: Int[Array, ""]
    markups: Float[Array, " J"] | None = None
    costs: Float[Array, " J"] | None = None
    transformed: Float[Array, " J"] | None = None


def statics(setup, micro: MicroSetup | None) -> Statics:
    """The :class:`Statics` of a :class:`._objective.Setup` and its micro moments."""
    sup = setup.supply
    return Statics(
        setup.K2,
        None if sup is None else sup.costs_type,
        (-float("inf"), float("inf")) if sup is None else tuple(sup.costs_bounds),
        None if micro is None else micro.specs,
    )


def market_data(setup, micro: MicroSetup | None) -> MarketData:
    """Every market's :class:`MarketData` (leading T axis) from a padded setup: the same arrays, regrouped."""
    sup = setup.supply
    return MarketData(
        setup.market,
        setup.Z,
        None if sup is None else sup.market,
        None if sup is None else sup.ZS,
        None if micro is None else tuple(a for a, spec in zip(micro.datasets, micro.specs, strict=True) if spec.full),
    )


# --- one market ---------------------------------------------------------------------------------------------
def market_solution(
    theta: Theta, market: Market, delta: Float[Array, " J"], config: ContractionConfig, K2: int, pinned: bool
) -> FixedPoint:
    """δ of one market at θ: closed form without random coefficients, else the contraction from ``delta``.

    ``pinned=True``: ``delta`` already solves the share equations at θ; it is returned with the
    first-order implicit derivative dδ/dθ (no contraction is traced). ``pinned=False``: solved from
    the warm start ``delta``, differentiable to any order through the implicit rule.
    """
    zero = jnp.zeros((), jnp.int32)
    if K2 == 0:
        rho = theta.rho if theta.nested else None
        shares = jnp.where(market.mask, jnp.exp(market.log_shares), 0.0)
        delta = logit_delta(shares, market.mask, market.nest_ids, rho)
        return FixedPoint(delta if market.epsilon_scale == 1.0 else market.epsilon_scale * delta, zero, zero)
    if pinned:
        return FixedPoint(delta_at_solution(theta, market, delta), zero, zero)
    return solve_delta(theta, market, delta, config)


def market_pieces(
    theta: Theta, data: MarketData, delta: Float[Array, " J"], statics: Statics, second_moments: bool = False
) -> tuple[Pieces, MarketAux]:
    """One market's additive :class:`Pieces` at (θ, δ) and its :class:`MarketAux`.

    The first-choice probabilities are computed once and shared when both the supply side and a
    micro dataset read them (one forward and one reverse pass through them).
    """
    market = data.market
    mask = market.mask
    demand = data.Z.T @ jnp.where(mask, delta, 0.0)
    datasets = statics.datasets
    share = (
        statics.share_probabilities
        and data.supply is not None
        and datasets is not None
        and not theta.nested
        and any(s.factored_weights for s in datasets)
    )
    probs = first_choice_probabilities(delta, theta, market) if share else None
    supply = None
    zero = jnp.zeros((), jnp.int32)
    aux = MarketAux(zero, zero)
    if data.supply is not None:
        c = market_costs(
            delta,
            theta,
            market,
            data.supply,
            statics.costs_type,
            statics.costs_bounds,
            None if probs is None else probs[0],
        )
        supply = data.ZS.T @ jnp.where(mask, c.transformed, 0.0)
        aux = MarketAux(c.nonpositive.astype(jnp.int32), c.clipped.astype(jnp.int32), c.eta, c.costs, c.transformed)
    num = den = second = None
    if datasets is not None:
        full = iter(data.micro)
        terms = [
            dataset_market_terms(delta, theta, market, next(full), spec, second_moments, probs)
            if spec.full
            else _zero_terms(spec, second_moments)  # a survey of some markets: its terms come from SubsetData
            for spec in datasets
        ]
        # a market without products (the inert markets that pad T to a multiple of the devices) contributes
        # nothing; its all-(−inf) utilities would give NaN derivatives of the choice probabilities
        real = jnp.any(mask)
        keep = lambda a: jnp.where(real, a, 0.0)  # noqa: E731
        num = tuple(keep(t[0]) for t in terms)
        den = tuple(keep(t[1]) for t in terms)
        second = tuple(keep(t[2]) for t in terms) if second_moments else None
    return Pieces(demand, supply, num, den, second), aux


def _zero_terms(spec: DatasetSpec, second_moments: bool):
    zero = jnp.zeros(())
    return jnp.zeros(spec.parts), zero, jnp.zeros((spec.parts, spec.parts)) if second_moments else None


class SubsetData(eqx.Module):
    """A micro dataset that covers some markets only: its arrays for those markets (compact, leading axis
    T_d) and their positions among the markets of a layout's group, so that its terms are computed there
    and nowhere else.

    Attributes:
        index: position of each covered market in the group's market axis.
        arrays: the dataset's weights and values in those markets.
    """

    index: Int[Array, " Td"]
    arrays: DatasetMarket


def subset_data(micro: MicroSetup | None, positions=None) -> tuple[SubsetData | None, ...] | None:
    """Every dataset's :class:`SubsetData` among the markets ``positions`` of a group (default: all of the
    problem's, in order), ``None`` for surveys of every market and for surveys without a market there."""
    if micro is None:
        return None
    out = []
    for arrays, spec in zip(micro.datasets, micro.specs, strict=True):
        if spec.full:
            out.append(None)
            continue
        covered = np.asarray(spec.markets)
        if positions is None:
            rows, local = np.arange(len(covered)), covered
        else:
            where = {int(t): k for k, t in enumerate(np.asarray(positions))}
            rows = np.asarray([r for r, t in enumerate(covered) if int(t) in where], np.int64)
            local = np.asarray([where[int(covered[r])] for r in rows], np.int64)
        if len(rows) == 0:
            out.append(None)
            continue
        take = jax.tree_util.tree_map(lambda a, rows=rows: jnp.asarray(np.asarray(a)[rows]), arrays)
        out.append(SubsetData(jnp.asarray(local), take))
    return tuple(out)


def subset_pieces(
    theta: Theta,
    subsets: tuple[SubsetData | None, ...] | None,
    markets: Market,
    deltas: Float[Array, "T J"],
    statics: Statics,
    second_moments: bool = False,
    pinned: bool = False,
    batch: int | None = None,
) -> Pieces | None:
    """The terms of the surveys of some markets, for their markets of a group (the other entries zero).

    ``deltas``: the group's δ; with ``pinned`` each covered market's δ is taken as a solution at θ and given
    its first-order implicit derivative here (δ without derivatives in), else used as given (δ(θ) in).
    """
    if subsets is None or all(s is None for s in subsets):
        return None
    num, den, second = [], [], []
    for sub, spec in zip(subsets, statics.datasets, strict=True):
        if sub is None:
            n, d, q = _zero_terms(spec, second_moments)
        else:

            def one(i, arrays, spec=spec):
                market = jax.tree_util.tree_map(lambda a: a[i], markets)
                delta = deltas[i]
                if pinned:
                    delta = market_solution(theta, market, delta, None, statics.K2, True).x
                terms = dataset_market_terms(delta, theta, market, arrays, spec, second_moments)
                # inert rows (zero weights) may point at a market without products: no NaN derivatives from it
                real = jnp.any(market.mask)
                return jax.tree_util.tree_map(lambda a: jnp.where(real, a, 0.0), terms)

            if batch is None:
                n, d, q = jax.vmap(one)(sub.index, sub.arrays)
            else:
                with jax.disable_jit(False):  # a real loop, also inside a body traced with nested jits inlined
                    n, d, q = jax.lax.map(lambda a: one(*a), (sub.index, sub.arrays), batch_size=batch)
            n, d = jnp.sum(n, axis=0), jnp.sum(d, axis=0)
            q = None if q is None else jnp.sum(q, axis=0)
        num.append(n)
        den.append(d)
        second.append(q)
    zero = jnp.zeros(0)
    return Pieces(zero, None, tuple(num), tuple(den), tuple(second) if second_moments else None)


def add_pieces(sums: Pieces, extra: Pieces | None) -> Pieces:
    """``sums`` plus the micro terms of ``extra`` (a :func:`subset_pieces`)."""
    if extra is None:
        return sums
    add = lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True))  # noqa: E731
    return dataclasses.replace(
        sums,
        micro_num=add(sums.micro_num, extra.micro_num),
        micro_den=add(sums.micro_den, extra.micro_den),
        micro_second=None if sums.micro_second is None else add(sums.micro_second, extra.micro_second),
    )


# --- the reduction ------------------------------------------------------------------------------------------
def product_moments(sums: Pieces, N: int) -> Float[Array, " M"]:
    """ḡ_δ = (Z̃'δ, Z_S'f(c))/N: the product moments before β and γ are concentrated out."""
    g = sums.demand if sums.supply is None else jnp.concatenate([sums.demand, sums.supply])
    return g / N


def part_values(sums: Pieces, micro: MicroSetup) -> Float[Array, " PM"]:
    """Model analogues v_p of every micro part, pooled over each dataset's markets."""
    by_dataset = [n / d for n, d in zip(sums.micro_num, sums.micro_den, strict=True)]
    return jnp.stack([by_dataset[d][k] for d, k in micro.parts])


def moment_values(v: Float[Array, " PM"], micro: MicroSetup) -> Float[Array, " MM"]:
    """f_m(v) for every micro moment."""
    return jnp.stack(
        [
            jnp.asarray(f(v[jnp.asarray(idx)]), v.dtype).reshape(())
            for idx, f in zip(micro.moments, micro.functions, strict=True)
        ]
    )


def micro_moments(sums: Pieces, micro: MicroSetup) -> Float[Array, " MM"]:
    """ḡ_M = observed − f(v(θ)) (PyBLP's sign convention)."""
    return micro.observed - moment_values(part_values(sums, micro), micro)


class Reduced(eqx.Module):
    """The moments of an evaluation: ḡ_δ (before concentration) and the micro moments."""

    g_delta: Float[Array, " M"]
    g_micro: Float[Array, " MM"] | None


def reduce(sums: Pieces, conc: Concentration, N: int, micro: MicroSetup | None, linear=None) -> tuple[Array, Reduced]:
    """q = N ḡ'Wḡ from the summed pieces, with β (and γ) concentrated out.

    ḡ stacks C ḡ_δ (residualised first, so that a small q is not lost to cancellation) and the
    micro moments. ``linear``: ``Theta.linear`` (the linear parameters not concentrated out), or None.
    """
    g_delta = product_moments(sums, N)
    g = conc.C @ conc.residual(g_delta, linear)
    g_micro = None
    if micro is not None:
        g_micro = micro_moments(sums, micro)
        g = jnp.concatenate([g, g_micro])
    return N * g @ conc.W @ g, Reduced(g_delta, g_micro)


def micro_covariances(sums: Pieces, micro: MicroSetup) -> Float[Array, "MM MM"]:
    """Cov(f(v)) by the delta method from the summed first and second moments (∂f/∂v by autodiff).

    Parts of one dataset covary as (Σ ω v_p v_q / Σ ω − v_p v_q)/N_d; parts of different datasets
    are independent.
    """
    PM = len(micro.parts)
    cov = jnp.zeros((PM, PM))
    for d, spec in enumerate(micro.specs):
        den = sums.micro_den[d]
        v = sums.micro_num[d] / den
        block = (sums.micro_second[d] / den - jnp.outer(v, v)) / spec.observations
        idx = [g for g, (dd, _) in enumerate(micro.parts) if dd == d]
        local = [micro.parts[g][1] for g in idx]
        cov = cov.at[jnp.ix_(jnp.asarray(idx), jnp.asarray(idx))].set(
            block[jnp.ix_(jnp.asarray(local), jnp.asarray(local))]
        )
    v = part_values(sums, micro)
    F = jax.jacfwd(lambda v_: moment_values(v_, micro))(v)
    out = F @ cov @ F.T
    return (out + out.T) / 2


def deltas_at_solution(theta: Theta, setup, delta: Float[Array, "T J"]) -> Float[Array, "T J"]:
    """δ of every market, known to solve the share equations at θ, with its first-order derivative dδ/dθ
    (vmapped over the markets of a padded :class:`._objective.Setup`)."""
    data = market_data(setup, None)
    return jax.vmap(lambda m, dl: market_solution(theta, m, dl, None, setup.K2, True).x)(data.market, delta)


def tree_sum(trees):
    """The leafwise sum of a list of pytrees of the same structure."""
    out = trees[0]
    for t in trees[1:]:
        out = jax.tree_util.tree_map(jnp.add, out, t)
    return out
