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
    >>> layout = Bucketed(markets=plan.markets, J=plan.J, I=plan.I)   # see blpjax._layouts
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._engine.pieces import MarketData, SubsetData, subset_data, tree_sum
from .._micro.core import DatasetMarket
from .._supply.bertrand import SupplyMarket
from .layouts import Evaluation, GroupData, Layout, Work, group_forward, group_statistics, group_value


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


# --- the bucketed layout -------------------------------------------------------------------------------------
def _cut_market_axis(a, idx):
    return jnp.asarray(np.asarray(a)[np.asarray(idx)])


def _cut(a, axis: int, size: int):
    index = [slice(None)] * a.ndim
    index[axis] = slice(0, size)
    return a[tuple(index)]


def _cut_choices(a, axis: int, J: int, Jb: int):
    """Cut a choice axis of size J (inside goods) or 1 + J (outside good first) to the bucket's J_b."""
    return _cut(a, axis, Jb + (a.shape[axis] - J))


def cut_markets(data: MarketData, idx, Jb: int, Ib: int) -> MarketData:
    """The markets ``idx`` of ``data``, cut to J_b products and I_b agents (host side)."""
    J = data.market.mask.shape[1]
    take = lambda a: np.asarray(a)[np.asarray(idx)]  # noqa: E731
    m = data.market
    market = type(m)(
        _cut(take(m.X2), 1, Jb),
        _cut(take(m.nodes), 1, Ib),
        _cut(take(m.demographics), 1, Ib),
        _cut(take(m.weights), 1, Ib),
        _cut(take(m.log_shares), 1, Jb),
        _cut(take(m.mask), 1, Jb),
        _cut(take(m.nest_ids), 1, Jb),
        None if m.product_demographics is None else _cut(_cut(take(m.product_demographics), 1, Ib), 2, Jb),
        None if m.availability is None else _cut(_cut(take(m.availability), 1, Ib), 2, Jb),
        m.epsilon_scale,
    )
    supply = ZS = micro = None
    if data.supply is not None:
        s = data.supply
        supply = SupplyMarket(
            _cut(take(s.prices), 1, Jb),
            _cut(take(s.firm_ids), 1, Jb),
            _cut(take(s.dX2), 1, Jb),
            _cut(take(s.firms), 1, Jb),
            None if s.dX1 is None else _cut(take(s.dX1), 1, Jb),
            s.uniform_dX2,
        )
        ZS = _cut(take(data.ZS), 1, Jb)
    if data.micro is not None:
        micro = tuple(cut_dataset(ds, take, J, Jb, Ib) for ds in data.micro)
    out = MarketData(market, _cut(take(data.Z), 1, Jb), supply, ZS, micro)
    return jax.tree_util.tree_map(jnp.asarray, out)


def cut_dataset(ds: DatasetMarket, take, J: int, Jb: int, Ib: int) -> DatasetMarket:
    """A micro dataset's arrays at the rows ``take`` selects, cut to J_b products and I_b agents."""

    def opt(a, f):
        return None if a is None else f(take(a))

    def weights(w):
        w = _cut(w, 1, Ib)
        for axis in range(2, w.ndim):
            w = _cut_choices(w, axis, J, Jb)
        return w

    def values(v):
        v = _cut(v, 2, Ib)
        for axis in range(3, v.ndim):
            v = _cut_choices(v, axis, J, Jb)
        return v

    return DatasetMarket(
        weights=opt(ds.weights, weights),
        values=opt(ds.values, values),
        a=opt(ds.a, lambda a: _cut(a, 2, Ib)),
        b=opt(ds.b, lambda b: _cut_choices(b, 2, J, Jb)),
        c=opt(ds.c, lambda c: _cut(c, 1, Ib)),
        d=opt(ds.d, lambda d: _cut_choices(d, 1, J, Jb)),
    )


class Bucketed(Layout):
    """Markets in size classes (a :class:`._buckets.BucketPlan`), one program each, sums added.

    ``markets``, ``J`` and ``I`` hold each bucket's market indices and padded sizes (static);
    ``T``, ``J_all``: the padded problem's market count and product count.
    """

    markets: tuple[tuple[int, ...], ...] = eqx.field(static=True, default=())
    J: tuple[int, ...] = eqx.field(static=True, default=())
    I: tuple[int, ...] = eqx.field(static=True, default=())

    @classmethod
    def from_plan(cls, plan, batch: int | None = None) -> Bucketed:
        """The layout of a :class:`._buckets.BucketPlan`."""
        return cls(batch=batch, markets=tuple(tuple(int(t) for t in m) for m in plan.markets), J=plan.J, I=plan.I)

    @property
    def inline(self) -> bool:
        return self.batch is None

    def prepare(self, data: MarketData, micro=None):
        J = data.market.mask.shape[1]
        groups = []
        for idx, Jb, Ib in zip(self.markets, self.J, self.I, strict=True):
            subsets = subset_data(micro, idx)
            if subsets is not None:
                keep = lambda a: np.asarray(a)  # noqa: E731  (subset_data took the rows already)
                subsets = tuple(
                    None
                    if sub is None
                    else jax.tree_util.tree_map(
                        jnp.asarray, SubsetData(sub.index, cut_dataset(sub.arrays, keep, J, Jb, Ib))
                    )
                    for sub in subsets
                )
            groups.append(GroupData(cut_markets(data, idx, Jb, Ib), subsets))
        return tuple(groups)

    def _take(self, a, b: int):
        return a[np.asarray(self.markets[b]), : self.J[b]]

    def _place(self, parts, T: int, J: int):
        """The buckets' per-market results (pytrees alike) on the padded layout: a leaf of shape (markets,) goes to
        its markets' rows, one of (markets, products, ...) to their rows and first products (δ, evaluations,
        statuses, the aux, dδ/dx)."""

        def place(*leaves):
            first = leaves[0]
            out = jnp.zeros((T,) + ((J,) + first.shape[2:] if first.ndim >= 2 else ()), first.dtype)
            for b, leaf in enumerate(leaves):
                idx = np.asarray(self.markets[b])
                out = out.at[idx, : self.J[b]].set(leaf) if leaf.ndim >= 2 else out.at[idx].set(leaf)
            return out

        return jax.tree_util.tree_map(place, *parts)

    def forward(self, work: Work, x, ldata, delta0):
        outs = [group_forward(work, x, d, self._take(delta0, b), self.batch) for b, d in enumerate(ldata)]
        sums = tree_sum([o[0] for o in outs])
        fp, aux, jac = self._place([o[1:3] + o[4:] for o in outs], *delta0.shape)
        pulls = [o[3] for o in outs]
        evaluation = Evaluation(fp.x, fp.evaluations, fp.status, aux, jac)
        return sums, evaluation, lambda lam: sum(p(lam) for p in pulls)

    def value(self, work: Work, x, ldata, delta0):
        outs = [group_value(work, x, d, self._take(delta0, b), self.batch) for b, d in enumerate(ldata)]
        fp, aux = self._place([o[1:] for o in outs], *delta0.shape)
        return tree_sum([o[0] for o in outs]), Evaluation(fp.x, fp.evaluations, fp.status, aux)

    def statistics(self, work: Work, x, ldata, delta):
        outs = [group_statistics(work, x, d, self._take(delta, b), self.batch) for b, d in enumerate(ldata)]
        aux = self._place([o[2] for o in outs], *delta.shape)
        return tree_sum([o[0] for o in outs]), tree_sum([o[1] for o in outs]), aux
