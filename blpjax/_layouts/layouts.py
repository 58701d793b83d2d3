"""Layouts: how markets are batched and how their sums are combined, around one per-market engine.

A layout never re-implements the objective: it maps :func:`._engine.market_solution` and
:func:`._engine.market_pieces` over markets and adds the :class:`._engine.Pieces` up. The four
layouts of one problem (and their combinations) give the same objective, gradient, statistics and
δ to rounding, at different costs:

- :class:`Padded`: one ``vmap`` over all markets padded to the largest J and I (one pass; the
  gradient is ``jax.vjp`` of the summed pieces, every market's residuals alive at once);
- ``batch``: markets in chunks of that many (``lax.map``); the gradient in two passes (the pieces
  evaluated again, chunk by chunk, for their vector-Jacobian product with λ = ∂q/∂(sums)), so peak
  memory is O(batch · I · J);
- :class:`Bucketed`: markets grouped into a few (J, I) size classes, each padded only to its own
  largest market and mapped by its own program; the groups' sums are added;
- :class:`Sharded`: markets split over a device mesh (``shard_map``); each device maps its own
  markets and the sums (and the gradient) are ``psum``-ed: only M + MM numbers and a P-vector
  cross devices.

Every layout returns δ, contraction counts and statuses on the padded (T, J) / (T,) layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._base import config
from .._engine.pieces import (
    MarketAux,
    MarketData,
    Statics,
    SubsetData,
    add_pieces,
    market_pieces,
    market_solution,
    subset_data,
    subset_pieces,
)
from .._inversion.contraction import ContractionConfig

AXIS = "markets"


class Evaluation(eqx.Module):
    """Per-market by-products of one objective evaluation, on the padded (T, J) / (T,) layout.

    ``delta_jacobian``: dδ/dx at the solution, (T, J, P): the implicit derivative, a by-product of a forward-mode
    gradient (:func:`_forward_mode`; None otherwise and from value-only evaluations). The next evaluation's warm
    start is predicted to first order from it (:func:`.._estimation.optimize.predicted_start`).
    """

    delta: Float[Array, "T J"]
    evaluations: Int[Array, " T"]
    status: Int[Array, " T"]
    aux: MarketAux  # batched over T
    delta_jacobian: Float[Array, "T J P"] | None = None


def _sum0(tree):
    return jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), tree)


def _map(f, xs, batch: int | None):
    """``f`` over the leading axis of ``xs``: one ``vmap``, or ``lax.map`` in chunks of ``batch``."""
    if batch is None:
        return jax.vmap(f)(*xs)
    with jax.disable_jit(False):  # a real loop, also inside a body traced with nested jits inlined
        return jax.lax.map(lambda a: f(*a), xs, batch_size=batch)


def jacobian_with_aux(f, x, elements: int, aux: bool = True):
    """(∂f₀/∂x, f₁) for ``f(x) -> (f₀, f₁)`` by forward mode (trailing P axis, as ``jacfwd``), in chunks of
    tangents when ``elements`` (market × product × agent elements mapped at once) times P exceeds
    ``settings.jacobian_chunk_elements``, so that forward-mode I×J tangents are not all alive at once.
    f is traced once either way: in chunks, f₁ comes from the chunks' primal pass (``aux=False``: None)."""
    P_ = x.shape[0]
    chunk = max(1, config.settings.jacobian_chunk_elements // max(elements, 1))
    if P_ <= chunk:
        jac, f1 = jax.jacfwd(f, has_aux=True)(x)
        return jac, f1 if aux else None
    n = -(-P_ // chunk)
    basis = jnp.eye(n * chunk, P_, dtype=x.dtype).reshape(n, chunk, P_)  # rows past P are zero
    inlined = jax.config.jax_disable_jit  # a body traced with nested jits inlined (config.inline_nested) ...

    def columns(block):
        def one(v):
            _, tangent, f1 = jax.jvp(f, (x,), (v,), has_aux=True)
            return tangent, f1 if aux else None

        with jax.disable_jit(inlined):  # ... inlines them inside the map's body too
            return jax.vmap(one, out_axes=(0, None))(block)  # f₁ does not depend on the tangent

    with jax.disable_jit(False):  # the map itself is traced, not unrolled
        out, f1 = jax.lax.map(columns, basis)
    jac = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a.reshape((n * chunk,) + a.shape[2:])[:P_], 0, -1), out)
    return jac, jax.tree_util.tree_map(lambda a: a[0], f1)


# --- one group of markets (all of a padded problem, a bucket, or a device's share) ---------------------------
class Work(eqx.Module):
    """What the per-market functions need besides the markets: static, part of every program."""

    spec: Any = eqx.field(static=True)  # a ParameterSpec: hashed and compared by structure (a bound method would
    # compare by the identity of its spec, and every solve would compile again)
    statics: Statics = eqx.field(static=True)
    config: ContractionConfig = eqx.field(static=True)


