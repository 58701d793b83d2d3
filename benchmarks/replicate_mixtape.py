"""Replicate the Mixtape Sessions BLP course exercises with blpjax (and optionally check against PyBLP).

The course data (``products.csv``, ``demographics.csv``) are not part of the repository; put them in
``data/mixtape/`` (git-ignored) or point ``--data`` at them.

Usage::

    python benchmarks/replicate_mixtape.py                       # JSON to stdout
    python benchmarks/replicate_mixtape.py --out results.json    # JSON to a file
    python benchmarks/replicate_mixtape.py --check-pyblp         # also run PyBLP 1.3.0, print differences
    python benchmarks/replicate_mixtape.py --check-course        # also compare with the numbers the course prints

The output is one flat JSON dict. Keys are ``<exercise>.<specification>.<quantity>``, e.g.
``ex1.iv.price_se_clustered``; scalars are floats and per-product quantities are lists in data order.
Each exercise is a pair of functions (blpjax, PyBLP) registered in :data:`EXERCISES`, so later exercises
only add a pair and an entry.

Exercise 1 (pure logit), following the course:

* ``ols``: OLS of log(s_j/s_0) on 1 + mushy + prices with HC0 standard errors, written as one-step GMM
  with prices as their own instrument (robust GMM standard errors equal HC0);
* ``fe``: the same with market and product fixed effects absorbed (X1 = prices);
* ``iv``: market and product fixed effects with ``price_instrument`` as the excluded instrument, robust
  and product-clustered standard errors;
* ``cf``: with the IV estimates, halve the price of F1B04 in market C01Q2 holding ξ fixed and report the
  percent change in every product's share in that market;
* ``elasticities``: own-price elasticities of the products of C01Q2 (IV estimates).

Exercise 2 (mixed logit; X1 = prices with market and product fixed effects absorbed, log income as the
demographic, agents and instruments DI0–DI3 from :func:`load_exercise2_data`; one-step GMM with
trust-constr, gtol = xtol = 1e-8):

* ``ex2``: Exercise 2.2, X2 = mushy with σ = 0 and π on mushy × log income (start 1), instruments DI0, DI1;
* ``ex2.full``: Exercise 2.5, X2 = mushy + prices, start Σ = diag(0, 1), Π = (0.2, 1)', instruments
  DI0–DI3, PyBLP's default bounds (σ_prices ≥ 0); ``ex2.full.cf``: the Exercise 1 counterfactual (halve
  F1B04's price in C01Q2, ξ fixed) with these estimates.

With ``--check-pyblp`` the objective of the just-identified Exercise 2.5 (≈ 0) is compared absolutely.

Exercise 3 (micro moments; see :data:`EX3_INCOME` and following): ``ex3.income``, ``ex3.full``, ``ex3.size`` and
``ex3.rcnl`` as their specifications say; ``ex3.optimal``: the optimal micro moments supplemental
(:data:`EX3_OPTIMAL`): ``score_1_income`` is the mean score for π on 1 × log income of 100 buyers simulated once
(PyBLP's ``simulate_micro_data(..., seed=0)`` at PyBLP's Exercise 3.2 fit, as the course; :func:`ex3_simulated_survey`) and scored by each library at its own Exercise 3.2 estimate with the same
1,000 draws per respondent and per agent (:func:`ex3_score_rows`); ``sigma_1`` (with π_1 and standard errors) is
re-estimated with that moment in place of the income moment.

With ``--check-course`` each key that the course's solution notebooks print (recorded as printed, with notebook, cell
and commit, in :data:`COURSE_PRINTED`) is compared at the printed precision (:func:`agrees_with_printed`); the table
goes to stderr and any disagreement makes the exit status non-zero. Printed numbers that are not the same quantity
(e.g. the optimal micro moments, simulated with other draws) are listed there under ``unmatched`` and not checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "mixtape"

#: Market size is this many servings per resident per quarter (the course's assumption).
SERVINGS_PER_CAPITA = 90
#: The market and product of the Exercise 1 counterfactual (halve this product's price).
CF_MARKET, CF_PRODUCT = "C01Q2", "F1B04"


# --- data -------------------------------------------------------------------------------------------------
def load_product_data(data_dir: str | Path = DEFAULT_DATA) -> pd.DataFrame:
    """Read ``products.csv`` and build PyBLP-convention product data, in the file's row order.

    Columns: ``market_ids``, ``product_ids``, ``firm_ids`` (first two characters of the product id),
    ``shares`` (servings sold over the market size 90 × city population), ``prices`` (price per
    serving), ``mushy``, ``price_instrument``, ``market_size`` and ``clustering_ids`` (= product ids,
    used only by clustered standard errors). No ``demand_instruments*`` columns: each specification
    chooses its own (see :func:`with_instruments`).
    """
    raw = pd.read_csv(Path(data_dir) / "products.csv")
    market_size = SERVINGS_PER_CAPITA * raw["city_population"]
    return pd.DataFrame(
        {
            "market_ids": raw["market"],
            "product_ids": raw["product"],
            "firm_ids": raw["product"].str[:2],
            "shares": raw["servings_sold"] / market_size,
            "prices": raw["price_per_serving"],
            "mushy": raw["mushy"],
            "price_instrument": raw["price_instrument"],
            "market_size": market_size,
            "clustering_ids": raw["product"],
        }
    )


def with_instruments(product_data: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """A copy of ``product_data`` with excluded instruments ``demand_instruments0, 1, ...`` = ``columns``."""
    df = product_data.drop(columns=[c for c in product_data if c.startswith("demand_instruments")])
    return df.assign(**{f"demand_instruments{i}": df[c] for i, c in enumerate(columns)})


def counterfactual_prices(product_data: pd.DataFrame, market=CF_MARKET, product=CF_PRODUCT) -> np.ndarray:
    """Prices (row order) with ``product``'s price in ``market`` halved, everything else unchanged."""
    prices = product_data["prices"].to_numpy(dtype=float).copy()
    row = (product_data["market_ids"] == market) & (product_data["product_ids"] == product)
    if row.sum() != 1:
        raise ValueError(f"expected exactly one row for product {product!r} in market {market!r}.")
    prices[row.to_numpy()] /= 2
    return prices


