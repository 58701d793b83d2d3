"""Post-estimation for one market, batched over markets with ``vmap``: derivatives of shares
with respect to a characteristic (by ``jax.jacfwd``, so every model gets them exactly),
elasticities, diversion ratios, counterfactual shares with ξ held fixed (consumer surplus and
price counterfactuals: :mod:`.._supply.equilibrium`).

A characteristic x enters utility through the linear part (coefficient β_x, if x is in X1) and
through the nonlinear part (column of X2, if x is in X2); a change of x moves δ by β_x Δx and μ
through X2. Conventions follow PyBLP: elasticity (j, k) = ∂log s_j/∂log x_k; diversion (j, k) =
−(∂s_k/∂x_j)/(∂s_j/∂x_j) with the diversion to the outside good on the diagonal.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .market import Market, Theta, market_mu_at
from .shares import shares


class Characteristic(eqx.Module):
    """Where a characteristic enters utility: its linear coefficient and its X2 column (static)."""

    beta: Array  # scalar (0 if not in X1)
    x2_column: int = eqx.field(static=True, default=-1)


def _shares_at(x_new, x_old, delta, theta: Theta, market: Market, ch: Characteristic):
    d = delta + ch.beta * (x_new - x_old)
    X2 = market.X2 if ch.x2_column < 0 else market.X2.at[:, ch.x2_column].set(x_new)
    rho = theta.rho if theta.nested else None
    return shares(
        d,
        market_mu_at(theta, market, X2),
        market.weights,
        market.mask,
        market.nest_ids,
        rho,
        market.epsilon_scale,
    )


def market_shares(x, delta, theta, market, ch):
    """Shares at the estimated δ (x unchanged)."""
    return _shares_at(x, x, delta, theta, market, ch)


def counterfactual_shares(x_new, x, delta, theta, market, ch):
    """Shares after x changes to ``x_new`` with ξ (hence δ − β_x x) held fixed."""
    return _shares_at(x_new, x, delta, theta, market, ch)


def share_hessian(x, delta, theta, market, ch) -> Float[Array, "J J J"]:
    """∂²s_j/∂x_k∂x_l (zero on padding)."""
    H = jax.jacfwd(jax.jacfwd(_shares_at))(x, x, delta, theta, market, ch)
    m = market.mask
    return jnp.where(m[:, None, None] & m[None, :, None] & m[None, None, :], H, 0.0)


def share_jacobian(x, delta, theta, market, ch) -> Float[Array, "J J"]:
    """∂s_j/∂x_k (zero on padding)."""
    Jm = jax.jacfwd(_shares_at)(x, x, delta, theta, market, ch)
    both = market.mask[:, None] & market.mask[None, :]
    return jnp.where(both, Jm, 0.0)


def elasticities_from(Jm, x, s, mask) -> Float[Array, "J J"]:
    """(j, k) = ∂s_j/∂x_k · x_k / s_j from one market's share Jacobian (zero on padding)."""
    both = mask[:, None] & mask[None, :]
    return jnp.where(both, Jm * x[None, :] / jnp.where(mask, s, 1.0)[:, None], 0.0)


def diversion_from(Jm, mask) -> Float[Array, "J J"]:
    """(j, k) = −(∂s_k/∂x_j)/(∂s_j/∂x_j), diversion to the outside good on the diagonal (zero on padding)."""
    own = jnp.diag(Jm)
    safe_own = jnp.where(mask, own, 1.0)
    D = -Jm.T / safe_own[:, None]
    outside = jnp.sum(Jm, axis=0) / safe_own  # −∂s_0/∂x_j / ∂s_j/∂x_j with ∂s_0 = −Σ_k ∂s_k
    D = jnp.where(jnp.eye(mask.shape[0], dtype=bool), outside[:, None], D)
    return jnp.where(mask[:, None] & mask[None, :], D, 0.0)


def elasticities(x, delta, theta, market, ch) -> Float[Array, "J J"]:
    s = market_shares(x, delta, theta, market, ch)
    return elasticities_from(share_jacobian(x, delta, theta, market, ch), x, s, market.mask)


def diversion_ratios(x, delta, theta, market, ch) -> Float[Array, "J J"]:
    return diversion_from(share_jacobian(x, delta, theta, market, ch), market.mask)
