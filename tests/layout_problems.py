"""Small simulated problems of every model family, with unequal markets, for the layout tests.

Models: ``demand`` (random coefficients and a demographic, the logit error's scale 0.8), ``supply`` (+ a Bertrand–Nash supply
side with log costs and firm fixed effects absorbed from them; the mean price coefficient is Π on a demographic
column of ones), ``micro``
(+ a first-choice survey of part of the markets and a second-choice survey), ``both`` (supply and
micro), ``nested`` (RCNL) and ``formulas`` (formulas, prices × x in X1 with its
coefficient optimised with θ, a log-normal coefficient on −prices and a supply side with a costs formula). Markets have 2–8 products and 12 or 24 agents, so buckets differ.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import blpjax

MODELS = ("demand", "supply", "micro", "both", "nested", "formulas")

SIGMA = np.diag([0.8, 0.3])


def data(seed: int = 3, T: int = 12, fixed: bool = False):
    """Simulated data; ``fixed``: 6 products in every market (replications of identical shapes)."""
    sizes = (6, 6) if fixed else (2, 8)
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=T, agents=24, products=sizes, seed=seed))
    excluded = [c for c in products.columns if c.startswith("demand_instruments")]
    varying = [c for c in excluded if products[c].nunique() > 1]  # a fixed design makes the product count constant
    products = products.drop(columns=excluded).assign(
        **{f"demand_instruments{k}": products[c].to_numpy() for k, c in enumerate(varying)}
    )
    few = (agents.market_ids % 3 == 0) & (agents.groupby("market_ids").cumcount() >= 12)
    agents = agents[~few].copy()
    agents["weights"] = agents.groupby("market_ids").weights.transform(lambda w: w / w.sum())
    agents["one"] = 1.0
    for k in range(3):
        products[f"supply_instruments{k}"] = products[f"demand_instruments{k + 1}"]
    products["nesting_ids"] = products.product_ids.str[1:].astype(int) % 2
    return products, agents


def micro_moments(T: int = 12):
    """A first-choice survey of the first half of the markets and a second-choice survey of all of them."""
    first = blpjax.MicroDataset(
        "first choices", 800, lambda m: jnp.ones((m.I, 1 + m.J)), market_ids=list(range(T // 2))
    )
    income = blpjax.MicroPart("E[income]", first, lambda m: jnp.outer(m.agents["income"], jnp.ones(1 + m.J)))
    inside = blpjax.MicroPart(
        "P(inside)", first, lambda m: jnp.outer(jnp.ones(m.I), jnp.concatenate([jnp.zeros(1), jnp.ones(m.J)]))
    )
    second = blpjax.MicroDataset("second choices", 500, lambda m: jnp.ones((m.I, m.J, 1 + m.J)))
    outside = blpjax.MicroPart(
        "P(k = 0 | j > 0)", second, lambda m: jnp.zeros((m.I, m.J, 1 + m.J)).at[:, :, 0].set(1.0)
    )
    return [
        # observed values near the simulated model's (a well-posed estimation)
        blpjax.MicroMoment("E[income | inside]", 1.0, [income, inside], lambda v: v[0] / v[1]),
        blpjax.MicroMoment("P(inside)", 0.11, inside),
        blpjax.MicroMoment("P(k = 0 | j > 0)", 0.83, outside),
    ]


def problem(model: str, seed: int = 3, T: int = 12, fixed: bool = False, **layout):
    """(Problem, starting values as solve() keyword arguments, micro moments or None)."""
    products, agents = data(seed, T, fixed)
    supply = model in ("supply", "both")
    if model != "nested":
        products = products.drop(columns=["nesting_ids"])
    if supply:
        kw = dict(
            linear=("1", "x"),
            nonlinear=("1", "prices"),
            demographics=("income", "one"),
            costs=("1", "x"),
            costs_type="log",
        )
        start = dict(sigma=SIGMA, pi=[[0.0, 0.0], [0.3, -2.0]])
        if model == "supply":  # firm fixed effects absorbed from the cost equation
            kw.update(costs=("x",), costs_absorb=("firm_ids",))
    else:
        kw = dict(linear=("1", "x", "prices"), nonlinear=("1", "prices"), demographics=("income",))
        start = dict(sigma=SIGMA, pi=[[0.0], [0.3]])
    if model == "nested":
        start["rho"] = 0.3
    if model == "demand":  # the logit error scaled (PyBLP's epsilon_scale)
        kw["epsilon_scale"] = 0.8
    if model == "formulas":
        kw = dict(
            linear="1 + x + prices:x",
            nonlinear="1 + I(-prices)",
            rc_types=("linear", "log"),
            demographics="0 + income + one",
            costs="1 + x",
        )
        # the coefficient on prices:x in X1 moves markups: optimised with θ (not concentrated out)
        start = dict(sigma=SIGMA, pi=[[0.0, 0.0], [0.3, 0.5]], beta=[np.nan, np.nan, -0.2])
    p = blpjax.Problem(products, agent_data=agents, **kw, **layout)
    micro = micro_moments(T) if model in ("micro", "both") else None
    return p, start, micro
