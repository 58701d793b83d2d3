"""Large problems: estimation on sharded, bucketed or chunked markets, with the padded path's results.

Three programs already compute the objective and its gradient with the results of the plain padded
program (to rounding) but different costs:

- **devices** (:mod:`._sharding`): markets split over a device mesh; each device solves its own
  markets, only the M instrument-moment sums (and the P-vector gradient) cross devices;
- **buckets** (:mod:`._buckets`): markets grouped into a few (J, I) size classes, one vmapped
  program per class, so that small markets are not padded to the largest;
- **market_batch_size** (:mod:`._chunking`): markets processed that many at a time and the gradient
  formed in two passes, so that peak memory is O(batch · I · J) instead of O(T · I · J).

:class:`ScaleOut` chooses among them (``devices`` combines with ``market_batch_size``, and
``buckets`` with ``market_batch_size``; ``devices`` with ``buckets`` is not supported).
:func:`make_value_and_grad` returns the chosen ``(x, δ₀, conc) -> (q, ∂q/∂x, Evaluation)`` with δ in
the original padded (T, J) layout, which is what the optimiser drivers of :mod:`._optimize` take.
:func:`estimate_scaled` runs the GMM steps of :func:`blpjax._estimate.estimate` with it.

Post-estimation statistics (β, ξ, the moment Jacobian, standard errors, the updated W) are
computed by the unchanged :func:`blpjax._estimate._post` on the *padded* setup at the final δ:
no contraction is rerun, but the Jacobian ``jax.jacfwd`` of the moments through dδ/dθ holds the
padded T × I × J arrays once per step. For problems where even that does not fit, the optimisation
itself still runs in bounded memory; only this one evaluation per step is padded.

Micro moments are not supported on these paths (their survey weights are per-market arrays laid
out on the padded problem, which the bucketed, chunked and sharded programs do not split):
asking for both raises :class:`~blpjax.BLPSpecificationError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._buckets import BucketPlan, bucket_setup, bucketed_value_and_grad, market_sizes, plan_buckets
from ._chunking import chunked_solve_deltas, chunked_value_and_grad, moments_vjp, q_of_moments
from ._config import jit
from ._contraction import ContractionConfig
from ._errors import BLPSpecificationError
from ._estimate import StepResult, _post, _value_and_grad, estimate
from ._gmm import SE_TYPES, Concentration, instrument_moments
from ._markets import Products
from ._micro import MicroSetup
from ._objective import Evaluation, Setup
from ._optimize import OptaxOptimizer, ScipyOptimizer, optax_minimize, scipy_minimize
from ._params import ParameterSpec
from ._sharding import AXIS, _put, market_mesh, pad_setup, padded_size, setup_specs, shard_markets

AUTO_MAX_BUCKETS = 8


@dataclass(frozen=True)
class ScaleOut:
    """How to lay out the market work of an estimation (all ``None``: one padded vmapped program).

    Args:
        devices: ``None`` (the default device only), an int n (the first n of ``jax.devices()``,
            across all hosts after ``jax.distributed.initialize()``) or a sequence of JAX devices.
            Markets are split over a 1-D mesh of these devices.
        buckets: ``None``, an int (at most that many (J, I) size classes, each its own program to
            compile; fewer when they cost within 2% of the best) or ``"auto"`` (at most
            ``AUTO_MAX_BUCKETS``).
        market_batch_size: markets solved (and differentiated) at a time within each bucket or
            device; bounds peak memory by that many markets' I × J arrays.

    Raises:
        BLPSpecificationError: bad values, more devices than JAX sees, or devices with buckets.
    """

    devices: int | tuple | None = None
    buckets: int | str | None = None
    market_batch_size: int | None = None

    def __post_init__(self):
        d, b, n = self.devices, self.buckets, self.market_batch_size
        if d is not None:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer, Sequence)) or isinstance(d, str):
                raise BLPSpecificationError(f"devices must be None, an int or a sequence of JAX devices, not {d!r}.")
            if isinstance(d, (int, np.integer)):
                available = jax.device_count()
                if d < 1 or d > available:
                    raise BLPSpecificationError(
                        f"devices={d}, but JAX sees {available} device(s) ({jax.default_backend()}). On CPU, "
                        f"XLA_FLAGS=--xla_force_host_platform_device_count={d} (set before importing JAX) makes "
                        "that many host devices; on several hosts call jax.distributed.initialize() first."
                    )
                object.__setattr__(self, "devices", int(d))
            else:
                d = tuple(d)
                if not d or not all(isinstance(x, jax.Device) for x in d):
                    raise BLPSpecificationError("devices must be a non-empty sequence of jax.Device (jax.devices()).")
                if len(set(d)) != len(d):
                    raise BLPSpecificationError("devices lists the same device more than once.")
                object.__setattr__(self, "devices", d)
        if b is not None and b != "auto":
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
                raise BLPSpecificationError(f"buckets must be None, a positive int or 'auto', not {b!r}.")
            object.__setattr__(self, "buckets", int(b))
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise BLPSpecificationError(f"market_batch_size must be None or a positive int, not {n!r}.")
            object.__setattr__(self, "market_batch_size", int(n))
        if self.devices is not None and self.buckets is not None:
            raise BLPSpecificationError(
                "devices and buckets together are not supported: the bucketed programs run on one device. "
                "Use devices (optionally with market_batch_size) to spread markets over devices, or buckets "
                "(optionally with market_batch_size) on one device."
            )

    @property
    def plain(self) -> bool:
        """True when nothing is asked for (the padded single-program path)."""
        return self.devices is None and self.buckets is None and self.market_batch_size is None

    def device_list(self) -> list:
        """The devices of the mesh (``devices`` resolved against ``jax.devices()``)."""
        if self.devices is None:
            return [jax.devices()[0]]
        if isinstance(self.devices, int):
            return jax.devices()[: self.devices]
        return list(self.devices)

    def max_buckets(self) -> int | None:
        return AUTO_MAX_BUCKETS if self.buckets == "auto" else self.buckets

    def path(self) -> str:
        """A short name of the program: ``padded``, ``sharded``, ``bucketed``, ``chunked``, with ``+chunked``."""
        chunk = "+chunked" if self.market_batch_size is not None else ""
        if self.devices is not None:
            return "sharded" + chunk
        if self.buckets is not None:
            return "bucketed" + chunk
        return "chunked" if chunk else "padded"


def _shard_setup(setup: Setup, mesh: Mesh) -> Setup:
    """:func:`blpjax._sharding.shard_setup`, robust to optional (None) fields of :class:`Setup`."""
    setup = pad_setup(setup, padded_size(setup.mask.shape[0], mesh.shape[AXIS]))
    return jax.tree_util.tree_map(
        lambda a, s: _put(a, NamedSharding(mesh, s)), setup, setup_specs(setup), is_leaf=lambda x: isinstance(x, P)
    )


def check_supported(scale: ScaleOut, setup: Setup, micro) -> None:
    if scale.plain:
        return
    if getattr(setup, "supply", None) is not None:
        raise BLPSpecificationError(
            f"a supply side is not supported with ScaleOut path {scale.path()!r} yet: the sharded, bucketed and "
            "chunked programs compute the demand moments only. Estimate supply without devices/buckets/"
            "market_batch_size."
        )
    if micro is None:
        return
    option = (
        f"devices={scale.devices!r}"
        if scale.devices is not None
        else f"buckets={scale.buckets!r}"
        if scale.buckets is not None
        else f"market_batch_size={scale.market_batch_size!r}"
    )
    raise BLPSpecificationError(
        f"micro moments are not supported with {option}: their survey weights and values are per-market arrays "
        "on the padded (T, I, J) layout, which the sharded, bucketed and chunked programs do not split. "
        "Estimate with micro moments without devices/buckets/market_batch_size."
    )


# ---- the sharded program: per-device contraction (optionally in chunks), two-pass gradient -------------------


@partial(jit, static_argnums=(0, 1, 2, 3, 4))
def _sharded_value_and_grad(unpack, config, mesh, batch_size, T, x, delta0, conc, ssetup):
    """(q, ∂q/∂x, Evaluation on the first T markets, padded δ) on a mesh, markets split over devices.

    Each device solves its markets (``batch_size`` at a time), the M moment sums are ``psum``-ed,
    then each device forms λ'∂ḡ/∂x for its markets by the implicit derivative at its δ and the
    P-vectors are ``psum``-ed: the same two-pass gradient as :mod:`._chunking`.
    """
    T_new = ssetup.mask.shape[0]
    if delta0.shape[0] < T_new:
        delta0 = jnp.pad(delta0, ((0, T_new - delta0.shape[0]), (0, 0)))

    def local(x, setup, d0, conc):
        fp = chunked_solve_deltas(jax.lax.stop_gradient(unpack(x)), setup, d0, config, batch_size)
        g_delta = jax.lax.psum(instrument_moments(setup.Z, fp.x, setup.mask, setup.N), AXIS)
        q = q_of_moments(g_delta, conc, setup.N)
        lam = jax.grad(q_of_moments)(g_delta, conc, setup.N)
        grad = jax.lax.psum(moments_vjp(unpack, x, setup, fp.x, lam, batch_size), AXIS)
        return q, grad, fp.x, fp.evaluations, fp.status, g_delta

    q, grad, delta, evaluations, status, g_delta = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), setup_specs(ssetup), P(AXIS), P()),
        out_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS), P()),
        check_vma=False,  # the contraction's loop state starts from constants, then varies by device
    )(x, ssetup, delta0, conc)
    # the (T, J) views are replicated (T × J is small next to the T × I × J work; T need not divide over the
    # mesh); the padded, sharded δ is returned too, to warm-start the next call without moving it
    replicated = NamedSharding(mesh, P())
    first = [jax.lax.with_sharding_constraint(a[:T], replicated) for a in (delta, evaluations, status)]
    return q, grad, Evaluation(*first, g_delta), delta


_chunked_jit = jit(chunked_value_and_grad, static_argnums=(0, 1, 6))
_bucketed_jit = jit(bucketed_value_and_grad, static_argnums=(0, 1, 6))


def _gather(a):
    """A host copy of a possibly multi-host global array."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