def load_exercise2_data(data_dir: str | Path = DEFAULT_DATA, draws: int = 1000, seed: int = 0):
    """Exercise 2's product data (with instrument columns ``DI0``–``DI3``) and agent data.

    Instruments: DI0 = price_instrument; DI1 = market mean of log income × mushy; DI2 = market mean
    of log income × p̂; DI3 = Σ_k (p̂_j − p̂_k)² over the products k of j's market, where p̂ is the
    OLS fit of prices on price_instrument and market and product dummies. The market mean of log
    income is taken over the market's rows of demographics.csv. Select them with
    :func:`with_instruments` (e.g. ``with_instruments(products, "DI0", "DI1")``).

    Agents: per market, ``draws`` draws with replacement from its rows of demographics.csv
    (``random_state=seed``), sorted by market; nodes0..2 standard normal from
    ``numpy.random.default_rng(seed)`` in that row order (column k goes with the k-th X2
    characteristic); weights 1/draws; ``log_income``.
    """
    products = load_product_data(data_dir)
    demographics = pd.read_csv(Path(data_dir) / "demographics.csv")
    demographics["log_income"] = np.log(demographics["quarterly_income"])
    mean_log_income = products["market_ids"].map(demographics.groupby("market")["log_income"].mean())

    dummies = pd.get_dummies(products[["market_ids", "product_ids"]].astype(str), drop_first=False, dtype=float)
    X = np.column_stack([products["price_instrument"].to_numpy(), dummies.to_numpy()])
    coef, *_ = np.linalg.lstsq(X, products["prices"].to_numpy(), rcond=None)
    pp = pd.Series(X @ coef, index=products.index)
    g = pp.groupby(products["market_ids"])
    J, s1, s2 = g.transform("size"), g.transform("sum"), (pp**2).groupby(products["market_ids"]).transform("sum")
    products["DI0"] = products["price_instrument"]
    products["DI1"] = mean_log_income * products["mushy"]
    products["DI2"] = mean_log_income * pp
    products["DI3"] = J * pp**2 - 2 * pp * s1 + s2

    sampled = demographics.groupby("market").sample(n=draws, replace=True, random_state=seed)
    sampled = sampled.sort_values("market", kind="mergesort").reset_index(drop=True)
    nodes = np.random.default_rng(seed).normal(size=(len(sampled), 3))
    agents = pd.DataFrame(
        {
            "market_ids": sampled["market"].to_numpy(),
            "weights": 1 / draws,
            **{f"nodes{k}": nodes[:, k] for k in range(3)},
            "log_income": sampled["log_income"].to_numpy(),
        }
    )
    return products, agents


def pyblp_default_sigma_bounds(sigma) -> tuple[np.ndarray, np.ndarray]:
    """PyBLP's default Σ bounds with a bounded optimiser: diagonal ≥ min(0, start), else free.

    Passed explicitly to both libraries (blpjax's default is unbounded) so both see the same feasible set.
    """
    sigma = np.asarray(sigma, float)
    lower = np.full(sigma.shape, -np.inf)
    np.fill_diagonal(lower, np.minimum(0, np.diag(sigma)))
    return lower, np.full(sigma.shape, np.inf)


# --- exercise 1: pure logit -------------------------------------------------------------------------------
FE = ("market_ids", "product_ids")


def exercise1(product_data: pd.DataFrame) -> dict:
    """Exercise 1 (pure logit) with blpjax; see the module docstring for the specifications."""
    import blpjax

    out: dict = {}
    ols_data = with_instruments(product_data, "prices")
    ols = blpjax.Problem(ols_data, linear=("1", "mushy", "prices")).solve(method="1s", se_type="robust")
    out["ex1.ols.price"], out["ex1.ols.price_se"] = ols.beta["prices"], ols.beta_se["prices"]

    fe = blpjax.Problem(ols_data, linear=("prices",), absorb=FE).solve(method="1s", se_type="robust")
    out["ex1.fe.price"], out["ex1.fe.price_se"] = fe.beta["prices"], fe.beta_se["prices"]

    iv_problem = blpjax.Problem(with_instruments(product_data, "price_instrument"), linear=("prices",), absorb=FE)
    iv = iv_problem.solve(method="1s", se_type="robust")
    iv_clustered = iv_problem.solve(method="1s", se_type="clustered")
    out["ex1.iv.price"], out["ex1.iv.price_se"] = iv.beta["prices"], iv.beta_se["prices"]
    out["ex1.iv.price_se_clustered"] = iv_clustered.beta_se["prices"]

    cf = iv.counterfactual(counterfactual_prices(product_data), name="prices")
    out["ex1.cf.pct_change"] = cf.loc[cf["market_ids"] == CF_MARKET, "pct_change"].to_numpy()
    out["ex1.elasticities.own"] = np.diag(iv.elasticity_matrix(CF_MARKET).to_numpy())
    return out


