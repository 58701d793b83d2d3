"""The supply side: Bertrand–Nash markups, marginal costs and the cost moments E[ω·z_S] = 0.

Firms set prices to maximise profits given the demand model, so in every market

    p − c = η,   η = Δ⁻¹ s,   Δ = −O ⊙ (∂s/∂p)ᵀ,

with O the ownership matrix (O_jk = 1 when j and k belong to the same firm) and ∂s/∂p the
Jacobian of the model's shares in prices. Marginal costs c = p − η are modelled as
f(c) = X₃γ + ω with f the identity (``costs_type="linear"``) or the logarithm (``"log"``), and
the supply moments are E[ω·z_S] = 0. γ is concentrated out jointly with β (stacked IV).

Everything here is written for one market and vmapped; η depends on θ and on δ(θ), and its
derivatives come from autodiff through the implicit δ(θ) (no hand-written η-by-θ Jacobian).
How prices enter utility is data: ``dX2`` holds ∂X2/∂p for every X2 column (1 for ``prices``,
−1 for a column holding −prices, a characteristic for an interaction, ...), so
∂u_ij/∂p_j = dX2_j·(Σν_i + Πd_i). Prices do not enter X1 under a supply side (the data front
refuses it): the mean price coefficient would then be a linear parameter that markups depend on.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._shares import NEG_INF, FactoredMarket, random_coefficients, shares

COSTS_TYPES = ("linear", "log")


class SupplyMarket(eqx.Module):
    """One market's supply-side data (fields gain a leading T axis when batched)."""

    prices: Float[Array, " J"]
    firm_ids: Int[Array, " J"]
    dX2: Float[Array, "J K2"]  # ∂X2/∂p


class SupplySetup(eqx.Module):
    """θ-independent supply arrays of one problem (batched over T) and its static options."""

    market: SupplyMarket
    X3: Float[Array, "T J K3"]  # 0 on padding
    ZS: Float[Array, "T J MS"]  # 0 on padding
    ZX3: Float[Array, "MS K3"]  # Z_S'X3/N
    costs_type: str = eqx.field(static=True)
    costs_bounds: tuple[float, float] = eqx.field(static=True, default=(-jnp.inf, jnp.inf))

    @property
    def MS(self) -> int:
        return self.ZS.shape[-1]

    @property
    def K3(self) -> int:
        return self.X3.shape[-1]


def build_supply_setup(products, arrays: dict, costs_type: str) -> SupplySetup:
    """:class:`SupplySetup` from :class:`._markets.Products` and the padded arrays of the data front."""
    mask = products.mask[..., None]
    X3 = jnp.where(mask, jnp.asarray(arrays["X3"]), 0.0)
    ZS = jnp.where(mask, jnp.asarray(arrays["ZS"]), 0.0)
    market = SupplyMarket(products.prices, products.firm_ids, jnp.asarray(arrays["dX2"]))
    ZX3 = jnp.einsum("tjm,tjk->mk", ZS, X3) / products.n_products
    return SupplySetup(market, X3, ZS, ZX3, costs_type)


def utility_price_derivatives(theta, nodes, demographics, supply: SupplyMarket) -> Float[Array, "I J"]:
    """∂u_ij/∂p_j = dX2_j·(Σν_i + Πd_i)."""
    return random_coefficients(theta.sigma, theta.pi, nodes, demographics) @ supply.dX2.T


def share_price_jacobian(delta, theta, market, supply: SupplyMarket) -> Float[Array, "J J"]:
    """∂s_j/∂p_k of one market (zero rows/columns on padded products)."""
    from ._implicit import market_mu  # local: _implicit imports nothing from here

    mask = market.mask
    mu_ = market_mu(theta, market)
    a = utility_price_derivatives(theta, market.nodes, market.demographics, supply)
    a = jnp.where(mask[None, :], a, 0.0)
    if not theta.nested:
        P = FactoredMarket.build(mu_, market.weights, mask).probabilities(delta)  # (I, J)
        wP = market.weights[:, None] * P
        # ∂s_j/∂p_k = Σ_i w_i P_ij (1{j=k} − P_ik) a_ik
        jac = jnp.diag(jnp.sum(wP * a, axis=0)) - wP.T @ (P * a)
    else:
        rho = theta.rho

        def shifted(x):  # shares when u_ij moves by x_j a_ij
            return shares(delta, mu_ + x[None, :] * a, market.weights, mask, market.nest_ids, rho)

        jac = jax.jacfwd(shifted)(jnp.zeros_like(delta))
    both = mask[:, None] & mask[None, :]
    return jnp.where(both, jac, 0.0)