class ValueAndGrad:
    """``(x, δ₀, conc) -> (q, ∂q/∂x, Evaluation)`` on the path a :class:`ScaleOut` chose.

    ``Evaluation.delta`` / ``.evaluations`` / ``.status`` are on the original padded (T, J) / (T,)
    layout whatever the path, so the result is a drop-in for ``blpjax._estimate._value_and_grad``
    (and δ can warm-start the next call). Also callable inside ``jax.jit`` (as :attr:`traceable`).

    Attributes:
        scale: the configuration.
        path: ``"padded"``, ``"chunked"``, ``"bucketed"``, ``"bucketed+chunked"``, ``"sharded"`` or
            ``"sharded+chunked"``.
        plan: the :class:`~blpjax._buckets.BucketPlan` (bucketed paths), else None.
        mesh: the device mesh (sharded paths), else None.
    """

    def __init__(self, scale: ScaleOut, spec: ParameterSpec, config: ContractionConfig, setup: Setup, micro=None):
        check_supported(scale, setup, micro)
        self.scale, self.path = scale, scale.path()
        self.plan: BucketPlan | None = None
        self.mesh: Mesh | None = None
        self._last = self._conc = None
        T = setup.mask.shape[0]
        unpack, batch = spec.unpack, scale.market_batch_size
        if scale.devices is not None:
            mesh = market_mesh(scale.device_list())
            ssetup = _shard_setup(setup, mesh)
            self.mesh, self._T_new = mesh, padded_size(T, mesh.shape[AXIS])

            def traceable(x, d0, conc):
                return _sharded_value_and_grad(unpack, config, mesh, batch, T, x, d0, conc, ssetup)[:3]

            self._sharded = lambda x, d0, conc: _sharded_value_and_grad(
                unpack, config, mesh, batch, T, x, d0, conc, ssetup
            )
        elif scale.buckets is not None:
            self.plan = plan_buckets(*market_sizes(setup.mask, setup.market.weights), max_buckets=scale.max_buckets())
            bsetup = bucket_setup(setup, self.plan)

            def traceable(x, d0, conc):
                return _bucketed_jit(unpack, config, x, d0, conc, bsetup, batch)
        elif batch is not None:

            def traceable(x, d0, conc):
                return _chunked_jit(unpack, config, x, d0, conc, setup, batch)
        else:

            def traceable(x, d0, conc):
                return _value_and_grad(spec, config, x, d0, conc, setup, micro)

        self.traceable: Callable = traceable

    def _replicate(self, tree):
        replicated = NamedSharding(self.mesh, P())
        return jax.tree_util.tree_map(lambda a: _put(_gather(a), replicated), tree)

    def __call__(self, x, delta0, conc: Concentration):
        if self.mesh is None or isinstance(delta0, jax.core.Tracer):
            return self.traceable(x, delta0, conc)
        # sharded, eagerly: reuse the sharded padded δ behind the last δ we returned (the optimiser's warm
        # start), otherwise place δ₀ on the mesh from the host (each process only its own markets)
        if self._last is not None and delta0 is self._last[0]:
            d0 = self._last[1]
        else:
            d0 = shard_markets(_gather(delta0), self.mesh)
        # θ and the weighting maps replicated on the mesh (with several hosts, a committed single-device
        # array cannot enter a program over all hosts' devices); conc is the same object for a whole step
        if self._conc is None or self._conc[0] is not conc:
            self._conc = (conc, self._replicate(conc))
        q, grad, ev, padded = self._sharded(self._replicate(x), d0, self._conc[1])
        self._last = (ev.delta, padded)
        return q, grad, ev