def exercise1_pyblp(product_data: pd.DataFrame) -> dict:
    """Exercise 1 with PyBLP 1.3.0 (fixed effects absorbed exactly, by dummy-variable regression)."""
    import pyblp

    pyblp.options.verbose = False
    absorbed = pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)", absorb_method="dummy")

    out: dict = {}
    ols_data = with_instruments(product_data, "prices")
    ols = pyblp.Problem(pyblp.Formulation("1 + mushy + prices"), ols_data).solve(method="1s", se_type="robust")
    out["ex1.ols.price"], out["ex1.ols.price_se"] = _pyblp_beta(ols, "prices")

    fe = pyblp.Problem(absorbed, ols_data).solve(method="1s", se_type="robust")
    out["ex1.fe.price"], out["ex1.fe.price_se"] = _pyblp_beta(fe, "prices")

    iv_problem = pyblp.Problem(absorbed, with_instruments(product_data, "price_instrument"))
    iv = iv_problem.solve(method="1s", se_type="robust")
    iv_clustered = iv_problem.solve(method="1s", se_type="clustered")
    out["ex1.iv.price"], out["ex1.iv.price_se"] = _pyblp_beta(iv, "prices")
    out["ex1.iv.price_se_clustered"] = _pyblp_beta(iv_clustered, "prices")[1]

    in_market = (product_data["market_ids"] == CF_MARKET).to_numpy()
    shares = product_data["shares"].to_numpy()[in_market]
    new_shares = iv.compute_shares(prices=counterfactual_prices(product_data)).ravel()[in_market]
    out["ex1.cf.pct_change"] = 100 * (new_shares / shares - 1)
    out["ex1.elasticities.own"] = np.diag(iv.compute_elasticities(market_id=CF_MARKET))
    return out


def _pyblp_beta(results, name: str) -> tuple[float, float]:
    """PyBLP's estimate and standard error of the linear parameter ``name``."""
    k = list(results.beta_labels).index(name)
    return float(results.beta[k, 0]), float(results.beta_se[k, 0])


# --- exercise 2: mixed logit ------------------------------------------------------------------------------
#: Exercise 2.2: X2 = mushy, σ fixed at 0, π (mushy × log income) starts at 1; instruments DI0, DI1.
EX2_SIMPLE = dict(nonlinear=("mushy",), instruments=("DI0", "DI1"), sigma=[[0.0]], pi=[[1.0]])
#: Exercise 2.5: X2 = mushy + prices, Σ = diag(0, 1), Π = (0.2, 1)'; instruments DI0–DI3.
EX2_FULL = dict(
    nonlinear=("mushy", "prices"),
    instruments=("DI0", "DI1", "DI2", "DI3"),
    sigma=np.diag([0.0, 1.0]),
    pi=[[0.2], [1.0]],
)
#: ``--check-pyblp`` compares these keys absolutely (the just-identified objective is ≈ 0).
ABSOLUTE_KEYS = {"ex2.full.objective", "ex3.full.objective"}


def _ex2_inputs(data_dir: Path, spec: dict):
    """Product data with ``spec``'s instruments, agent data with one node column per X2 characteristic."""
    products, agents = load_exercise2_data(data_dir)
    k2 = len(spec["nonlinear"])
    agents = agents.drop(columns=[f"nodes{k}" for k in range(k2, 3)])
    return with_instruments(products, *spec["instruments"]), agents


def exercise2(product_data: pd.DataFrame, data_dir: Path = DEFAULT_DATA) -> dict:
    """Exercise 2.2 and 2.5 (mixed logit) with blpjax."""
    import blpjax

    optimizer = blpjax.ScipyOptimizer("trust-constr", gtol=1e-8, xtol=1e-8)
    out: dict = {}
    results = {}
    for name, spec in (("simple", EX2_SIMPLE), ("full", EX2_FULL)):
        products, agents = _ex2_inputs(data_dir, spec)
        problem = blpjax.Problem(
            products,
            linear=("prices",),
            nonlinear=spec["nonlinear"],
            absorb=FE,
            agent_data=agents,
            demographics=("log_income",),
        )
        bounds = pyblp_default_sigma_bounds(spec["sigma"])
        results[name] = problem.solve(spec["sigma"], spec["pi"], method="1s", optimizer=optimizer, sigma_bounds=bounds)
    simple, full = results["simple"], results["full"]
    out["ex2.pi_mushy_income"] = float(np.asarray(simple.pi)[0, 0])
    out["ex2.pi_mushy_income_se"] = float(np.asarray(simple.pi_se)[0, 0])
    sigma, sigma_se = np.asarray(full.sigma), np.asarray(full.sigma_se)
    pi, pi_se = np.asarray(full.pi), np.asarray(full.pi_se)
    out["ex2.full.sigma_price"], out["ex2.full.sigma_price_se"] = float(sigma[1, 1]), float(sigma_se[1, 1])
    out["ex2.full.pi_mushy_income"], out["ex2.full.pi_mushy_income_se"] = float(pi[0, 0]), float(pi_se[0, 0])
    out["ex2.full.pi_price_income"], out["ex2.full.pi_price_income_se"] = float(pi[1, 0]), float(pi_se[1, 0])
    out["ex2.full.price"], out["ex2.full.price_se"] = full.beta["prices"], full.beta_se["prices"]
    out["ex2.full.objective"] = float(full.objective)
    cf = full.counterfactual(counterfactual_prices(product_data), name="prices")
    out["ex2.full.cf.pct_change"] = cf.loc[cf["market_ids"] == CF_MARKET, "pct_change"].to_numpy()
    return out


