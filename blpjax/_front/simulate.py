"""Synthetic markets with known truth, for tests, the demo and Monte Carlo studies.

Utility u_ijt = β₀ + β_x x_jt + α p_jt + ξ_jt + x2_jt'(Σν_it + Πd_it) + ε_ijt. Prices are endogenous:
p = 1 + c·w + 0.5 x + γ ξ + noise with a cost shifter w, so OLS is biased and w (with
BLP-style sums of rivals' characteristics) instruments for p. Shares are exact model shares at the
true parameters, computed by the same share function the estimator inverts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._model.shares import mu, shares


@dataclass(frozen=True)
class SimulationConfig:
    """Sizes and true parameters of a simulated dataset (X2 = (1, prices), one demographic)."""

    markets: int = 200
    products: tuple[int, int] = (10, 20)  # products per market, drawn uniformly in [lo, hi]
    agents: int = 200
    beta: tuple[float, float, float] = (-1.0, 1.0, -2.0)  # constant, x, prices
    sigma: tuple[float, float] = (1.0, 0.3)  # σ on the constant and on prices
    pi: tuple[float, float] = (0.0, 0.4)  # π on constant × income and prices × income
    xi_sd: float = 0.5
    price_xi: float = 0.5
    seed: int = 0
    extra: dict = field(default_factory=dict)


def simulate(config: SimulationConfig = SimulationConfig()) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Simulate (product_data, agent_data, truth) in PyBLP's column conventions."""
    rng = np.random.default_rng(config.seed)
    T, I = config.markets, config.agents
    sizes = rng.integers(config.products[0], config.products[1] + 1, size=T)
    J = int(sizes.max())
    mask = np.arange(J)[None, :] < sizes[:, None]
    x = rng.uniform(0, 1, (T, J))
    w = rng.uniform(0, 1, (T, J))
    xi = rng.normal(0, config.xi_sd, (T, J))
    prices = 1.0 + 1.5 * w + 0.5 * x + config.price_xi * xi + rng.normal(0, 0.1, (T, J))
    b0, bx, bp = config.beta
    delta = b0 + bx * x + bp * prices + xi
    X2 = np.stack([np.ones((T, J)), prices], axis=-1)
    nodes = rng.standard_normal((T, I, 2))
    income_mean = rng.uniform(-1, 1, T)  # demographics differ across markets: this identifies Π
    income = income_mean[:, None, None] + rng.standard_normal((T, I, 1))
    weights = np.full((T, I), 1.0 / I)
    sigma = np.diag(config.sigma)
    pi = np.asarray(config.pi, dtype=float).reshape(2, 1)

    def market(d, x2, n, dem, wt, m):
        return shares(d, mu(x2, jnp.asarray(sigma), jnp.asarray(pi), n, dem), wt, m)

    s = np.asarray(jax.vmap(market)(delta, X2, nodes, income, weights, jnp.asarray(mask)))
    t_idx, j_idx = np.nonzero(mask)
    rival_x = (np.where(mask, x, 0).sum(1, keepdims=True) - x)[t_idx, j_idx]
    rival_w = (np.where(mask, w, 0).sum(1, keepdims=True) - w)[t_idx, j_idx]
    n_products = sizes[t_idx].astype(float)
    x_spread = (np.where(mask[:, None, :], (x[:, :, None] - x[:, None, :]) ** 2, 0).sum(2))[t_idx, j_idx]
    product_data = pd.DataFrame(
        {
            "market_ids": t_idx,
            "product_ids": [f"p{j}" for j in j_idx],
            "firm_ids": j_idx % 5,
            "shares": s[t_idx, j_idx],
            "prices": prices[t_idx, j_idx],
            "x": x[t_idx, j_idx],
            "demand_instruments0": w[t_idx, j_idx],
            "demand_instruments1": w[t_idx, j_idx] ** 2,
            "demand_instruments2": rival_x,
            "demand_instruments3": rival_w,
            "demand_instruments4": n_products,
            "demand_instruments5": x_spread,
            "demand_instruments6": income_mean[t_idx] * w[t_idx, j_idx],
            "demand_instruments7": income_mean[t_idx] * x[t_idx, j_idx],
        }
    )
    ti, ii = np.nonzero(np.ones((T, I), bool))
    agent_data = pd.DataFrame(
        {
            "market_ids": ti,
            "weights": weights[ti, ii],
            "nodes0": nodes[ti, ii, 0],
            "nodes1": nodes[ti, ii, 1],
            "income": income[ti, ii, 0],
        }
    )
    truth = {
        "beta": dict(zip(("1", "x", "prices"), config.beta, strict=True)),
        "sigma": sigma,
        "pi": pi,
        "xi": xi[t_idx, j_idx],
    }
    return product_data, agent_data, truth
