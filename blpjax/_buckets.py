"""Markets of very different sizes: one vmapped program per size class instead of one padded batch.

Padding every market to the largest J and I wastes work in proportion to the spread of market
sizes: the I×J share arrays, the J×J implicit-derivative systems, and the contraction's
iterations (a batch iterates until its slowest market has converged). Here markets are grouped
into a few buckets of similar (J_t, I_t); each bucket is padded only to its own largest market and
solved by its own vmapped program, and the buckets' instrument-moment contributions Z̃'δ are
summed. Everything pooled (N, Z̃'X̃, the weighting matrix) is unchanged, so the objective, its
gradient and δ equal the padded ones to rounding.

Bucket boundaries (:func:`plan_buckets`) minimise the padded work Σ_b T_b J_b (I_b + J_b) (the I×J
share arrays plus the J×J derivative system per market) over contiguous groups of the markets
sorted by (J_t, I_t), by dynamic programming, with at most ``max_buckets`` buckets (each one is a
separate program to compile) and no more buckets than needed to come within ``tol`` of the best.

Example:
    >>> plan = plan_buckets(*market_sizes(setup.mask, setup.market.weights), max_buckets=4)
    >>> bsetup = bucket_setup(setup, plan)
    >>> q, ev = bucketed_objective(theta, bsetup, conc, delta0, config)   # ≡ objective(theta, setup, ...)
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._chunking import _delta_at, chunked_solve_deltas, moments_vjp, q_of_moments
from ._contraction import ContractionConfig, FixedPoint
from ._gmm import Concentration, instrument_moments
from ._implicit import Market, Theta
from ._markets import Agents, Products
from ._objective import Evaluation, Setup, solve_deltas


def market_sizes(mask: Bool[Array, "T J"], weights: Float[Array, "T I"]) -> tuple[np.ndarray, np.ndarray]:
    """(J_t, I_t): real products, and agents up to the last one with a non-zero weight.

    Raises:
        ValueError: if a market's real products do not come first (blpjax's layout).
    """
    mask, weights = np.asarray(mask), np.asarray(weights)
    J_t = mask.sum(axis=1)
    if not np.array_equal(np.arange(mask.shape[1])[None, :] < J_t[:, None], mask):
        raise ValueError("real products must come first in every market (as blpjax's data front lays them out).")
    nonzero = weights != 0
    I_t = np.where(nonzero.any(axis=1), weights.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 1)
    return J_t.astype(np.int64), I_t.astype(np.int64)


@dataclass(frozen=True, eq=False)
class BucketPlan:
    """Which markets go to which bucket, and each bucket's padded sizes.

    Attributes:
        markets: market indices of each bucket (ascending).
        J: products per market in each bucket (its largest J_t).
        I: agents per market in each bucket (its largest I_t).
        J_t, I_t: every market's own sizes.
    """

    markets: tuple[np.ndarray, ...]
    J: tuple[int, ...]
    I: tuple[int, ...]
    J_t: np.ndarray
    I_t: np.ndarray

    @property
    def T(self) -> int:
        return len(self.J_t)

    @staticmethod
    def _work(n, J, I) -> int:
        return int(n) * int(J) * (int(I) + int(J))

    def elements(self) -> dict[str, int]:
        """Agent × product × market elements (I×J arrays) and J×J system entries: padded, bucketed, real."""
        J_max, I_max = int(self.J_t.max()), int(self.I_t.max())
        return {
            "padded_IJ": self.T * J_max * I_max,
            "bucketed_IJ": sum(len(m) * J * I for m, J, I in zip(self.markets, self.J, self.I, strict=True)),
            "real_IJ": int(np.sum(self.J_t * self.I_t)),
            "padded_JJ": self.T * J_max**2,
            "bucketed_JJ": sum(len(m) * J**2 for m, J in zip(self.markets, self.J, strict=True)),
            "real_JJ": int(np.sum(self.J_t**2)),
        }


def plan_buckets(J_t, I_t, max_buckets: int = 4, tol: float = 0.02) -> BucketPlan:
    """Group markets into at most ``max_buckets`` size classes minimising padded work.

    Markets are sorted by (J_t, I_t); the distinct sizes are split into contiguous groups by
    dynamic programming on the work Σ_b T_b J_b (I_b + J_b). The fewest buckets whose work is
    within a factor 1 + ``tol`` of the best with ``max_buckets`` is chosen.

    Args:
        J_t: products per market.
        I_t: agents per market.
        max_buckets: cap on the number of buckets (programs to compile).
        tol: relative work one accepts to save a bucket.

    Returns:
        The :class:`BucketPlan`.
    """
    J_t, I_t = np.asarray(J_t, np.int64), np.asarray(I_t, np.int64)
    sizes, inverse, counts = np.unique(np.stack([J_t, I_t], 1), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    C = len(sizes)
    K = max(1, min(max_buckets, C))
    cum = np.concatenate([[0], np.cumsum(counts)])
    Jc, Ic = sizes[:, 0], sizes[:, 1]  # sorted by J then I: the largest J of classes a..b-1 is Jc[b-1]
    # best[k, b]: least work covering classes [0, b) with k buckets; cut[k, b]: start of the last bucket
    best = np.full((K + 1, C + 1), np.inf)
    cut = np.zeros((K + 1, C + 1), np.int64)
    best[0, 0] = 0.0
    for b in range(1, C + 1):
        a = np.arange(b)
        I_max = np.maximum.accumulate(Ic[:b][::-1])[::-1]  # max I over classes a..b-1
        work = (cum[b] - cum[a]) * Jc[b - 1] * (I_max + Jc[b - 1]).astype(np.float64)
        for k in range(1, K + 1):
            total = best[k - 1, a] + work
            i = int(np.argmin(total))
            best[k, b], cut[k, b] = total[i], i
    target = np.nanmin(best[1:, C]) * (1 + tol)
    k = next(k for k in range(1, K + 1) if best[k, C] <= target)
    bounds, b = [], C
    for kk in range(k, 0, -1):
        a = int(cut[kk, b])
        bounds.append((a, b))
        b = a
    markets, Js, Is = [], [], []
    for a, b in sorted(bounds):
        members = np.flatnonzero((inverse >= a) & (inverse < b))
        markets.append(members)
        Js.append(int(J_t[members].max()))
        Is.append(int(I_t[members].max()))
    return BucketPlan(tuple(markets), tuple(Js), tuple(Is), J_t, I_t)


class BucketedSetup(eqx.Module):
    """A :class:`Setup` split into per-bucket setups, each padded to its own (J_b, I_b).

    Attributes:
        setups: one :class:`Setup` per bucket (T_b markets, J_b products, I_b agents); pooled
            fields (N, Z̃'X̃/N) are the full problem's.
        markets: each bucket's market indices into the original T.
        T: number of markets of the original problem.
        J: padded product count of the original problem (δ is returned as (T, J)).
    """

    setups: tuple[Setup, ...]
    markets: tuple[Int[Array, " Tb"], ...]
    T: int = eqx.field(static=True)
    J: int = eqx.field(static=True)

    @property
    def N(self) -> int:
        return self.setups[0].N


def _take(a, idx, *sizes):
    a = np.asarray(a)[idx]
    return jnp.asarray(a[(slice(None),) + tuple(slice(0, s) for s in sizes)])


def bucket_setup(setup: Setup, plan: BucketPlan) -> BucketedSetup:
    """Cut a padded :class:`Setup` into the buckets of ``plan`` (host-side, once per problem)."""
    T, J = setup.mask.shape
    if plan.T != T:
        raise ValueError(f"the plan has {plan.T} markets, the setup {T}.")
    m = setup.market
    setups = []
    for idx, Jb, Ib in zip(plan.markets, plan.J, plan.I, strict=True):
        market = Market(
            _take(m.X2, idx, Jb),
            _take(m.nodes, idx, Ib),
            _take(m.demographics, idx, Ib),
            _take(m.weights, idx, Ib),
            _take(m.log_shares, idx, Jb),
            _take(m.mask, idx, Jb),
            _take(m.nest_ids, idx, Jb),
        )
        setups.append(
            Setup(
                market,
                _take(setup.shares, idx, Jb),
                _take(setup.mask, idx, Jb),
                _take(setup.Z, idx, Jb),
                _take(setup.X1, idx, Jb),
                setup.ZX,
                _take(setup.fe_ids, idx, Jb),
                setup.N,
                setup.K2,
                setup.fe_sizes,
            )
        )
    return BucketedSetup(tuple(setups), tuple(jnp.asarray(i) for i in plan.markets), T, J)


def bucketed(
    products: Products, agents: Agents, max_buckets: int = 4, tol: float = 0.02
) -> tuple[BucketedSetup, BucketPlan]:
    """Bucket a padded problem: :meth:`Setup.build` on all markets (fixed effects are absorbed
    across buckets), then :func:`plan_buckets` and :func:`bucket_setup`."""
    setup = Setup.build(products, agents)
    plan = plan_buckets(*market_sizes(products.mask, agents.weights), max_buckets=max_buckets, tol=tol)
    return bucket_setup(setup, plan), plan


def _scatter(bsetup: BucketedSetup, parts, fill_shape, dtype):
    out = jnp.zeros(fill_shape, dtype)
    for idx, part in zip(bsetup.markets, parts, strict=True):
        out = out.at[idx, : part.shape[1]].set(part) if part.ndim == 2 else out.at[idx].set(part)
    return out


def bucketed_solve_deltas(
    theta: Theta,
    bsetup: BucketedSetup,
    delta0: Float[Array, "T J"],
    config: ContractionConfig,
    batch_size: int | None = None,
) -> FixedPoint:
    """δ(θ) bucket by bucket, returned on the original padded (T, J) layout (0 on padding)."""
    fps = []
    for s, idx in zip(bsetup.setups, bsetup.markets, strict=True):
        d0 = delta0[idx, : s.mask.shape[1]]
        fps.append(
            solve_deltas(theta, s, d0, config)
            if batch_size is None
            else chunked_solve_deltas(theta, s, d0, config, batch_size)
        )
    T, J = bsetup.T, bsetup.J
    return FixedPoint(
        _scatter(bsetup, [f.x for f in fps], (T, J), delta0.dtype),
        _scatter(bsetup, [f.evaluations for f in fps], (T,), jnp.int32),
        _scatter(bsetup, [f.status for f in fps], (T,), jnp.int32),
    )


def _moments(bsetup: BucketedSetup, fp: FixedPoint) -> Float[Array, " M"]:
    total = 0.0
    for s, idx in zip(bsetup.setups, bsetup.markets, strict=True):
        total = total + instrument_moments(s.Z, fp.x[idx, : s.mask.shape[1]], s.mask, s.N)
    return total


def bucketed_objective(
    theta: Theta,
    bsetup: BucketedSetup,
    conc: Concentration,
    delta0: Float[Array, "T J"],
    config: ContractionConfig,
    batch_size: int | None = None,
) -> tuple[Array, Evaluation]:
    """q(θ) and its :class:`Evaluation`, equal to :func:`blpjax._objective.objective` on the padded setup.

    Differentiable in θ like the padded objective. With ``batch_size``, each bucket's markets are
    solved that many at a time (:mod:`._chunking`); for a gradient in bounded memory use
    :func:`bucketed_value_and_grad`.
    """
    fp = bucketed_solve_deltas(theta, bsetup, delta0, config, batch_size)
    g_delta = _moments(bsetup, fp)
    q = q_of_moments(g_delta, conc, bsetup.N)
    return q, Evaluation(fp.x, fp.evaluations, fp.status, g_delta)


def bucketed_deltas_at_solution(theta: Theta, bsetup: BucketedSetup, delta: Float[Array, "T J"]) -> Float[Array, "T J"]:
    """δ known to solve the share equations at θ, with its first-order derivative, per bucket."""
    parts = []
    for s, idx in zip(bsetup.setups, bsetup.markets, strict=True):
        d = delta[idx, : s.mask.shape[1]]
        parts.append(jax.vmap(_delta_at, in_axes=(None, 0, 0, 0, 0, None))(theta, s.market, s.shares, s.mask, d, s.K2))
    return _scatter(bsetup, parts, (bsetup.T, bsetup.J), delta.dtype)


def bucketed_value_and_grad(
    unpack,
    config: ContractionConfig,
    x: Float[Array, " P"],
    delta0: Float[Array, "T J"],
    conc: Concentration,
    bsetup: BucketedSetup,
    batch_size: int | None = None,
) -> tuple[Array, Float[Array, " P"], Evaluation]:
    """(q, ∂q/∂x, Evaluation): the bucketed twin of ``blpjax._estimate._value_and_grad``.

    Without ``batch_size``: reverse-mode autodiff through :func:`bucketed_objective`. With it:
    markets in chunks and the two-pass gradient of :mod:`._chunking`, so that memory is bounded
    by ``batch_size`` markets of the largest bucket.

    Args:
        unpack: x ↦ :class:`Theta` (``ParameterSpec.unpack``); static under jit.
        config: contraction configuration; static.
        x: packed nonlinear parameters.
        delta0: starting δ on the padded (T, J) layout.
        conc: concentration maps of the weighting matrix.
        bsetup: the bucketed setup.
        batch_size: markets per chunk within each bucket, or None.
    """
    if batch_size is None:

        def f(y):
            return bucketed_objective(unpack(y), bsetup, conc, delta0, config)

        (q, ev), grad = jax.value_and_grad(f, has_aux=True)(x)
        return q, grad, ev

    q, ev = bucketed_objective(unpack(x), bsetup, conc, delta0, config, batch_size)
    lam = jax.grad(q_of_moments)(ev.g_delta, conc, bsetup.N)
    grad = 0.0
    for s, idx in zip(bsetup.setups, bsetup.markets, strict=True):
        grad = grad + moments_vjp(unpack, x, s, ev.delta[idx, : s.mask.shape[1]], lam, batch_size)
    return q, grad, ev