def exercise2_pyblp(product_data: pd.DataFrame, data_dir: Path = DEFAULT_DATA) -> dict:
    """Exercise 2.2 and 2.5 with PyBLP 1.3.0 (same agents, nodes, instruments, bounds and optimiser)."""
    import pyblp

    pyblp.options.verbose = False
    optimization = pyblp.Optimization("trust-constr", {"gtol": 1e-8, "xtol": 1e-8})
    results = {}
    for name, spec in (("simple", EX2_SIMPLE), ("full", EX2_FULL)):
        products, agents = _ex2_inputs(data_dir, spec)
        problem = pyblp.Problem(
            (
                pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)"),
                pyblp.Formulation("0 + " + " + ".join(spec["nonlinear"])),
            ),
            products,
            pyblp.Formulation("0 + log_income"),
            agents,
        )
        results[name] = problem.solve(
            np.asarray(spec["sigma"], float),
            np.asarray(spec["pi"], float),
            sigma_bounds=pyblp_default_sigma_bounds(spec["sigma"]),
            method="1s",
            optimization=optimization,
        )
    simple, full = results["simple"], results["full"]
    out: dict = {
        "ex2.pi_mushy_income": float(simple.pi[0, 0]),
        "ex2.pi_mushy_income_se": float(simple.pi_se[0, 0]),
        "ex2.full.sigma_price": float(full.sigma[1, 1]),
        "ex2.full.sigma_price_se": float(full.sigma_se[1, 1]),
        "ex2.full.pi_mushy_income": float(full.pi[0, 0]),
        "ex2.full.pi_mushy_income_se": float(full.pi_se[0, 0]),
        "ex2.full.pi_price_income": float(full.pi[1, 0]),
        "ex2.full.pi_price_income_se": float(full.pi_se[1, 0]),
    }
    out["ex2.full.price"], out["ex2.full.price_se"] = _pyblp_beta(full, "prices")
    out["ex2.full.objective"] = float(np.asarray(full.objective).item())
    in_market = (product_data["market_ids"] == CF_MARKET).to_numpy()
    shares = product_data["shares"].to_numpy()[in_market]
    new_shares = full.compute_shares(prices=counterfactual_prices(product_data)).ravel()[in_market]
    out["ex2.full.cf.pct_change"] = 100 * (new_shares / shares - 1)
    return out


# --- exercise 3: micro moments ----------------------------------------------------------------------------
#: The two imaginary surveys of cereal buyers (j ≠ 0) sample these markets.
EX3_MARKETS = ("C01Q1", "C01Q2")
#: Observed statistics: E[log income | j ≠ 0] (income survey, N = 100); P(k = 0 | j ≠ 0), P(mushy_j and
#: mushy_k | j ≠ 0) and, for the nesting supplemental, P(firm_j = firm_k | j ≠ 0) (diversion survey, N = 200).
EX3_VALUES = {"income": 7.9, "outside": 0.28, "mushy": 0.31, "firm": 0.35}
EX3_X2 = ("1", "mushy", "prices")
EX3_INSTRUMENTS = ("DI0", "DI1", "DI2", "DI3")
#: Exercise 3.1: σ_prices and π on 1, mushy, prices × log income (π_1 identified by the income moment).
EX3_INCOME = dict(sigma=np.diag([0.0, 0.0, 6.0]), pi=[[1.0], [0.1], [-6.0]], moments=("income",))
#: Exercise 3.2: add both diversion moments and free σ_1, σ_mushy.
EX3_FULL = dict(sigma=np.diag([1.0, 1.0, 6.0]), pi=[[-0.3], [0.1], [-6.0]], moments=("income", "outside", "mushy"))
#: Market-size supplemental: (a) σ_1 = 0 with income + mushy moments; (b) the same with market size doubled;
#: (c) size doubled, σ_1 free with all three moments.
EX3_SIZE = {
    "a": dict(sigma=np.diag([0.0, 4.0, 6.0]), pi=EX3_FULL["pi"], moments=("income", "mushy"), size=1.0),
    "b": dict(sigma=np.diag([0.0, 4.0, 6.0]), pi=EX3_FULL["pi"], moments=("income", "mushy"), size=2.0),
    "c": dict(sigma=np.diag([2.0, 4.0, 6.0]), pi=EX3_FULL["pi"], moments=("income", "outside", "mushy"), size=2.0),
}
#: Nesting supplemental: nests = firms, ρ from 0.1 in [0, 0.99], plus the same-firm diversion moment.
EX3_RCNL = dict(EX3_FULL, moments=("income", "outside", "mushy", "firm"), rho=0.1)
#: Optimal micro moments supplemental: simulate the income survey (N = 100 buyers, ``seed``) from the Exercise 3.2
#: fit, integrate each respondent's unobserved tastes with ``draws`` normal draws, replace the income moment by the
#: mean-score moment for π on 1 × log income (keeping both diversion moments) and re-estimate from Σ = diag(2, 4, 6).
EX3_OPTIMAL = dict(sigma=np.diag([2.0, 4.0, 6.0]), pi=EX3_FULL["pi"], moments=("outside", "mushy"), draws=1000, seed=0)


def _ex3_inputs(data_dir: Path, size: float = 1.0, nested: bool = False):
    products, agents = load_exercise2_data(data_dir)
    products = with_instruments(products, *EX3_INSTRUMENTS)
    products["shares"] = products["shares"] / size
    products["firm_code"] = pd.factorize(products["firm_ids"])[0].astype(float)
    if nested:
        products["nesting_ids"] = products["firm_ids"]
    return products, agents