class GroupData(eqx.Module):
    """The arrays of one group of markets (every market, a bucket, or a device's share).

    Attributes:
        markets: every market's :class:`._engine.pieces.MarketData` (leading axis: the group's markets).
        subsets: the surveys of some markets, their arrays for the group's markets they cover
            (:class:`._engine.pieces.SubsetData`; None for other datasets, or without micro moments).
    """

    markets: MarketData
    subsets: tuple[SubsetData | None, ...] | None = None


#: the gradient is taken by forward mode (giving dδ/dx as well) for at most this many parameters: per value-and-
#: gradient call on 2 Intel cores, Mixtape Exercise 2.5 (P = 3) and the autos (P = 6) cost the same either way and
#: then need fewer evaluations, while Nevo (P = 13, small markets) took 3.2 ms instead of 1.7 (2026-12-02)
FORWARD_MODE_MAX_PARAMETERS = 8


def _forward_mode(work: Work, data: GroupData, P: int) -> bool:
    """Whether the gradient is taken by forward mode, with dδ/dx as a by-product: demand only (no supply side, no
    micro moments), μ moved through the coefficients (no product-specific demographics) and at most
    ``FORWARD_MODE_MAX_PARAMETERS`` parameters. There the P tangents of θ stay (I, K2) per market, and all P of them
    cost one product with exp(μ), as the single reverse pass does. Supply and micro pieces would carry P tangents of
    the (J, I) probabilities: they keep reverse mode, and dδ/dx is not formed (a separate tangent of δ beside the
    reverse pass cost Mixtape Exercise 3 more per call than the better warm start saved)."""
    return (
        P <= FORWARD_MODE_MAX_PARAMETERS
        and work.statics.costs_type is None
        and work.statics.datasets is None
        and data.markets.market.product_demographics is None
    )


def _contract(lam, jacobian):
    """λ'J for a pytree λ and its Jacobian (the same pytree, every leaf with a trailing P axis)."""
    pairs = zip(jax.tree_util.tree_leaves(lam), jax.tree_util.tree_leaves(jacobian), strict=True)
    return sum(jnp.tensordot(a, b, axes=a.ndim) for a, b in pairs)


def group_forward(work: Work, x, data: GroupData, delta0, batch: int | None):
    """Solve δ and sum the pieces of a group of markets; returns (sums, FixedPoint, aux, pullback, dδ/dx).

    ``pullback(λ)`` is λ'∂(sums)/∂x through the first-order implicit dδ/dθ at the solution. One vmapped pass
    (``batch=None``: every market's residuals kept) or passes in chunks. Where :func:`_forward_mode` says so, P
    forward tangents give ∂(sums)/∂x and dδ/dx (T, J, P) together (in chunks: in the same pass as the solve); else
    the gradient is a ``jax.vjp`` (in chunks: a second pass) and dδ/dx is None.
    """
    K2, statics = work.statics.K2, work.statics
    markets = data.markets
    theta0 = jax.lax.stop_gradient(work.spec.unpack(x))
    forward_mode = _forward_mode(work, data, x.shape[0])

    def pinned_pieces(y, d, dl):
        """((pieces, δ), aux) of one market at the solution ``dl``, carrying the implicit derivative."""
        th = work.spec.unpack(y)
        delta = market_solution(th, d.market, dl, work.config, K2, True).x
        p, aux = market_pieces(th, d, delta, statics)
        return (p, delta), aux

    def pinned_subsets(y, deltas):
        return subset_pieces(
            work.spec.unpack(y), data.subsets, markets.market, deltas, statics, pinned=True, batch=batch
        )

    if batch is None:
        fp = jax.vmap(lambda d, d0: market_solution(theta0, d.market, d0, work.config, K2, False))(markets, delta0)

        def summed(y):
            (p, deltas), aux = jax.vmap(lambda d, dl: pinned_pieces(y, d, dl))(markets, fp.x)
            return (add_pieces(_sum0(p), pinned_subsets(y, fp.x)), deltas), aux

        if forward_mode:
            (sums, _), tangent, aux = jax.linearize(summed, x, has_aux=True)
            jac_sums, jac = jax.vmap(tangent, out_axes=-1)(jnp.eye(x.shape[0], dtype=x.dtype))
            return sums, fp, aux, lambda lam: _contract(lam, jac_sums), jac

        def sums_only(y):
            (sums, _), aux = summed(y)
            return sums, aux

        sums, pull, aux = jax.vjp(sums_only, x, has_aux=True)
        return sums, fp, aux, lambda lam: pull(lam)[0], None

    def forward(d, d0):
        fp = market_solution(theta0, d.market, d0, work.config, K2, False)
        p, aux = market_pieces(theta0, d, fp.x, statics)
        if not forward_mode:
            return p, fp, aux, None
        # the pieces' and δ's Jacobians in the same pass: no second pass over the chunks for the gradient
        return p, fp, aux, jax.jacfwd(lambda y: pinned_pieces(y, d, fp.x), has_aux=True)(x)[0]

    p, fp, aux, jacobians = _map(forward, (markets, delta0), batch)
    sums = add_pieces(_sum0(p), subset_pieces(theta0, data.subsets, markets.market, fp.x, statics, batch=batch))
    if forward_mode:
        jac_sums = _sum0(jacobians[0])
        return sums, fp, aux, lambda lam: _contract(lam, jac_sums), jacobians[1]

    def pullback(lam):
        def one(d, dl):
            _, vjp = jax.vjp(lambda y: pinned_pieces(y, d, dl)[0][0], x)
            return vjp(lam)[0]

        grad = jnp.sum(_map(one, (markets, fp.x), batch), axis=0)
        if data.subsets is not None and any(sub is not None for sub in data.subsets):
            _, vjp = jax.vjp(lambda y: pinned_subsets(y, fp.x), x)
            grad = grad + vjp(dataclasses.replace(lam, demand=jnp.zeros(0), supply=None))[0]
        return grad

    return sums, fp, aux, pullback, None


