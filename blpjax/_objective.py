"""The GMM objective q(θ) as a pure function, and the θ-independent set-up it reads.

Everything that does not depend on θ (absorbed instruments and regressors, Z̃'X̃, the
concentration maps of a weighting matrix) is computed once in :class:`Setup` /
:class:`._gmm.Concentration`; an objective evaluation is: δ(θ) per market (closed form or
contraction with an implicit derivative), ḡ_δ = Z̃'δ/N, q = ḡ_δ'Qḡ_δ.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, Bool, Float, Int

from ._absorb import absorb
from ._config import jit
from ._contraction import ContractionConfig, FixedPoint
from ._gmm import Concentration, instrument_moments
from ._implicit import Market, Theta, delta_at_solution, solve_delta
from ._logit import logit_delta
from ._markets import Agents, Products
from ._micro import MicroSetup, first_choice_probabilities, micro_moments
from ._supply import SupplySetup, all_costs, supply_moments


class Setup(eqx.Module):
    """θ-independent arrays of one estimation problem (fixed effects already absorbed)."""

    market: Market  # batched over T
    shares: Float[Array, "T J"]
    mask: Bool[Array, "T J"]
    Z: Float[Array, "T J M"]  # absorbed instruments, 0 on padding
    X1: Float[Array, "T J K1"]  # absorbed linear characteristics, 0 on padding
    ZX: Float[Array, "M K1"]  # Z̃'X̃/N
    fe_ids: Int[Array, "T J F"]
    N: int = eqx.field(static=True)
    K2: int = eqx.field(static=True)
    fe_sizes: tuple[int, ...] = eqx.field(static=True)
    supply: SupplySetup | None = None

    @property
    def elements(self) -> int:
        """Markets × products × agents of the padded arrays (the size of one I×J quantity for all markets)."""
        T, J = self.mask.shape
        return T * J * self.market.weights.shape[-1]

    @property
    def M(self) -> int:
        """Product moments: demand instruments, then supply instruments."""
        return self.Z.shape[-1] + (self.supply.MS if self.supply is not None else 0)

    def ZX_all(self, host: bool = False) -> Float[Array, "M K"]:
        """Z'X/N of the stacked (demand, supply) linear IV problem: block diagonal in (β, γ).

        ``host=True`` returns it in NumPy (host-side set-up: no XLA program per shape).
        """
        xp, block_diag = (np, scipy.linalg.block_diag) if host else (jnp, jax.scipy.linalg.block_diag)
        ZX = xp.asarray(self.ZX, xp.float64)
        if self.supply is None:
            return ZX
        return block_diag(ZX, xp.asarray(self.supply.ZX3, xp.float64))

    @classmethod
    def build(cls, products: Products, agents: Agents, supply: SupplySetup | None = None) -> Setup:
        # host-side set-up in NumPy (one jitted absorption at most): no XLA program per array shape
        mask = products.mask
        mask_np = np.asarray(mask)
        shares = np.asarray(products.shares)
        log_S = jnp.asarray(np.where(mask_np, np.log(np.where(mask_np, shares, 1.0)), 0.0))
        market = Market(products.X2, agents.nodes, agents.demographics, agents.weights, log_S, mask, products.nest_ids)
        M = products.Z.shape[-1]
        ZX1 = absorb_columns(
            np.concatenate([np.asarray(products.Z), np.asarray(products.X1)], axis=-1),
            products.fe_ids,
            mask_np,
            products.fe_sizes,
            xp=np,
        )
        Z, X1 = ZX1[..., :M], ZX1[..., M:]
        N = products.n_products
        ZX = np.einsum("tjm,tjk->mk", Z, X1) / N
        return cls(
            market,
            products.shares,
            mask,
            jnp.asarray(Z),
            jnp.asarray(X1),
            jnp.asarray(ZX),
            products.fe_ids,
            N,
            products.X2.shape[-1],
            products.fe_sizes,
            supply,
        )


def absorb_columns(values, fe_ids, mask, sizes, xp=jnp):
    """Absorb fixed effects from (T, J, K) arrays (identity when nothing is absorbed).

    ``xp=numpy`` for host-side set-up: NumPy in and out, the absorption itself one jitted call
    (none without fixed effects), so no eager XLA program is compiled per array shape.
    """
    values, mask = xp.asarray(values, xp.float64), xp.asarray(mask)
    T, J, K = values.shape
    values = xp.where(mask[..., None], values, 0.0)
    if not sizes or K == 0:
        return values
    r, _, _ = _absorb_jit(
        jnp.asarray(values.reshape(T * J, K)),
        jnp.asarray(xp.asarray(fe_ids).reshape(T * J, -1)),  # reshaped before any transfer: no eager XLA op
        jnp.asarray(mask.reshape(-1)),
        sizes,
    )
    return xp.asarray(r).reshape(T, J, K)


_absorb_jit = jit(absorb, once=True, inline=True, static_argnums=(3, 4, 5))


def solve_deltas(theta: Theta, setup: Setup, delta0: Float[Array, "T J"], config: ContractionConfig) -> FixedPoint:
    """δ(θ) in every market: closed form without random coefficients, contraction otherwise."""
    if setup.K2 == 0:
        rho = theta.rho if theta.nested else None
        delta = jax.vmap(logit_delta, in_axes=(0, 0, 0, None))(setup.shares, setup.mask, setup.market.nest_ids, rho)
        zeros = jnp.zeros(delta.shape[0], jnp.int32)
        return FixedPoint(delta, zeros, zeros)
    return jax.vmap(solve_delta, in_axes=(None, 0, 0, None))(theta, setup.market, delta0, config)


def deltas_at_solution(theta: Theta, setup: Setup, delta: Float[Array, "T J"]) -> Float[Array, "T J"]:
    """δ known to solve the share equations at θ, with its first-order derivative dδ/dθ."""
    if setup.K2 == 0:
        return solve_deltas(theta, setup, delta, ContractionConfig()).x
    return jax.vmap(delta_at_solution, in_axes=(None, 0, 0))(theta, setup.market, delta)


class Evaluation(eqx.Module):
    """Auxiliary output of one objective evaluation."""

    delta: Float[Array, "T J"]
    evaluations: Int[Array, " T"]
    status: Int[Array, " T"]
    g_delta: Float[Array, " M"]  # Z'y/N of the stacked linear IV problem: (Z_D'δ, Z_S'f(c))/N
    g_micro: Float[Array, " MM"] | None = None
    cost_errors: Int[Array, ""] | None = None  # log costs: nonpositive marginal costs (moments are NaN)
    clipped_costs: Int[Array, ""] | None = None


def shared_probabilities(theta: Theta, setup: Setup, delta, micro: MicroSetup | None):
    """First-choice probabilities of every market, computed once when the supply side and the micro
    moments both use them (one forward and one reverse pass instead of one each); else ``None``."""
    if setup.supply is None or micro is None or theta.nested:
        return None
    return jax.vmap(first_choice_probabilities, in_axes=(0, None, 0))(delta, theta, setup.market)


def objective(
    theta: Theta,
    setup: Setup,
    conc: Concentration,
    delta0: Float[Array, "T J"],
    config: ContractionConfig,
    micro: MicroSetup | None = None,
) -> tuple[Array, Evaluation]:
    """q(θ) = N ḡ'Wḡ with β concentrated out, and the evaluation's by-products.

    With a supply side, the product moments stack Z_D'ξ and Z_S'ω (β and γ concentrated out
    jointly); with ``micro``, ḡ then stacks the micro moments observed − f(v(θ)).
    """
    fp = solve_deltas(theta, setup, delta0, config)
    g_delta = instrument_moments(setup.Z, fp.x, setup.mask, setup.N)
    cost_errors = clipped = None
    probs = shared_probabilities(theta, setup, fp.x, micro)
    if setup.supply is not None:
        costs = all_costs(fp.x, theta, setup, None if probs is None else probs[0])
        g_delta = jnp.concatenate([g_delta, supply_moments(costs.transformed, setup)])
        cost_errors, clipped = jnp.sum(costs.nonpositive), jnp.sum(costs.clipped)
    g = conc.C @ g_delta  # residualise first: ḡ'Qḡ_δ would lose the small q to cancellation
    g_micro = None
    if micro is not None:
        g_micro = micro_moments(theta, setup.market, fp.x, micro, probs)
        g = jnp.concatenate([g, g_micro])
    q = setup.N * g @ conc.W @ g
    return q, Evaluation(fp.x, fp.evaluations, fp.status, g_delta, g_micro, cost_errors, clipped)


def structural_errors(delta, setup: Setup, beta) -> Float[Array, "T J"]:
    """ξ = M_D δ − X̃β (fixed effects absorbed), 0 on padding."""
    delta_t = absorb_columns(delta[..., None], setup.fe_ids, setup.mask, setup.fe_sizes)[..., 0]
    return jnp.where(setup.mask, delta_t - setup.X1 @ beta, 0.0)