def ex3_micro_moments(names=("income", "outside", "mushy", "firm")):
    """The Exercise 3 micro moments in blpjax (survey weights and values are JAX functions of one market)."""
    import jax.numpy as jnp

    import blpjax

    income = blpjax.MicroDataset("income survey", 100, lambda m: jnp.ones((m.I, m.J)), EX3_MARKETS)
    diversion = blpjax.MicroDataset("diversion survey", 200, lambda m: jnp.ones((m.I, m.J, 1 + m.J)), EX3_MARKETS)

    def pairs(x):  # x_j · x_k for first choice j (inside) and second choice k (outside first, x_0 = 0)
        return lambda m: jnp.broadcast_to(x(m)[:, None] * jnp.r_[0.0, x(m)][None, :], (m.I, m.J, 1 + m.J))

    def same_firm(m):
        f = m.products["firm_code"]
        same = (f[:, None] == f[None, :]).astype(float)
        return jnp.broadcast_to(jnp.concatenate([jnp.zeros((m.J, 1)), same], axis=1), (m.I, m.J, 1 + m.J))

    parts = {
        "income": blpjax.MicroPart(
            "E[log income | j > 0]", income, lambda m: jnp.outer(m.agents["log_income"], jnp.ones(m.J))
        ),
        "outside": blpjax.MicroPart(
            "P(k = 0 | j > 0)", diversion, lambda m: jnp.zeros((m.I, m.J, 1 + m.J)).at[:, :, 0].set(1.0)
        ),
        "mushy": blpjax.MicroPart("P(mushy_j, mushy_k | j > 0)", diversion, pairs(lambda m: m.products["mushy"])),
        "firm": blpjax.MicroPart("P(firm_j = firm_k | j > 0)", diversion, same_firm),
    }
    return [blpjax.MicroMoment(parts[n].name, EX3_VALUES[n], parts[n]) for n in names]


def ex3_micro_moments_pyblp(product_data: pd.DataFrame, names=("income", "outside", "mushy", "firm")):
    """The same micro moments in PyBLP."""
    import pyblp

    by_market = {t: g for t, g in product_data.groupby("market_ids")}
    income = pyblp.MicroDataset(
        "income survey", 100, lambda t, p, a: np.ones((a.size, p.size)), market_ids=list(EX3_MARKETS)
    )
    diversion = pyblp.MicroDataset(
        "diversion survey", 200, lambda t, p, a: np.ones((a.size, p.size, 1 + p.size)), market_ids=list(EX3_MARKETS)
    )

    def outside(t, p, a):
        v = np.zeros((a.size, p.size, 1 + p.size))
        v[:, :, 0] = 1
        return v

    def pairs(column):
        def values(t, p, a):
            x = by_market[t][column].to_numpy(float)
            if column == "firm_code":
                pair = np.c_[np.zeros(p.size), (x[:, None] == x[None, :]).astype(float)]
            else:
                pair = x[:, None] * np.r_[0, x][None, :]
            return np.broadcast_to(pair, (a.size, p.size, 1 + p.size)).copy()

        return values

    parts = {
        "income": pyblp.MicroPart(
            "E[log income | j > 0]", income, lambda t, p, a: np.outer(a.demographics[:, 0], np.ones(p.size))
        ),
        "outside": pyblp.MicroPart("P(k = 0 | j > 0)", diversion, outside),
        "mushy": pyblp.MicroPart("P(mushy_j, mushy_k | j > 0)", diversion, pairs("mushy")),
        "firm": pyblp.MicroPart("P(firm_j = firm_k | j > 0)", diversion, pairs("firm_code")),
    }
    return [pyblp.MicroMoment(parts[n].name, EX3_VALUES[n], parts[n]) for n in names]


def ex3_score_rows(observations: pd.DataFrame, draws: int = EX3_OPTIMAL["draws"], seed: int = EX3_OPTIMAL["seed"]):
    """Explicit integration rows for scores: observation n (the n-th row of ``observations``) repeated over
    ``draws`` standard normal nodes, weights 1/draws, ``micro_ids`` = n.

    The nodes of observation n are ``blpjax.Integration("monte_carlo", draws, seed).build(3, market=n)``: the rule
    blpjax applies to the n-th observation when given ``integration=``, so PyBLP, given these rows, integrates
    with identical draws (blpjax's agent scores with that integration number the agents of the dataset's markets
    n = 0, 1, ... in market, then agent order).
    """
    import blpjax

    integration = blpjax.Integration("monte_carlo", draws, seed=seed)
    nodes = np.concatenate([integration.build(len(EX3_X2), market=n)[0] for n in range(len(observations))])
    rows = observations.reset_index(drop=True).loc[np.repeat(np.arange(len(observations)), draws)]
    rows = rows.reset_index(drop=True).assign(micro_ids=np.repeat(np.arange(len(observations)), draws))
    return rows.assign(weights=1 / draws, **{f"nodes{k}": nodes[:, k] for k in range(nodes.shape[1])})


_EX3_SURVEY: dict[str, pd.DataFrame] = {}
_EX3_PYBLP_FULL: dict[str, tuple] = {}


def _ex3_pyblp_solve(data_dir: Path, spec: dict, size: float = 1.0, nested: bool = False, extra_moments=()):
    """One Exercise 3 specification with PyBLP 1.3.0 (same agents, nodes, instruments, bounds, optimiser and micro
    moments as :func:`_ex3_solve`): (results, product data)."""
    import pyblp

    pyblp.options.verbose = False
    products, agents = _ex3_inputs(data_dir, size, nested)
    problem = pyblp.Problem(
        (
            pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)"),
            pyblp.Formulation("1 + mushy + prices"),
        ),
        products,
        pyblp.Formulation("0 + log_income"),
        agents,
    )
    kwargs = dict(rho=spec["rho"], rho_bounds=(0.0, 0.99)) if nested else {}
    results = problem.solve(
        np.asarray(spec["sigma"], float),
        np.asarray(spec["pi"], float),
        sigma_bounds=pyblp_default_sigma_bounds(spec["sigma"]),
        method="1s",
        optimization=pyblp.Optimization("trust-constr", {"gtol": 1e-8, "xtol": 1e-8}),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
        micro_moments=[*extra_moments, *ex3_micro_moments_pyblp(products, spec["moments"])],
        **kwargs,
    )
    return results, products


