"""Markets sharded over devices: every per-market array lives where its markets are solved.

The market axis T of every per-market array (products, agents, δ) is split over a 1-D device mesh
with axis name ``"markets"``. Each device runs the contraction, the implicit-function-theorem
derivative and every other per-market computation for its own markets; the only cross-device
traffic of an objective evaluation is the M-vector of instrument moments Z̃'δ/N (an all-reduce),
and its transpose in the gradient.

Two ways to run on the mesh, with identical results (to rounding):

- :func:`shard_setup` alone: place a padded :class:`~blpjax._objective.Setup` on the mesh and call
  the unchanged :func:`~blpjax._objective.objective` under ``jax.jit``; XLA's partitioner splits
  the vmapped market work. The batched contraction loop then stops when the slowest market of all
  devices has converged (one scalar all-reduce per iteration).
- :func:`sharded_objective`: the same objective as an explicit ``jax.shard_map`` program. Each
  device iterates its own markets until *they* have converged, then the moment sums are added
  with ``psum``. Same signature and outputs as :func:`~blpjax._objective.objective`.

T is padded to a multiple of the number of devices with inert markets (:func:`pad_setup`): no
real product (``mask`` all False), zero instruments and regressors, zero observed shares, and
agents with zero taste shocks. A padded market contributes exactly zero to every moment, its
δ stays 0, and it converges in one contraction evaluation.

Usage on one machine with several GPUs::

    import jax, blpjax
    from blpjax._sharding import market_mesh, shard_setup, shard_markets, sharded_objective

    mesh = market_mesh()                        # all local devices, axis "markets"
    setup = shard_setup(problem.setup, mesh)    # padded to a multiple of the device count
    delta0 = shard_markets(problem.logit_delta(), mesh)
    q, ev = jax.jit(sharded_objective, static_argnums=(4, 5))(theta, setup, conc, delta0, config, mesh)
    delta = ev.delta[: problem.T]               # drop the padded markets

Several hosts (one process per host, each seeing its local GPUs): call
``jax.distributed.initialize()`` (coordinator address, process count and id from the cluster's
environment, e.g. SLURM) before anything else touches JAX, build the same ``Problem`` in every
process (every process reads the same data), then ``market_mesh()`` spans ``jax.devices()`` of
all hosts. :func:`shard_markets` builds global arrays with ``jax.make_array_from_callback``, so
each process materialises only the markets of its own devices. Results that are replicated
(q, the gradient, θ) are identical in every process; per-market results (δ) are global arrays:
gather them with ``jax.experimental.multihost_utils.process_allgather`` before converting to NumPy.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from ._contraction import ContractionConfig
from ._gmm import Concentration, instrument_moments
from ._implicit import Market, Theta
from ._markets import Agents, Products
from ._objective import Evaluation, Setup, solve_deltas

AXIS = "markets"


def market_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"markets"`` over ``devices`` (default: every device, all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def padded_size(T: int, n: int) -> int:
    """The smallest multiple of ``n`` that is at least ``T``."""
    return -(-T // n) * n


def _pad_leading(a, T_new: int, fill=0):
    a = np.asarray(a)
    if a.shape[0] == T_new:
        return a
    pad = np.full((T_new - a.shape[0],) + a.shape[1:], fill, dtype=a.dtype)
    return np.concatenate([a, pad], axis=0)


def pad_setup(setup: Setup, T_new: int) -> Setup:
    """``setup`` with inert markets appended so that it has ``T_new`` markets.

    A padded market has no real product (``mask`` False), zero shares, instruments, regressors and
    characteristics, and agents with zero nodes, demographics and weights: its moment contribution
    Z̃'δ is exactly zero and its δ stays at 0 (the contraction stops after one evaluation).
    ``N``, ``ZX`` and every other pooled quantity are unchanged.
    """
    T = setup.mask.shape[0]
    if T_new < T:
        raise ValueError(f"cannot pad {T} markets down to {T_new}")
    if T_new == T:
        return setup
    m = setup.market
    market = Market(
        *(
            jnp.asarray(_pad_leading(a, T_new))
            for a in (m.X2, m.nodes, m.demographics, m.weights, m.log_shares, m.mask, m.nest_ids)
        )
    )
    return Setup(
        market,
        jnp.asarray(_pad_leading(setup.shares, T_new)),
        jnp.asarray(_pad_leading(setup.mask, T_new)),
        jnp.asarray(_pad_leading(setup.Z, T_new)),
        jnp.asarray(_pad_leading(setup.X1, T_new)),
        setup.ZX,
        jnp.asarray(_pad_leading(setup.fe_ids, T_new)),
        setup.N,
        setup.K2,
        setup.fe_sizes,
    )


def pad_products(products: Products, agents: Agents, T_new: int) -> tuple[Products, Agents]:
    """Products and agents with inert markets appended (for post-estimation on padded arrays)."""
    pad = lambda a: jnp.asarray(_pad_leading(a, T_new))  # noqa: E731
    products = jax.tree_util.tree_map(pad, products)
    agents = jax.tree_util.tree_map(pad, agents)
    return products, agents


def _put(a, sharding: NamedSharding):
    """A global array with ``sharding`` whose addressable shards are cut from host data ``a``."""
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_markets(tree, mesh: Mesh, T: int | None = None):
    """Pad the leading market axis of every array in ``tree`` and split it over ``mesh``.

    Args:
        tree: arrays (or a pytree of arrays) whose leading axis is the market axis T.
        mesh: a mesh with a ``"markets"`` axis (:func:`market_mesh`).
        T: the number of markets; default, the leading size of the first leaf. Leaves whose leading
            size is not T are replicated instead (pass a :class:`Setup` to :func:`shard_setup`, which
            knows its fields).

    Returns:
        The same tree with global arrays of leading size a multiple of the mesh size, padded with 0.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if T is None:
        T = np.shape(leaves[0])[0]
    T_new = padded_size(T, mesh.shape[AXIS])
    sharded, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())

    def put(a):
        if np.ndim(a) and np.shape(a)[0] == T:
            return _put(_pad_leading(a, T_new), sharded)
        return _put(a, replicated)

    return jax.tree_util.tree_map(put, tree)