def make_value_and_grad(
    scale: ScaleOut,
    spec: ParameterSpec,
    config: ContractionConfig,
    setup: Setup,
    products: Products | None = None,
    micro: MicroSetup | None = None,
) -> ValueAndGrad:
    """The objective's value and gradient on the path ``scale`` chooses (see :class:`ValueAndGrad`).

    Args:
        scale: the :class:`ScaleOut` configuration.
        spec: the nonlinear parameters' structure (``ParameterSpec``).
        config: contraction configuration.
        setup: the padded :class:`~blpjax._objective.Setup` (fixed effects absorbed over all markets).
        products: unused (market sizes come from ``setup``); accepted for symmetry with ``estimate``.
        micro: micro moments; only with ``scale.plain``.

    Raises:
        BLPSpecificationError: micro moments with a scale-out option.
    """
    del products
    return ValueAndGrad(scale, spec, config, setup, micro)


def estimate_scaled(
    scale: ScaleOut,
    spec: ParameterSpec,
    setup: Setup,
    products: Products,
    *,
    W,
    steps: int,
    se_type: str,
    W_type: str,
    optimizer: ScipyOptimizer | OptaxOptimizer,
    config: ContractionConfig,
    delta0,
    x0: np.ndarray | None = None,
    micro: MicroSetup | None = None,
    initial_W=None,
) -> list[StepResult]:
    """:func:`blpjax._estimate.estimate` with the optimiser's value and gradient on ``scale``'s path.

    Same arguments and :class:`~blpjax._estimate.StepResult` s. Each step optimises with
    :func:`make_value_and_grad`, evaluates the objective at the estimate from the step's δ₀ on the
    same path (so ``evaluations`` / ``status`` are the scaled path's), and computes the statistics
    with ``_estimate._post`` on the padded ``setup`` at that δ (one padded Jacobian per step, no
    contraction). With ``scale.plain`` this is ``estimate`` itself.
    """
    if scale.plain:
        return estimate(
            spec,
            setup,
            products,
            W=W,
            steps=steps,
            se_type=se_type,
            W_type=W_type,
            optimizer=optimizer,
            config=config,
            delta0=delta0,
            x0=x0,
            micro=micro,
            initial_W=initial_W,
        )
    check_supported(scale, setup, micro)
    if se_type not in SE_TYPES or W_type not in SE_TYPES:
        raise BLPSpecificationError(f"se_type and W_type must be one of {SE_TYPES}.")
    vg = make_value_and_grad(scale, spec, config, setup, products)
    x = np.asarray(spec.x0 if x0 is None else x0, np.float64)
    post_args = (products.X1, products.cluster_ids, products.n_clusters, se_type, W_type)
    W = jnp.asarray(initial_W if W is None else W)
    optax_run = None
    if isinstance(optimizer, OptaxOptimizer) and spec.P:
        optax_run = jax.jit(
            lambda x_, d0, conc: optax_minimize(
                lambda y, d: vg.traceable(y, d, conc),
                lambda y, d: vg.traceable(y, d, conc)[0],
                x_,
                d0,
                spec.lower,
                spec.upper,
                optimizer,
            )
        )

    results: list[StepResult] = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        conc = Concentration.build(setup.ZX, W)
        if spec.P and optax_run is None:
            res = scipy_minimize(
                lambda x_, d0, conc=conc: vg(x_, d0, conc), x, delta0, spec.lower, spec.upper, optimizer
            )
            x_hat, info = res.x, (res.success, res.iterations, res.evaluations, res.message)
        elif spec.P:
            res = optax_run(jnp.asarray(x), delta0, conc)
            x_hat = np.asarray(res.x)
            info = (bool(res.success), int(res.iterations), int(res.evaluations), "optax")
        else:
            x_hat, info = x, (True, 0, 1, "no nonlinear parameters: closed form")
        # from the step's δ₀ (a cold start at the estimate), as estimate() does
        q, gradient, ev = vg(jnp.asarray(x_hat), delta0, conc)
        delta = jnp.asarray(_gather(ev.delta))
        evaluations, status = jnp.asarray(_gather(ev.evaluations)), jnp.asarray(_gather(ev.status))
        q, gradient, g_delta = (jnp.asarray(_gather(a)) for a in (q, gradient, ev.g_delta))
        out = _post(
            jnp.asarray(x_hat),
            delta,
            g_delta,
            spec,
            setup,
            conc,
            *post_args,
            se_type == "unadjusted" and step == 1,
            config,
            None,
        )
        out = jax.tree_util.tree_map(lambda a: a.block_until_ready(), out)
        results.append(
            StepResult(
                step=step,
                theta=jnp.asarray(x_hat),
                beta=out["beta"],
                objective=q,
                gradient=gradient,
                delta=delta,
                xi=out["xi"],
                fixed_effects=out["fe"],
                W=W,
                updated_W=out["updated_W"],
                moments=out["moments"],
                moments_jacobian=out["G"],
                covariances=out["cov"],
                se=out["se"],
                evaluations=evaluations,
                status=status,
                optimizer_success=info[0],
                optimizer_iterations=info[1],
                objective_evaluations=info[2],
                optimizer_message=info[3],
                seconds=time.perf_counter() - t0,
                delta0=jnp.asarray(_gather(delta0)),
            )
        )
        W = out["updated_W"]
        x = np.asarray(x_hat)
        delta0 = delta
    return results


__all__ = ["ScaleOut", "ValueAndGrad", "estimate_scaled", "make_value_and_grad"]
