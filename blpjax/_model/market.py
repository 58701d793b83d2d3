"""The model's parameters and one market's data: :class:`Theta`, :class:`Market`, μ and log shares.

Utility u_ij = δ_j + μ_ij + ε_ij with μ_ij = x_j'(Σν_i + Πd_i) (see :mod:`.shares`); θ = (Σ, Π, ρ).
Every per-market function of blpjax takes a :class:`Market` (fields gain a leading T axis when
batched) and a :class:`Theta`.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .shares import FactoredMarket, apply_coefficients, log_shares, random_coefficients


class Theta(eqx.Module):
    """Nonlinear parameters in matrix form: Σ (K2×K2, lower triangular), Π (K2×D), ρ (H,).

    ``linear``: the linear parameters (β, γ) that are not concentrated out (fixed, or optimised with θ), 0 where they
    are concentrated out; None when all are (the usual case).
    """

    sigma: Float[Array, "K2 K2"]
    pi: Float[Array, "K2 D"]
    rho: Float[Array, " H"]
    rc_types: tuple = eqx.field(static=True, default=())  # per X2 column: "linear", "log" or "logit" (PyBLP's)
    linear: Float[Array, " K"] | None = None

    @property
    def nested(self) -> bool:
        return self.rho.shape[0] > 0


class Market(eqx.Module):
    """One market's data for the share inversion (fields gain a leading T axis when batched)."""

    X2: Float[Array, "J K2"]
    nodes: Float[Array, "I K2"]
    demographics: Float[Array, "I D"]
    weights: Float[Array, " I"]
    log_shares: Float[Array, " J"]
    mask: Bool[Array, " J"]
    nest_ids: Int[Array, " J"]
    # every demographic per agent and product when some are product-specific (PyBLP's 3-D demographics)
    product_demographics: Float[Array, "I J D"] | None = None
    # agent-specific product availability (1 available, 0 not: PyBLP's ``availability``)
    availability: Float[Array, "I J"] | None = None
    # λ, the scale of the logit error (PyBLP's ``epsilon_scale``): probabilities are those of (δ + μ)/λ
    epsilon_scale: float = eqx.field(static=True, default=1.0)


def market_coefficients(theta: Theta, market: Market):
    """The random coefficients of one market: (I, K2), or (I, J, K2) with product-specific demographics."""
    return random_coefficients(
        theta.sigma, theta.pi, market.nodes, market.demographics, theta.rc_types, market.product_demographics
    )


def market_mu_at(
    theta: Theta, market: Market, X2: Float[Array, "J K2"], transposed: bool = False
) -> Float[Array, "I J"]:
    """μ_ij at characteristics ``X2``; −∞ where a product is not available to an agent. ``transposed``: (J, I),
    products by agents, the layout of the fast share evaluations (:class:`.shares.FactoredMarket`)."""
    out = apply_coefficients(market_coefficients(theta, market), X2, transposed)
    if market.availability is not None:
        out = jnp.where((market.availability.T if transposed else market.availability) > 0, out, -jnp.inf)
    return out


def market_mu(theta: Theta, market: Market) -> Float[Array, "I J"]:
    return market_mu_at(theta, market, market.X2)


def market_mu_t(theta: Theta, market: Market) -> Float[Array, "J I"]:
    """μ transposed, (J, I)."""
    return market_mu_at(theta, market, market.X2, transposed=True)


def market_factored(theta: Theta, market: Market) -> FactoredMarket:
    """exp(μ) of a non-nested market in the share inversion's layout (:class:`.shares.FactoredMarket`): what the
    contraction, its implicit derivative, the markups and the micro moments all read (XLA forms it once)."""
    return FactoredMarket.build_t(market_mu_t(theta, market), market.weights, market.mask, market.epsilon_scale)


def market_log_shares(delta, theta: Theta, market: Market):
    """log s(δ, θ) of one market, in log space (all models)."""
    rho = theta.rho if theta.nested else None
    mu_ = market_mu(theta, market)
    return log_shares(delta, mu_, market.weights, market.mask, market.nest_ids, rho, market.epsilon_scale)