def setup_specs(setup: Setup) -> Setup:
    """The ``PartitionSpec`` of every array of a :class:`Setup` (markets split; Z̃'X̃/N replicated)."""
    specs = jax.tree_util.tree_map(lambda _: P(AXIS), setup)
    return eqx.tree_at(lambda s: s.ZX, specs, P(), is_leaf=lambda x: isinstance(x, P))


def shard_setup(setup: Setup, mesh: Mesh) -> Setup:
    """Pad ``setup`` to a multiple of the mesh size with inert markets and place it on ``mesh``."""
    T_new = padded_size(setup.mask.shape[0], mesh.shape[AXIS])
    setup = pad_setup(setup, T_new)
    specs = setup_specs(setup)
    return jax.tree_util.tree_map(
        lambda a, s: _put(a, NamedSharding(mesh, s)), setup, specs, is_leaf=lambda x: isinstance(x, P)
    )


def sharded_objective(
    theta: Theta,
    setup: Setup,
    conc: Concentration,
    delta0: Float[Array, "T J"],
    config: ContractionConfig,
    mesh: Mesh,
) -> tuple[Array, Evaluation]:
    """q(θ) with every market solved on its own device; only the M moment sums cross devices.

    Same value and outputs as :func:`blpjax._objective.objective` on the unsharded ``setup``
    (``setup`` and ``delta0`` as made by :func:`shard_setup` / :func:`shard_markets`; the padded
    markets appear at the end of ``Evaluation.delta`` with δ = 0). Differentiable in θ (reverse mode
    through ``shard_map``; the per-market implicit derivative runs on each device).

    Args:
        theta: nonlinear parameters (replicated).
        setup: a sharded, padded setup (:func:`shard_setup`).
        conc: concentration maps of the weighting matrix (replicated).
        delta0: starting δ, sharded like the setup.
        config: contraction configuration (static).
        mesh: the mesh the setup lives on (static).

    Returns:
        (q, Evaluation), as :func:`blpjax._objective.objective`.
    """

    def local(theta, setup, delta0):
        fp = solve_deltas(theta, setup, delta0, config)
        g_delta = jax.lax.psum(instrument_moments(setup.Z, fp.x, setup.mask, setup.N), AXIS)
        return g_delta, fp.x, fp.evaluations, fp.status

    rep = jax.tree_util.tree_map(lambda _: P(), theta)
    g_delta, delta, evaluations, status = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(rep, setup_specs(setup), P(AXIS)),
        out_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
        check_vma=False,  # the contraction's loop state starts from constants, then varies by device
    )(theta, setup, delta0)
    g = conc.C @ g_delta
    q = setup.N * g @ conc.W @ g
    return q, Evaluation(delta, evaluations, status, g_delta)
