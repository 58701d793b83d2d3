"""The devices layout: markets split over a device mesh, each device mapping its own markets."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._engine.pieces import MarketData, SubsetData, subset_data
from .layouts import AXIS, Evaluation, GroupData, Layout, Work, group_forward, group_statistics, group_value


def padded_size(T: int, n: int) -> int:
    """The smallest multiple of ``n`` that is at least ``T``."""
    return -(-T // n) * n


def _pad_leading(a, T_new: int):
    a = np.asarray(a)
    if a.shape[0] == T_new:
        return a
    return np.concatenate([a, np.zeros((T_new - a.shape[0],) + a.shape[1:], a.dtype)], axis=0)


def put_global(a, sharding: NamedSharding):
    """A global array with ``sharding`` whose addressable shards are cut from host data ``a`` (each
    process materialises only its own devices' markets)."""
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def market_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"markets"`` over ``devices`` (default: every device, all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


class Sharded(Layout):
    """Markets split over a 1-D device mesh; each device maps its own markets (in chunks of ``batch``).

    T is padded to a multiple of the device count with inert markets (no product, zero weights),
    which contribute exactly zero to every sum.
    """

    mesh: Mesh = eqx.field(static=True, default=None)
    T: int = eqx.field(static=True, default=0)  # the problem's markets (before padding to the mesh)

    @property
    def inline(self) -> bool:
        return False

    @property
    def n(self) -> int:
        return self.mesh.shape[AXIS]

    def prepare(self, data: MarketData, micro=None):
        T = data.market.mask.shape[0]
        T_new = padded_size(T, self.n)
        sharding = NamedSharding(self.mesh, P(AXIS))
        markets = jax.tree_util.tree_map(lambda a: put_global(_pad_leading(a, T_new), sharding), data)
        subsets = subset_data(micro)
        if subsets is not None:
            subsets = tuple(None if sub is None else self._split(sub, T_new, sharding) for sub in subsets)
        return GroupData(markets, subsets)

    def _split(self, sub: SubsetData, T_new: int, sharding) -> SubsetData:
        """A survey of some markets laid out by device: each device's covered markets (device-local positions),
        padded to the same count with inert rows (zero weights) and split over the mesh."""
        per = T_new // self.n
        index = np.asarray(sub.index)
        rows = [np.flatnonzero(index // per == k) for k in range(self.n)]
        width = max(1, max(len(r) for r in rows))
        arrays = jax.tree_util.tree_map(np.asarray, sub.arrays)

        def stack(a):
            blocks = []
            for r in rows:
                block = np.zeros((width,) + a.shape[1:], a.dtype)  # inert rows: zero weights, zero values
                block[: len(r)] = a[r]
                blocks.append(block)
            return put_global(np.concatenate(blocks), sharding)

        local = np.concatenate([np.pad(index[r] % per, (0, width - len(r))) for r in rows])
        return SubsetData(put_global(local, sharding), jax.tree_util.tree_map(stack, arrays))

    def place(self, delta):
        """δ (T, J) on the host, padded to the mesh's multiple of markets and split over the devices."""
        T_new = padded_size(delta.shape[0], self.n)
        return put_global(_pad_leading(delta, T_new), NamedSharding(self.mesh, P(AXIS)))

    def _pad(self, delta):
        T_new = padded_size(delta.shape[0], self.n)
        return jnp.pad(delta, ((0, T_new - delta.shape[0]), (0, 0))) if T_new > delta.shape[0] else delta

    def _shard(self, local, x, ldata, delta, out_specs, *extra):
        rep = jax.tree_util.tree_map(lambda _: P(), extra)
        return jax.shard_map(
            local,
            mesh=self.mesh,
            in_specs=(P(), jax.tree_util.tree_map(lambda _: P(AXIS), ldata), P(AXIS), *rep),
            out_specs=out_specs,
            check_vma=False,  # the contraction's loop state starts from constants, then varies by device
        )(x, ldata, self._pad(delta), *extra)

    def _cut(self, tree, T: int):
        """The first T markets of every leaf, replicated: T × J is small next to the T × I × J work, and T need
        not divide over the mesh (a slice of a sharded axis would have no valid sharding)."""
        replicated = NamedSharding(self.mesh, P())
        return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a[:T], replicated), tree)

    def markets_of(self, delta):
        return self._cut(delta, self.T)

    def _evaluation(self, fp, aux, T, jac=None) -> Evaluation:
        x, evaluations, status, aux, jac = self._cut((fp.x, fp.evaluations, fp.status, aux, jac), T)
        return Evaluation(x, evaluations, status, aux, jac)

    def forward_and_gradient(self, work: Work, x, ldata, delta0, lam_of: Callable):
        """(sums, λ'∂sums/∂x, Evaluation) with ``lam_of(sums) -> λ`` evaluated on every device after the psum."""

        def local(x, d, d0):
            sums, fp, aux, pull, jac = group_forward(work, x, d, d0, self.batch)
            sums = jax.lax.psum(sums, AXIS)
            grad = jax.lax.psum(pull(lam_of(sums)), AXIS)
            return sums, grad, fp, aux, jac

        sums, grad, fp, aux, jac = self._shard(local, x, ldata, delta0, (P(), P(), P(AXIS), P(AXIS), P(AXIS)))
        return sums, grad, self._evaluation(fp, aux, self.T, jac)

    def forward(
        self, work: Work, x, ldata, delta0
    ):  # pragma: no cover - the gradient goes through forward_and_gradient
        raise NotImplementedError("Sharded layouts combine the pullback on each device: use forward_and_gradient.")

    def value(self, work: Work, x, ldata, delta0):
        def local(x, d, d0):
            sums, fp, aux = group_value(work, x, d, d0, self.batch)
            return jax.lax.psum(sums, AXIS), fp, aux

        sums, fp, aux = self._shard(local, x, ldata, delta0, (P(), P(AXIS), P(AXIS)))
        return sums, self._evaluation(fp, aux, self.T)

    def statistics(self, work: Work, x, ldata, delta):
        def local(x, d, dl):
            sums, jac, aux = group_statistics(work, x, d, dl, self.batch)
            return jax.lax.psum(sums, AXIS), jax.lax.psum(jac, AXIS), aux

        sums, jac, aux = self._shard(local, x, ldata, delta, (P(), P(), P(AXIS)))
        return sums, jac, self._cut(aux, self.T)