def _ex3_pyblp_full(data_dir: Path):
    """PyBLP's Exercise 3.2 fit, once per data folder (the survey and ``exercise3_pyblp`` share it)."""
    key = str(Path(data_dir).resolve())
    if key not in _EX3_PYBLP_FULL:
        _EX3_PYBLP_FULL[key] = _ex3_pyblp_solve(data_dir, EX3_FULL)
    return _EX3_PYBLP_FULL[key]


def ex3_simulated_survey(data_dir: Path = DEFAULT_DATA, full=None) -> pd.DataFrame:
    """The course's simulated income survey: PyBLP's ``simulate_micro_data(dataset, seed=0)`` at PyBLP's Exercise 3.2
    fit, as the course draws it (so that both libraries, and a reader following the course, score the same 100 buyers).

    Columns ``micro_ids``, ``market_ids``, ``agent_indices``, ``choice_indices``, ``log_income`` (the respondent's
    demographic, merged on market and within-market agent index as PyBLP's documentation says). Simulated once per
    data folder and cached. ``full`` is accepted for compatibility and not used: the survey never depends on which
    library's fit the caller holds.
    """
    del full
    key = str(Path(data_dir).resolve())
    if key not in _EX3_SURVEY:
        results, products = _ex3_pyblp_full(data_dir)
        dataset = ex3_micro_moments_pyblp(products, ("income",))[0].parts[0].dataset
        sim = results.simulate_micro_data(dataset, seed=EX3_OPTIMAL["seed"])
        survey = pd.DataFrame(
            {
                "micro_ids": np.asarray(sim["micro_ids"]).ravel(),
                "market_ids": np.asarray(sim["market_ids"]).ravel().astype(str),
                "agent_indices": np.asarray(sim["agent_indices"]).ravel().astype(int),
                "choice_indices": np.asarray(sim["choice_indices"]).ravel().astype(int),
            }
        )
        _, agents = _ex3_inputs(data_dir)
        agents = agents.assign(agent_indices=agents.groupby("market_ids").cumcount())
        agents["market_ids"] = agents["market_ids"].astype(str)
        survey = survey.merge(agents[["market_ids", "agent_indices", "log_income"]], how="left", validate="many_to_one")
        assert survey["log_income"].notna().all() and len(survey) == 100, "every respondent is one of the agents"
        _EX3_SURVEY[key] = survey
    return _EX3_SURVEY[key]


def _outside_pct(cf: pd.DataFrame, market=CF_MARKET) -> float:
    m = cf[cf["market_ids"] == market]
    return float(100 * ((1 - m["new_shares"].sum()) / (1 - m["shares"].sum()) - 1))


def _ex3_keys(out: dict, prefix: str, sigma, sigma_se, pi, pi_se, price, price_se):
    for k, name in enumerate(EX3_X2):
        label = "price" if name == "prices" else name
        out[f"{prefix}.sigma_{label}"], out[f"{prefix}.sigma_{label}_se"] = float(sigma[k, k]), float(sigma_se[k, k])
        out[f"{prefix}.pi_{label}_income"], out[f"{prefix}.pi_{label}_income_se"] = float(pi[k, 0]), float(pi_se[k, 0])
    out[f"{prefix}.price"], out[f"{prefix}.price_se"] = float(price), float(price_se)


def _ex3_solve(data_dir: Path, spec: dict, size: float = 1.0, nested: bool = False, extra_moments=(), problem=None):
    """One Exercise 3 specification with blpjax (``extra_moments`` go before the specification's own)."""
    import blpjax

    if problem is None:
        products, agents = _ex3_inputs(data_dir, size, nested)
        problem = blpjax.Problem(
            products, linear=("prices",), nonlinear=EX3_X2, absorb=FE, agent_data=agents, demographics=("log_income",)
        )
    kwargs = dict(rho=spec["rho"], rho_bounds=(0.0, 0.99)) if nested else {}
    return problem.solve(
        spec["sigma"],
        spec["pi"],
        method="1s",
        optimizer=blpjax.ScipyOptimizer("trust-constr", gtol=1e-8, xtol=1e-8),
        sigma_bounds=pyblp_default_sigma_bounds(spec["sigma"]),
        micro_moments=[*extra_moments, *ex3_micro_moments(spec["moments"])],
        **kwargs,
    )


def ex3_optimal_moment(full, survey: pd.DataFrame):
    """blpjax's optimal micro moment for π on 1 × log income from the simulated ``survey`` at the fit ``full``.

    Its value is the mean observed score (each respondent integrated with :func:`ex3_score_rows`); its part's
    values are the agent scores (every agent of the two markets and every choice, integrated with the same rule).
    """
    import jax.numpy as jnp

    import blpjax

    dataset = ex3_micro_moments(("income",))[0].parts.dataset
    integration = blpjax.Integration("monte_carlo", EX3_OPTIMAL["draws"], seed=EX3_OPTIMAL["seed"])
    scores = full.compute_micro_scores(dataset, ex3_score_rows(survey[["market_ids", "choice_indices", "log_income"]]))
    agent = full.compute_agent_scores(dataset, integration=integration)
    label = "pi[1, log_income]"
    rows = list(full.problem.index.market_ids)
    table = np.zeros((len(rows),) + agent[label].shape[1:])
    table[[rows.index(t) for t in EX3_MARKETS]] = agent[label]
    table = jnp.asarray(table)
    part = blpjax.MicroPart(f"score[{label}]", dataset, lambda m, table=table: table[m.t])
    return blpjax.MicroMoment(f"score[{label}]", float(scores[label].mean()), part), scores