def model_shares(delta, theta, market) -> Float[Array, " J"]:
    from ._implicit import market_mu

    rho = theta.rho if theta.nested else None
    return shares(delta, market_mu(theta, market), market.weights, market.mask, market.nest_ids, rho)


def markups(delta, theta, market, supply: SupplyMarket, ownership=None) -> Float[Array, " J"]:
    """η = Δ⁻¹ s with Δ = −O ⊙ (∂s/∂p)ᵀ (0 on padded products)."""
    mask = market.mask
    J = delta.shape[0]
    if ownership is None:
        ownership = ownership_matrix(supply.firm_ids, mask)
    jac = share_price_jacobian(delta, theta, market, supply)
    capital_delta = -ownership * jac.T
    capital_delta = jnp.where(mask[:, None] & mask[None, :], capital_delta, jnp.eye(J, dtype=delta.dtype))
    s = jnp.where(mask, model_shares(delta, theta, market), 0.0)
    return jnp.where(mask, jnp.linalg.solve(capital_delta, s), 0.0)


def ownership_matrix(firm_ids: Int[Array, " J"], mask: Bool[Array, " J"]) -> Float[Array, "J J"]:
    same = (firm_ids[:, None] == firm_ids[None, :]) & mask[:, None] & mask[None, :]
    return same.astype(jnp.float64)


class Costs(eqx.Module):
    """Marginal costs of one market and what the cost equation needs."""

    eta: Float[Array, " J"]
    costs: Float[Array, " J"]  # after clipping to costs_bounds
    transformed: Float[Array, " J"]  # f(c): c or log c (0 on padding)
    clipped: Int[Array, ""]  # how many costs were clipped to the bounds
    nonpositive: Int[Array, ""]  # log costs: how many costs were ≤ 0 (the moments are then NaN)


def market_costs(delta, theta, market, supply: SupplyMarket, costs_type: str, bounds) -> Costs:
    """c = p − η, clipped to ``bounds``, and f(c)."""
    mask = market.mask
    eta = markups(delta, theta, market, supply)
    raw = supply.prices - eta
    lo, hi = bounds
    c = jnp.clip(raw, lo, hi)
    clipped = jnp.sum(mask & (c != raw))
    if costs_type == "log":
        nonpositive = jnp.sum(mask & (c <= 0))
        transformed = jnp.where(mask, jnp.log(jnp.where(mask, c, 1.0)), 0.0)
    else:
        nonpositive = jnp.zeros((), jnp.int32).astype(clipped.dtype)
        transformed = jnp.where(mask, c, 0.0)
    return Costs(jnp.where(mask, eta, 0.0), jnp.where(mask, c, 0.0), transformed, clipped, nonpositive)


def all_costs(delta, theta, setup) -> Costs:
    """:func:`market_costs` vmapped over markets (``setup`` is an :class:`._objective.Setup` with supply)."""
    sup = setup.supply
    return jax.vmap(market_costs, in_axes=(0, None, 0, 0, None, None))(
        delta, theta, setup.market, sup.market, sup.costs_type, sup.costs_bounds
    )


def supply_moments(transformed: Float[Array, "T J"], setup) -> Float[Array, " MS"]:
    """Z_S'f(c)/N (γ is concentrated out afterwards, jointly with β)."""
    sup = setup.supply
    return jnp.einsum("tjm,tj->m", sup.ZS, jnp.where(setup.mask, transformed, 0.0)) / setup.N


__all__ = [
    "COSTS_TYPES",
    "Costs",
    "NEG_INF",
    "SupplyMarket",
    "SupplySetup",
    "all_costs",
    "market_costs",
    "markups",
    "ownership_matrix",
    "share_price_jacobian",
    "supply_moments",
]