def group_value(work: Work, x, data: GroupData, delta0, batch: int | None):
    """(sums, FixedPoint, aux) with δ(θ) solved inside: differentiable to any order (the Hessian)."""
    theta = work.spec.unpack(x)

    def one(d, d0):
        fp = market_solution(theta, d.market, d0, work.config, work.statics.K2, False)
        p, aux = market_pieces(theta, d, fp.x, work.statics)
        return p, fp, aux

    p, fp, aux = _map(one, (data.markets, delta0), batch)
    subsets = subset_pieces(theta, data.subsets, data.markets.market, fp.x, work.statics, batch=batch)
    return add_pieces(_sum0(p), subsets), fp, aux


def group_statistics(work: Work, x, data: GroupData, delta, batch: int | None):
    """(sums with micro second moments, ∂(sums)/∂x with a trailing P axis, aux) at the solution δ."""
    K2, statics = work.statics.K2, work.statics

    def f(y):
        th = work.spec.unpack(y)

        def one(d, dl):
            dl = market_solution(th, d.market, dl, work.config, K2, True).x
            return market_pieces(th, d, dl, statics, second_moments=True)

        p, aux = _map(one, (data.markets, delta), batch)
        subsets = subset_pieces(th, data.subsets, data.markets.market, delta, statics, True, True, batch)
        sums = add_pieces(_sum0(p), subsets)
        return dataclasses.replace(sums, micro_second=None), (sums, aux)

    T, J = delta.shape
    per_pass = (T if batch is None else min(batch, T)) * J * data.markets.market.weights.shape[-1]
    jac, (sums, aux) = jacobian_with_aux(f, x, per_pass)
    return sums, jac, aux


# --- layouts ------------------------------------------------------------------------------------------------
class Layout(eqx.Module):
    """Static description of how markets are mapped (hashable: a static argument of the programs).

    Subclasses implement :meth:`prepare` (host side, once per problem: cut or place the market
    arrays) and :meth:`_groups` / the three evaluations through :meth:`_run`.
    """

    batch: int | None = eqx.field(static=True, default=None)

    @property
    def inline(self) -> bool:
        """Whether programs on this layout can be traced with nested jits inlined (no ``scan`` inside)."""
        return self.batch is None

    def prepare(self, data: MarketData, micro=None):
        """The layout's arrays for ``data`` (every market, padded) and the micro moments' surveys of some markets."""
        return GroupData(data, subset_data(micro))

    # each evaluation: (group function, arguments) → combined sums, (T, J) results
    def forward(self, work: Work, x, ldata, delta0):
        sums, fp, aux, pull, jac = group_forward(work, x, ldata, delta0, self.batch)
        return sums, Evaluation(fp.x, fp.evaluations, fp.status, aux, jac), pull

    def value(self, work: Work, x, ldata, delta0):
        sums, fp, aux = group_value(work, x, ldata, delta0, self.batch)
        return sums, Evaluation(fp.x, fp.evaluations, fp.status, aux)

    def statistics(self, work: Work, x, ldata, delta):
        return group_statistics(work, x, ldata, delta, self.batch)

    def markets_of(self, delta):
        """δ of the problem's own markets, as the product-level statistics read it (here ``delta`` itself)."""
        return delta


class Padded(Layout):
    """Every market in one vmapped program (``batch=None``), or in chunks of ``batch`` markets."""