def ex3_optimal_moment_pyblp(full, products: pd.DataFrame, agents: pd.DataFrame, survey: pd.DataFrame):
    """The same optimal micro moment in PyBLP, integrating respondents and agents with the same explicit draws.

    PyBLP's ``compute_agent_scores`` is given the agents of the two markets as micro data (market, then agent
    order, rows from :func:`ex3_score_rows`), which reproduces blpjax's ``integration=`` draws exactly.
    """
    import pyblp

    def arrays(df):
        return {c: df[c].to_numpy() for c in df.columns}

    dataset = ex3_micro_moments_pyblp(products, ("income",))[0].parts[0].dataset
    p = list(full.theta_labels).index("1 x log_income")
    rows = ex3_score_rows(survey[["market_ids", "choice_indices", "log_income"]])
    scores = np.asarray(full.compute_micro_scores(dataset, arrays(rows))[p])
    surveyed = pd.concat([agents[agents["market_ids"] == t] for t in EX3_MARKETS])
    agent = full.compute_agent_scores(dataset, arrays(ex3_score_rows(surveyed[["market_ids", "log_income"]])))[p]
    part = pyblp.MicroPart(
        "score[pi[1, log_income]]", dataset, lambda t, p, a, agent=agent: np.nan_to_num(np.asarray(agent[t]))
    )
    return pyblp.MicroMoment("score[pi[1, log_income]]", float(scores.mean()), part), scores


def _ex3_optimal_keys(out: dict, score, sigma, sigma_se, pi, pi_se):
    out["ex3.optimal.score_1_income"] = float(score)
    out["ex3.optimal.sigma_1"], out["ex3.optimal.sigma_1_se"] = float(sigma[0, 0]), float(sigma_se[0, 0])
    out["ex3.optimal.pi_1_income"], out["ex3.optimal.pi_1_income_se"] = float(pi[0, 0]), float(pi_se[0, 0])


def exercise3(product_data: pd.DataFrame, data_dir: Path = DEFAULT_DATA) -> dict:
    """Exercise 3.1, 3.2, the market-size, optimal micro moments and nesting supplementals with blpjax."""

    def solve(spec, size=1.0, nested=False):
        return _ex3_solve(data_dir, spec, size, nested)

    out: dict = {}
    income = solve(EX3_INCOME)
    out["ex3.income.pi_1_income"] = float(income.pi[0, 0])
    out["ex3.income.pi_1_income_se"] = float(income.pi_se[0, 0])
    full = solve(EX3_FULL)
    _ex3_keys(
        out, "ex3.full", full.sigma, full.sigma_se, full.pi, full.pi_se, full.beta["prices"], full.beta_se["prices"]
    )
    out["ex3.full.objective"] = float(full.objective)
    out["ex3.full.micro_values"] = full.micro_values["estimated"].to_numpy()
    cf = full.counterfactual(counterfactual_prices(product_data), name="prices")
    out["ex3.full.cf.pct_change"] = cf.loc[cf["market_ids"] == CF_MARKET, "pct_change"].to_numpy()
    outside = []
    for spec in EX3_SIZE.values():
        res = solve(spec, spec["size"])
        outside.append(_outside_pct(res.counterfactual(counterfactual_prices(product_data), name="prices")))
    out["ex3.size.outside_pct"] = outside
    survey = ex3_simulated_survey(data_dir, full)
    moment, _ = ex3_optimal_moment(full, survey)
    optimal = _ex3_solve(data_dir, EX3_OPTIMAL, extra_moments=[moment], problem=full.problem)
    _ex3_optimal_keys(out, moment.value, optimal.sigma, optimal.sigma_se, optimal.pi, optimal.pi_se)
    rcnl = solve(EX3_RCNL, nested=True)
    out["ex3.rcnl.rho"], out["ex3.rcnl.rho_se"] = float(rcnl.rho[0]), float(rcnl.rho_se[0])
    return out


def exercise3_pyblp(product_data: pd.DataFrame, data_dir: Path = DEFAULT_DATA) -> dict:
    """The same with PyBLP 1.3.0 (same agents, nodes, instruments, bounds, optimiser and micro moments)."""

    def solve(spec, size=1.0, nested=False, extra_moments=()):
        return _ex3_pyblp_solve(data_dir, spec, size, nested, extra_moments)

    def cf_shares(results, products):
        in_market = (products["market_ids"] == CF_MARKET).to_numpy()
        shares = products["shares"].to_numpy()[in_market]
        new = results.compute_shares(prices=counterfactual_prices(products)).ravel()[in_market]
        return shares, new

    out: dict = {}
    income, _ = solve(EX3_INCOME)
    out["ex3.income.pi_1_income"] = float(income.pi[0, 0])
    out["ex3.income.pi_1_income_se"] = float(income.pi_se[0, 0])
    full, products = _ex3_pyblp_full(data_dir)
    price, price_se = _pyblp_beta(full, "prices")
    _ex3_keys(out, "ex3.full", full.sigma, full.sigma_se, full.pi, full.pi_se, price, price_se)
    out["ex3.full.objective"] = float(np.asarray(full.objective).item())
    out["ex3.full.micro_values"] = np.asarray(full.micro_values).ravel()
    shares, new = cf_shares(full, products)
    out["ex3.full.cf.pct_change"] = 100 * (new / shares - 1)
    outside = []
    for spec in EX3_SIZE.values():
        res, products = solve(spec, spec["size"])
        shares, new = cf_shares(res, products)
        outside.append(float(100 * ((1 - new.sum()) / (1 - shares.sum()) - 1)))
    out["ex3.size.outside_pct"] = outside
    products, agents = _ex3_inputs(data_dir)
    moment, _ = ex3_optimal_moment_pyblp(full, products, agents, ex3_simulated_survey(data_dir))
    optimal, _ = solve(EX3_OPTIMAL, extra_moments=[moment])
    _ex3_optimal_keys(out, moment.value, optimal.sigma, optimal.sigma_se, optimal.pi, optimal.pi_se)
    rcnl, _ = solve(EX3_RCNL, nested=True)
    out["ex3.rcnl.rho"], out["ex3.rcnl.rho_se"] = (
        float(np.asarray(rcnl.rho).ravel()[0]),
        float(np.asarray(rcnl.rho_se).ravel()[0]),
    )
    return out


