"""The objective, its gradient and the statistics of a GMM step, on any layout: :class:`Engine`.

An :class:`Engine` is one estimation problem laid out for evaluation: the per-market arrays as its
:mod:`._layouts` layout wants them, the product-level arrays the statistics need, and the micro
moments' reduction. It is a pytree (a static layout and parameter structure, array leaves), so the
same object is evaluated eagerly by :meth:`Problem.solve` and traced and vmapped over replications
by a Monte Carlo study. Its three evaluations are module-level programs compiled once per
(layout, parameter structure, contraction settings):

- :meth:`Engine.value_and_grad`: (q, ∂q/∂x, :class:`._layouts.Evaluation`, :class:`._engine.Reduced`);
- :meth:`Engine.value`: (q, by-products) with δ(θ) solved inside, differentiable to any order
  (:meth:`Engine.hessian`: forward over reverse of it);
- :meth:`Engine.statistics`: β, ξ, ω, the moment Jacobian through dδ/dθ, S, standard errors and the
  updated W of a step, from the layout's summed pieces and their Jacobian plus product-level
  arrays (no T × I × J array outside the layout's map).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from .._base import config
from .._base.config import jit
from .._engine.gmm import (
    Concentration,
    condition_number,
    parameter_covariances,
    stacked_moment_covariances,
    symmetric_inverse,
)
from .._engine.pieces import (
    MarketData,
    Pieces,
    Reduced,
    market_data,
    micro_covariances,
    micro_moments,
    moment_values,
    part_values,
    product_moments,
    reduce,
    statics,
)
from .._engine.setup import Setup, absorb_columns
from .._inversion.contraction import ContractionConfig
from .._layouts.devices import Sharded, put_global
from .._layouts.layouts import Evaluation, Layout, Work, jacobian_with_aux
from .._micro.core import MicroSetup
from .._model.containers import Products
from .._model.params import ParameterSpec


class ProductArrays(eqx.Module):
    """Product-level (T, J) arrays of a problem: what the statistics of a step read besides the sums."""

    mask: Array
    Z: Float[Array, "T J MD"]  # absorbed demand instruments
    X1: Float[Array, "T J K1"]  # absorbed linear characteristics
    X1_raw: Float[Array, "T J K1"]
    fe_ids: Int[Array, "T J F"]
    cluster_ids: Int[Array, "T J"]
    ZX: Float[Array, "M K"]  # Z'X/N of the stacked (demand, supply) linear IV problem
    X3: Float[Array, "T J K3"] | None
    ZS: Float[Array, "T J MS"] | None
    supply_fe_ids: Int[Array, "T J FS"] | None
    N: int = eqx.field(static=True)
    fe_sizes: tuple[int, ...] = eqx.field(static=True)
    n_clusters: int = eqx.field(static=True)
    supply_fe_sizes: tuple[int, ...] = eqx.field(static=True, default=())

    @classmethod
    def build(cls, setup: Setup, products: Products) -> ProductArrays:
        sup = setup.supply
        return cls(
            setup.mask,
            setup.Z,
            setup.X1,
            products.X1,
            setup.fe_ids,
            products.cluster_ids,
            jnp.asarray(setup.ZX_all(host=True)),
            None if sup is None else sup.X3,
            None if sup is None else sup.ZS,
            None if sup is None else sup.fe_ids,
            setup.N,
            setup.fe_sizes,
            products.n_clusters,
            () if sup is None else sup.fe_sizes,
        )


class Statistics(eqx.Module):
    """What a GMM step computes at its estimate once the optimiser has stopped (arrays)."""

    beta: Float[Array, " K1"]
    xi: Float[Array, "T J"]
    fixed_effects: Float[Array, "T J"]
    moments: Float[Array, " MW"]
    moments_jacobian: Float[Array, "MW PK"]
    covariances: Float[Array, "PK PK"]
    se: Float[Array, " PK"]
    updated_W: Float[Array, "MW MW"]
    micro_values: Float[Array, " MM"] | None = None
    micro_covariances: Float[Array, "MM MM"] | None = None
    gamma: Float[Array, " K3"] | None = None
    omega: Float[Array, "T J"] | None = None
    costs: Float[Array, "T J"] | None = None
    markups: Float[Array, "T J"] | None = None
    conditions: Float[Array, " 2"] | None = None  # condition numbers of S (inverted for W) and of G'WG (for SEs)

    CONDITION_NAMES = (
        "the moment covariances S (inverted for the updated weighting matrix)",
        "G'WG (inverted for the standard errors)",
    )


class StatisticsOptions(eqx.Module):
    """Static options of the statistics program (``unadjusted_first``: unadjusted SEs in a first step,
    whose bread uses S⁻¹, as PyBLP; the only way steps differ)."""

    se_type: str = eqx.field(static=True, default="robust")
    W_type: str = eqx.field(static=True, default="robust")
    unadjusted_first: bool = eqx.field(static=True, default=False)


def _without_second(sums: Pieces) -> Pieces:
    return dataclasses.replace(sums, micro_second=None)


def _stacked_moments(sums: Pieces, N: int, micro: MicroSetup | None):
    """(ḡ_δ, micro moments): the moments before β and γ are concentrated out (their Jacobian is G_θ)."""
    g = product_moments(sums, N)
    return g if micro is None else jnp.concatenate([g, micro_moments(sums, micro)])


def step_statistics(
    x, delta, sums: Pieces, jac: Pieces, aux, conc: Concentration, products: ProductArrays, micro, options, spec=None
) -> Statistics:
    """The statistics of a step from the layout's sums at the estimate, their Jacobian and (T, J) arrays.

    Standard errors and covariances are of (θ, β, γ) whichever linear parameters were concentrated out or optimised
    with θ (the same GMM sandwich); parameters fixed by the user get zero rows and columns.
    """
    N, mask = products.N, products.mask
    K1 = products.X1.shape[-1]
    linear = None if spec is None else spec.linear_at(x)
    g_delta = product_moments(sums, N)
    coefficients = conc.coefficients(g_delta, linear)  # (β, γ)
    beta = coefficients[:K1]
    delta_t = absorb_columns(delta[..., None], products.fe_ids, mask, products.fe_sizes)[..., 0]
    xi = jnp.where(mask, delta_t - products.X1 @ beta, 0.0)
    fe = jnp.where(mask, delta - products.X1_raw @ beta - xi, 0.0)
    moments = conc.C @ conc.residual(g_delta, linear)
    gamma = omega = None
    blocks = [(xi, products.Z)]
    if products.X3 is not None:
        gamma = coefficients[K1:]
        transformed = aux.transformed
        if products.supply_fe_sizes:  # f(c) within the cost equation's fixed effects (X3 is absorbed already)
            transformed = absorb_columns(
                transformed[..., None], products.supply_fe_ids, mask, products.supply_fe_sizes
            )[..., 0]
        omega = jnp.where(mask, transformed - products.X3 @ gamma, 0.0)
        blocks.append((omega, products.ZS))
    base = _without_second(sums)
    if x.shape[0]:
        G_theta = jax.vmap(
            lambda t: jax.jvp(lambda s: _stacked_moments(s, N, micro), (base,), (t,))[1], in_axes=-1, out_axes=-1
        )(jac)
    else:
        G_theta = jnp.zeros((products.ZX.shape[0] + (micro.MM if micro is not None else 0), 0))
    ZX = products.ZX
    if micro is not None:
        ZX = jnp.concatenate([ZX, jnp.zeros((micro.MM, ZX.shape[1]))])
    estimated = None
    if linear is not None:
        # columns (θ, β, γ): θ's from the pieces; a linear parameter optimised with θ adds its pieces' column (the
        # supply side reads it) to −Z'X/N; a fixed one is not estimated (dropped, zero in the covariances)
        P_theta, free = spec.P_theta, np.asarray(spec.linear_free, np.int64)
        through_pieces = jnp.zeros_like(ZX)
        if free.size:
            through_pieces = through_pieces.at[:, free].set(G_theta[:, P_theta:])
        G_theta = G_theta[:, :P_theta]
        ZX = ZX - through_pieces
        estimated = np.r_[np.ones(P_theta, bool), ~spec.fixed_linear]
    G = jnp.concatenate([G_theta, -ZX], axis=1)
    args = (mask, N)
    S_w = stacked_moment_covariances(blocks, *args, options.W_type, products.cluster_ids, products.n_clusters)
    S = (
        S_w
        if options.se_type == options.W_type
        else stacked_moment_covariances(blocks, *args, options.se_type, products.cluster_ids, products.n_clusters)
    )
    micro_values = micro_cov = None
    if micro is not None:
        micro_values = moment_values(part_values(sums, micro), micro)
        micro_cov = micro_covariances(sums, micro)
        moments = jnp.concatenate([moments, micro.observed - micro_values])
        S_w = jax.scipy.linalg.block_diag(S_w, N * micro_cov)
        S = jax.scipy.linalg.block_diag(S, N * micro_cov)
    updated_W = symmetric_inverse(S_w)
    W_cov = symmetric_inverse(S) if options.unadjusted_first else conc.W
    if estimated is None:
        cov, bread_condition = parameter_covariances(G, W_cov, S, robust=options.se_type != "unadjusted")
    else:
        keep = np.flatnonzero(estimated)
        sub, bread_condition = parameter_covariances(G[:, keep], W_cov, S, robust=options.se_type != "unadjusted")
        cov = jnp.zeros((G.shape[1], G.shape[1])).at[np.ix_(keep, keep)].set(sub)
    se = jnp.sqrt(jnp.diag(cov) / N)
    has_supply = products.X3 is not None
    return Statistics(
        beta=beta,
        xi=xi,
        fixed_effects=fe,
        moments=moments,
        moments_jacobian=G,
        covariances=cov,
        se=se,
        updated_W=updated_W,
        micro_values=micro_values,
        micro_covariances=micro_cov,
        gamma=gamma,
        omega=omega,
        costs=aux.costs if has_supply else None,
        markups=aux.markups if has_supply else None,
        conditions=jnp.stack([condition_number(S_w), bread_condition]),
    )


# --- the programs (module level: compiled once per layout, parameter structure and settings) ---------------
def _lam(conc, N, micro, linear):
    return lambda sums: jax.grad(lambda s: reduce(s, conc, N, micro, linear)[0])(sums)


def _value_and_grad_body(layout: Layout, work: Work, x, delta0, conc, ldata, micro, N: int):
    linear = work.spec.linear_at(x)
    if isinstance(layout, Sharded):
        sums, grad, ev = layout.forward_and_gradient(work, x, ldata, delta0, _lam(conc, N, micro, linear))
    else:
        sums, ev, pull = layout.forward(work, x, ldata, delta0)
        grad = pull(_lam(conc, N, micro, linear)(sums))
    if work.spec.linear_free:  # q also depends on the linear parameters in x directly, through the moments
        grad = grad + jax.grad(lambda y: reduce(sums, conc, N, micro, work.spec.linear_at(y))[0])(x)
    q, reduced = reduce(sums, conc, N, micro, linear)
    return q, grad, ev, reduced


def _value_body(layout: Layout, work: Work, x, delta0, conc, ldata, micro, N: int):
    sums, ev = layout.value(work, x, ldata, delta0)
    q, reduced = reduce(sums, conc, N, micro, work.spec.linear_at(x))
    return q, (ev, reduced)


def _statistics_body(layout: Layout, work: Work, options, x, delta, conc, ldata, micro, products):
    sums, jac, aux = layout.statistics(work, x, ldata, delta)
    delta = layout.markets_of(delta)  # a device mesh's δ carries padded markets
    return step_statistics(x, delta, sums, jac, aux, conc, products, micro, options, work.spec)


def _hessian_body(layout: Layout, work: Work, x, delta0, conc, ldata, micro, N: int, elements: int):
    """Forward over reverse, the forward tangents in chunks on large problems (:func:`jacobian_with_aux`: on
    Petrin's 13 × 210 × 1,000 elements, P = 13, two tangents at a time take 2.75 s against 3.1 s all at once)."""

    def gradient(y):
        return jax.grad(lambda z: _value_body(layout, work, z, delta0, conc, ldata, micro, N)[0])(y), None

    return jacobian_with_aux(gradient, x, elements, aux=False)[0]


_STATIC_VG = (0, 1, 7)
_programs = {
    inline: {
        "value_and_grad": jit(_value_and_grad_body, inline=inline, static_argnums=_STATIC_VG),
        "value": jit(_value_body, inline=inline, static_argnums=_STATIC_VG),
        "statistics": jit(_statistics_body, once=True, inline=inline, static_argnums=(0, 1, 2)),
        "hessian": jit(_hessian_body, once=True, inline=inline, static_argnums=(*_STATIC_VG, 8)),
    }
    for inline in (True, False)
}


class Engine(eqx.Module):
    """One problem laid out for evaluation (a pytree: static layout and structure, array leaves).

    Attributes:
        layout: how markets are mapped (:mod:`._layouts`).
        work: the parameter unpacking, per-market statics and contraction settings.
        ldata: the per-market arrays in the layout's form.
        micro: the micro moments' reduction (observed values and structure; no per-market arrays), or None.
        products: the product-level arrays of the statistics.
        elements: market × product × agent elements of the padded problem (chooses compiler settings).
    """

    layout: Layout = eqx.field(static=True)
    work: Work = eqx.field(static=True)
    ldata: object
    micro: MicroSetup | None
    products: ProductArrays
    elements: int = eqx.field(static=True)

    @classmethod
    def build(
        cls,
        layout: Layout,
        spec: ParameterSpec,
        config: ContractionConfig,
        setup: Setup,
        products: Products,
        micro: MicroSetup | None = None,
        prepared: tuple | None = None,
    ) -> Engine:
        """Lay out ``setup`` (and the micro moments' per-market arrays) for ``layout`` (host side).

        ``prepared``: ``(ldata, micro reduction, product arrays)`` of an earlier engine of the same problem,
        layout, micro moments and cost bounds, reused instead of laid out again.
        """
        work = Work(spec, statics(setup, micro), config)
        if prepared is not None:
            return cls(layout, work, *prepared, setup.elements)
        data: MarketData = market_data(setup, micro)
        reduction = None if micro is None else dataclasses.replace(micro, datasets=())
        product_arrays = ProductArrays.build(setup, products)
        if isinstance(layout, Sharded):  # everything but the markets replicated on the mesh
            replicated = NamedSharding(layout.mesh, P())
            reduction, product_arrays = jax.tree_util.tree_map(
                lambda a: put_global(a, replicated), (reduction, product_arrays)
            )
        return cls(layout, work, layout.prepare(data, micro), reduction, product_arrays, setup.elements)

    @property
    def N(self) -> int:
        return self.products.N

    def concentration(self, W, host: bool = True) -> Concentration:
        """The maps that concentrate (β, γ) out for weighting matrix W (those the parameters leave to GMM)."""
        spec = self.work.spec
        concentrated = spec.concentrated if spec.has_linear else None
        if host:
            return Concentration.build_host(gather(self.products.ZX), gather(W), concentrated)
        return Concentration.build(self.products.ZX, W, concentrated=concentrated)

    def _program(self, name: str):
        return _programs[self.layout.inline][name]

    def cache_size(self, name: str = "value_and_grad") -> int:
        """How many programs ``name`` (``value_and_grad``, ``value``, ``statistics``, ``hessian``) has compiled
        for this layout's tracing mode (tests check that nothing is compiled again when only θ changes)."""
        return self._program(name)._cache_size()

    def _args(self, x, delta, conc):
        """On a device mesh (eagerly): θ and the weighting maps replicated, δ padded and split over the
        devices (each process places only its own markets); as given otherwise."""
        if isinstance(self.layout, Sharded) and not isinstance(x, jax.core.Tracer):
            replicated = NamedSharding(self.layout.mesh, P())
            x, conc = jax.tree_util.tree_map(lambda a: put_global(gather(a), replicated), (x, conc))
            delta = self.layout.place(gather(delta))
        return x, delta, conc

    def value_and_grad(self, x, delta0, conc: Concentration) -> tuple[Array, Array, Evaluation, Reduced]:
        """(q, ∂q/∂x, Evaluation, Reduced) at x from the warm start δ₀."""
        x, delta0, conc = self._args(x, delta0, conc)
        return self._program("value_and_grad")(self.layout, self.work, x, delta0, conc, self.ldata, self.micro, self.N)

    def value(self, x, delta0, conc: Concentration):
        """(q, (Evaluation, Reduced)), differentiable in x to any order."""
        x, delta0, conc = self._args(x, delta0, conc)
        return self._program("value")(self.layout, self.work, x, delta0, conc, self.ldata, self.micro, self.N)

    def hessian(self, x, delta0, conc: Concentration) -> Array:
        """The exact Hessian of q at x (forward over reverse through the implicit δ(θ))."""
        x, delta0, conc = self._args(x, delta0, conc)
        return self._program("hessian")(
            self.layout, self.work, x, delta0, conc, self.ldata, self.micro, self.N, self.elements
        )

    def statistics(self, x, delta, conc: Concentration, options: StatisticsOptions) -> Statistics:
        """The statistics of a step at x with δ solving the share equations there."""
        x, delta, conc = self._args(x, delta, conc)
        program = self._program("statistics")
        if self.elements < config.settings.quick_elements and not isinstance(x, jax.core.Tracer):
            program = program.quick
        return program(self.layout, self.work, options, x, delta, conc, self.ldata, self.micro, self.products)

    def precompile_statistics(self, x, delta, conc, options: StatisticsOptions):
        """Trace the statistics program for these shapes now and compile it on a background thread
        (a future; None on device meshes, whose arguments are placed at the call)."""
        if isinstance(self.layout, Sharded):
            return None
        program = self._program("statistics")
        if self.elements < config.settings.quick_elements:
            program = program.quick
        shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), (x, delta))
        return program.precompile(self.layout, self.work, options, *shapes, conc, self.ldata, self.micro, self.products)


def gather(a):
    """A host copy of a possibly multi-host global array."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