# --- driver -----------------------------------------------------------------------------------------------
#: exercise name → (blpjax implementation, PyBLP implementation); each maps (product data, data folder) to
#: flat results.
Exercise = Callable[[pd.DataFrame, Path], dict]
EXERCISES: dict[str, tuple[Exercise, Exercise]] = {
    "ex1": (lambda products, _: exercise1(products), lambda products, _: exercise1_pyblp(products)),
    "ex2": (exercise2, exercise2_pyblp),
    "ex3": (exercise3, exercise3_pyblp),
}


def to_json(results: dict) -> dict:
    """Plain floats and lists of floats (JSON-serialisable, in insertion order)."""
    return {k: np.asarray(v, dtype=float).tolist() for k, v in results.items()}


def max_relative_differences(ours: dict, reference: dict, absolute=ABSOLUTE_KEYS) -> dict[str, float]:
    """Per key, max over elements of |ours − reference| / |reference| (keys of ``ours``).

    Keys in ``absolute`` (values ≈ 0) get the absolute difference |ours − reference| instead.
    """
    diffs = {}
    for key, value in ours.items():
        a, b = np.atleast_1d(np.asarray(value, float)), np.atleast_1d(np.asarray(reference[key], float))
        if a.shape != b.shape:
            raise ValueError(f"{key}: blpjax shape {a.shape} vs PyBLP shape {b.shape}.")
        scale = 1.0 if key in absolute else np.maximum(np.abs(b), np.finfo(float).tiny)
        diffs[key] = float(np.max(np.abs(a - b) / scale))
    return diffs


#: The numbers the course's solution notebooks print, as printed, keyed like the output (``values``).
COURSE_PRINTED = Path(__file__).resolve().parent / "results" / "mixtape_course_printed.json"


def agrees_with_printed(value: float, printed: str, decimals: int | None = None) -> bool:
    """Whether ``value`` rounded as ``printed`` is printed has ``printed``'s value: to its significant digits in
    scientific notation (``-1.90E-02``), else to its decimals (``-30.6``) or to ``decimals`` where given (pandas trims
    trailing zeros: its ``-30.6`` at precision 3 is ``-30.600``)."""
    mantissa, scientific, _ = printed.upper().partition("E")
    places = len(mantissa.partition(".")[2]) if decimals is None else decimals
    return float(f"{value:.{places}{'E' if scientific else 'f'}}") == float(printed)


def check_course(results: dict, path: Path = COURSE_PRINTED) -> bool:
    """Print key, printed, blpjax, agree? (stderr) for every recorded course value of a key in ``results``, one row per
    element; True if all agree."""
    rows = []
    for key, entry in json.loads(path.read_text())["values"].items():
        if key not in results:
            continue
        ours, printed = np.atleast_1d(np.asarray(results[key], float)), np.atleast_1d(entry["printed"])
        for i, (value, text) in enumerate(zip(ours, printed, strict=True)):
            name = f"{key}[{i}]" if isinstance(entry["printed"], list) else key
            rows.append((name, str(text), f"{value:.8g}", agrees_with_printed(value, text, entry.get("decimals"))))
    width = max((len(r[0]) for r in rows), default=0)
    print(f"blpjax vs the course's printed numbers ({path.name}):", file=sys.stderr)
    print(f"  {'key':<{width}}  {'printed':>11}  {'blpjax':>14}  agree?", file=sys.stderr)
    for name, text, value, agree in rows:
        print(f"  {name:<{width}}  {text:>11}  {value:>14}  {'yes' if agree else 'NO'}", file=sys.stderr)
    print(f"  {sum(r[3] for r in rows)}/{len(rows)} agree", file=sys.stderr)
    return all(r[3] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with products.csv (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout)")
    parser.add_argument(
        "--exercises",
        nargs="+",
        choices=sorted(EXERCISES),
        default=sorted(EXERCISES),
        help="exercises to run",
    )
    parser.add_argument(
        "--check-pyblp",
        action="store_true",
        help="also run the specifications in PyBLP and print max relative differences",
    )
    parser.add_argument(
        "--check-course",
        action="store_true",
        help="compare with the numbers the course's solution notebooks print (exit 1 if any disagree)",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-8,
        help="--check-pyblp fails above this difference (default: %(default)g)",
    )
    args = parser.parse_args(argv)

    product_data = load_product_data(args.data)
    results: dict = {}
    for name in args.exercises:
        results.update(EXERCISES[name][0](product_data, args.data))
    text = json.dumps(to_json(results), indent=2)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")

    status = int(args.check_course and not check_course(results))
    if not args.check_pyblp:
        return status
    reference: dict = {}
    for name in args.exercises:
        reference.update(EXERCISES[name][1](product_data, args.data))
    diffs = max_relative_differences(results, reference)
    width = max(map(len, diffs))
    print(f"max relative difference blpjax vs PyBLP (absolute for {sorted(ABSOLUTE_KEYS)}):", file=sys.stderr)
    for key, d in diffs.items():
        print(f"  {key:<{width}}  {d:.3e}{'  FAIL' if d > args.tol else ''}", file=sys.stderr)
    return status | int(max(diffs.values()) > args.tol)


if __name__ == "__main__":
    sys.exit(main())
