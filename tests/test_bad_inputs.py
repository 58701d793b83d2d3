"""A catalogue of bad inputs: each fails before any numerics with a specific error naming the offender.

Every case builds a small simulated problem, spoils one thing, and asserts the error type and a
message that names the column, market, argument or matrix, so a user knows what to fix.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import blpjax
from blpjax import BLPDataError, BLPSpecificationError

CFG = blpjax.SimulationConfig(markets=6, agents=10, products=(3, 5), seed=1)
PRODUCTS, AGENTS, _ = blpjax.simulate(CFG)
RC = dict(linear=("1", "x", "prices"), nonlinear=("1", "prices"), demographics=("income",))
SIGMA, PI = np.diag([1.0, 0.3]), [[0.0], [0.4]]


def products(**changes):
    df = PRODUCTS.copy()
    for column, value in changes.items():
        df[column] = value
    return df


def agents(**changes):
    df = AGENTS.copy()
    for column, value in changes.items():
        df[column] = value
    return df


def set_row(df, row, column, value):
    df = df.copy()
    if not pd.api.types.is_object_dtype(df[column]) and isinstance(value, str):
        df[column] = df[column].astype(object)
    df.loc[row, column] = value
    return df


def rc_problem(p=None, a=None, **kw):
    return blpjax.Problem(PRODUCTS if p is None else p, agent_data=AGENTS if a is None else a, **(RC | kw))


def solve(**kw):
    return rc_problem().solve(**(dict(sigma=SIGMA, pi=PI, method="1s") | kw))


def supply_products():
    df = PRODUCTS.copy()
    df["supply_instruments0"] = df["demand_instruments1"]
    return df


def supply_problem(**kw):
    a = AGENTS.assign(one=1.0)
    spec = dict(linear=("1", "x"), nonlinear=("1", "prices"), demographics=("income", "one"), costs=("1", "x")) | kw
    return blpjax.Problem(supply_products(), agent_data=a, **spec)


def micro(weights=lambda m: jnp.ones((m.I, m.J)), values=None, observations=100, markets=None, function=None, n=1):
    values = values or (lambda m: jnp.outer(m.agents["income"], jnp.ones(m.J)))
    ds = blpjax.MicroDataset("survey", observations, weights, markets)
    parts = [blpjax.MicroPart(f"part{k}", ds, values) for k in range(n)]
    return [blpjax.MicroMoment("moment", 0.5, parts if n > 1 else parts[0], function)]


def two_agent_weights():
    w = AGENTS.weights.to_numpy().copy()
    w[AGENTS.market_ids.to_numpy() == 4] *= 2
    return w


def negative_weights():
    w = AGENTS.weights.to_numpy().copy()
    w[0] = -0.5
    return w


@pytest.fixture(scope="module")
def results():
    return solve()


E = BLPDataError
S = BLPSpecificationError
N = len(PRODUCTS)

CASES = [
    # --- product data ----------------------------------------------------------------------------------
    ("products not a DataFrame", lambda: blpjax.Problem(PRODUCTS.to_dict(), ("1", "prices")), E, "pandas DataFrame"),
    ("no rows", lambda: blpjax.Problem(PRODUCTS.iloc[:0], ("1", "prices")), E, "no rows"),
    ("missing market_ids", lambda: blpjax.Problem(PRODUCTS.drop(columns="market_ids"), ("1",)), E, "market_ids"),
    ("missing shares", lambda: blpjax.Problem(PRODUCTS.drop(columns="shares"), ("1",)), E, r"\['shares'\]"),
    ("missing X1 column", lambda: blpjax.Problem(PRODUCTS, ("1", "sugar")), E, r"\['sugar'\]"),
    ("missing X2 column", lambda: rc_problem(nonlinear=("1", "mushy")), E, r"\['mushy'\]"),
    ("missing absorbed column", lambda: blpjax.Problem(PRODUCTS, ("prices",), absorb=("brand",)), E, "brand"),
    ("NaN share", lambda: blpjax.Problem(set_row(PRODUCTS, 2, "shares", np.nan), ("1",)), E, "'shares'.*NaN"),
    ("inf price", lambda: blpjax.Problem(set_row(PRODUCTS, 2, "prices", np.inf), ("1", "prices")), E, "'prices'"),
    ("NaN in X1", lambda: blpjax.Problem(set_row(PRODUCTS, 5, "x", np.nan), ("1", "x")), E, "'x'.*market"),
    (
        "NaN instrument",
        lambda: blpjax.Problem(set_row(PRODUCTS, 1, "demand_instruments0", np.nan), ("1", "prices")),
        E,
        "demand_instruments0",
    ),
    ("text in X1", lambda: blpjax.Problem(set_row(PRODUCTS, 1, "x", "high"), ("1", "x")), E, "'x' must be numeric"),
    ("zero share", lambda: blpjax.Problem(set_row(PRODUCTS, 0, "shares", 0.0), ("1",)), E, "shares must be positive"),
    ("negative share", lambda: blpjax.Problem(set_row(PRODUCTS, 0, "shares", -0.1), ("1",)), E, "positive"),
    (
        "shares summing to one",
        lambda: blpjax.Problem(products(shares=np.where(PRODUCTS.market_ids == 2, 0.5, PRODUCTS.shares)), ("1",)),
        E,
        r"sum to ≥ 1 in market\(s\) \[2\]",
    ),
    ("subnormal share", lambda: blpjax.Problem(set_row(PRODUCTS, 0, "shares", 1e-310), ("1",)), E, "subnormal"),
    (
        "duplicate product ids",
        lambda: blpjax.Problem(set_row(PRODUCTS, 1, "product_ids", PRODUCTS.product_ids[0]), ("1",)),
        E,
        "duplicate products",
    ),
    (
        "duplicate column names",
        lambda: blpjax.Problem(pd.concat([PRODUCTS, PRODUCTS[["x"]]], axis=1), ("1", "x")),
        E,
        r"duplicate column names \['x'\]",
    ),
    (
        "too few instruments",
        lambda: blpjax.Problem(PRODUCTS.drop(columns=[c for c in PRODUCTS if "instruments" in c]), ("1", "prices")),
        E,
        "too few instruments",
    ),
    ("collinear X1", lambda: blpjax.Problem(products(x2=2 * PRODUCTS.x), ("1", "x", "x2")), E, "'x2'"),
    ("constant with fixed effects", lambda: blpjax.Problem(PRODUCTS, ("1", "x"), absorb=("market_ids",)), E, "'1'"),
    (
        "characteristic absorbed by a fixed effect",
        lambda: blpjax.Problem(products(m=PRODUCTS.market_ids * 0.1), ("x", "m"), absorb=("market_ids",)),
        E,
        "'m'.*after absorbing",
    ),
    (
        "collinear instruments",
        lambda: blpjax.Problem(products(demand_instruments8=PRODUCTS.demand_instruments0), ("1", "prices")),
        E,
        "demand_instruments8",
    ),
    ("collinear X2", lambda: rc_problem(p=products(p2=2 * PRODUCTS.prices), nonlinear=("prices", "p2")), E, "'p2'"),
    (
        "missing market ids",
        lambda: blpjax.Problem(set_row(PRODUCTS, 0, "market_ids", np.nan), ("1",)),
        E,
        "market_ids",
    ),
    (
        "missing fixed-effect level",
        lambda: blpjax.Problem(set_row(PRODUCTS, 0, "product_ids", None), ("x",), absorb=("product_ids",)),
        E,
        "product_ids",
    ),
    ("missing nest", lambda: blpjax.Problem(products(nesting_ids=np.nan), ("1",)), E, "nesting_ids"),
    ("formula naming a missing column", lambda: blpjax.Problem(PRODUCTS, linear="prices + nosuch"), E, "nosuch"),
    ("empty X1", lambda: blpjax.Problem(PRODUCTS, linear=()), S, "X1 is empty"),
    # --- agent data ----------------------------------------------------------------------------------
    ("agents not a DataFrame", lambda: rc_problem(a=AGENTS.to_numpy()), E, "agent_data must be a pandas"),
    ("agents without market ids", lambda: rc_problem(a=AGENTS.drop(columns="market_ids")), E, "market_ids"),
    ("missing demographic", lambda: rc_problem(demographics=("age",)), E, r"\['age'\]"),
    ("too few nodes", lambda: rc_problem(a=AGENTS.drop(columns="nodes1")), E, "node column"),
    ("NaN node", lambda: rc_problem(a=set_row(AGENTS, 3, "nodes0", np.nan)), E, "'nodes0'"),
    ("NaN weight", lambda: rc_problem(a=set_row(AGENTS, 3, "weights", np.nan)), E, "'weights'"),
    ("negative weights", lambda: rc_problem(a=agents(weights=negative_weights())), E, "negative weights"),
    (
        "all-zero weights in a market",
        lambda: rc_problem(a=agents(weights=np.where(AGENTS.market_ids == 3, 0.0, AGENTS.weights))),
        E,
        r"market\(s\) \[3\]",
    ),
    (
        "agents in a market without products",
        lambda: rc_problem(a=pd.concat([AGENTS, AGENTS.assign(market_ids=99)])),
        E,
        "agent_data has market",
    ),
    ("products without agents", lambda: rc_problem(a=AGENTS[AGENTS.market_ids != 3]), E, "no agents"),
    (
        "market ids of different types",
        lambda: rc_problem(a=AGENTS.assign(market_ids=AGENTS.market_ids.astype(str))),
        E,
        "market_ids differ in type",
    ),
    (
        "demographics without agents",
        lambda: blpjax.Problem(PRODUCTS, ("1",), demographics=("income",)),
        S,
        "agent_data",
    ),
    ("random coefficients without agents", lambda: blpjax.Problem(PRODUCTS, ("1",), ("prices",)), S, "needs agents"),
    ("duplicate agent columns", lambda: rc_problem(a=pd.concat([AGENTS, AGENTS[["income"]]], axis=1)), E, "income"),
    (
        "a product rule with agent data",
        lambda: rc_problem(integration=blpjax.Integration("product", 3)),
        S,
        "simulation rule",
    ),
    # --- starting values, options, weighting matrices ----------------------------------------------
    ("sigma above the diagonal", lambda: solve(sigma=np.array([[1.0, 0.5], [0.0, 1.0]])), S, "lower triangular"),
    ("sigma of the wrong shape", lambda: solve(sigma=np.eye(3)), S, r"sigma must have shape \(2, 2\)"),
    ("NaN in sigma", lambda: solve(sigma=np.diag([np.nan, 1.0])), S, "sigma has non-finite"),
    ("pi without demographics", lambda: rc_problem(demographics=()).solve(SIGMA, PI), S, "no demographics"),
    ("rho without nests", lambda: solve(rho=0.5), S, "no nesting_ids"),
    (
        "nests without rho",
        lambda: rc_problem(p=products(nesting_ids=PRODUCTS.index % 2)).solve(SIGMA, PI),
        S,
        "starting value for rho",
    ),
    ("rho of one", lambda: rc_problem(p=products(nesting_ids=PRODUCTS.index % 2)).solve(SIGMA, PI, 1.0), S, "rho"),
    (
        "a start outside its bounds",
        lambda: solve(sigma_bounds=(np.zeros((2, 2)), np.full((2, 2), 0.1))),
        S,
        "outside sigma_bounds",
    ),
    ("an unknown method", lambda: solve(method="3s"), S, "method"),
    ("an unknown se_type", lambda: solve(se_type="hc3"), S, "se_type"),
    ("clustering without clustering_ids", lambda: solve(se_type="clustered"), S, "clustering_ids"),
    ("NaN in W", lambda: solve(W=np.full((10, 10), np.nan)), S, "NaN or infinite"),
    ("asymmetric W", lambda: solve(W=np.eye(10) + np.triu(np.ones((10, 10)), 1)), S, "not symmetric"),
    ("negative-definite W", lambda: solve(W=-np.eye(10)), S, "not positive definite"),
    ("W of the wrong size", lambda: solve(W=np.eye(3)), S, "must be 10×10"),
    ("optimizer as a string", lambda: solve(optimizer="bfgs"), S, r"ScipyOptimizer\('bfgs'\)"),
    ("optax transform as a string", lambda: blpjax.OptaxOptimizer(transform="adam"), S, "optax.adam"),
    ("unknown SciPy method", lambda: blpjax.ScipyOptimizer("newton"), S, "ScipyOptimizer.method"),
    ("negative gtol", lambda: blpjax.ScipyOptimizer(gtol=-1.0), S, "gtol"),
    ("negative contraction tolerance", lambda: blpjax.ContractionConfig(tol=-1.0), S, "tol"),
    ("unknown contraction method", lambda: blpjax.ContractionConfig(method="broyden"), S, "method"),
    ("zero Anderson step bound", lambda: blpjax.ContractionConfig(anderson_max_step=0.0), S, "anderson_max_step"),
    ("contraction as a dict", lambda: solve(contraction={"tol": 1e-12}), S, "ContractionConfig"),
    ("delta of the wrong length", lambda: solve(delta=np.zeros(N + 1)), S, "one value per product row"),
    (
        "too few moments",
        lambda: rc_problem(p=PRODUCTS.drop(columns=[f"demand_instruments{k}" for k in range(1, 8)])).solve(SIGMA, PI),
        S,
        "too few moments",
    ),
    ("cost bounds without a supply side", lambda: solve(costs_bounds=(0.1, None)), S, "costs_bounds"),
    # --- supply side ----------------------------------------------------------------------------------
    ("unknown costs_type", lambda: supply_problem(costs_type="quadratic"), S, "costs_type"),
    ("supply without firm ids", lambda: _no_firms(), E, "firm_ids"),
    (
        "prices in X1 with a supply side, concentrated out",
        lambda: supply_problem(linear=("1", "prices")).solve(np.eye(2), [[0.0, 0.0], [0.1, -1.0]]),
        S,
        r"coefficients of \['prices'\].*beta=",
    ),
    ("no prices in X2 with a supply side", lambda: supply_problem(nonlinear=("1", "x")), S, "prices must enter"),
    ("price derivative of an unknown column", lambda: supply_problem(price_derivatives={"q": 1}), S, r"\['q'\]"),
    ("prices among the cost shifters", lambda: supply_problem(costs=("1", "prices")), S, "cost characteristic"),
    # --- micro moments --------------------------------------------------------------------------------
    ("micro moments not MicroMoment", lambda: solve(micro_moments=["E[income]"]), S, "list of MicroMoment"),
    (
        "micro weights of the wrong shape",
        lambda: solve(micro_moments=micro(lambda m: jnp.ones((m.J, m.I)))),
        S,
        "transposed",
    ),
    ("negative micro weights", lambda: solve(micro_moments=micro(lambda m: -jnp.ones((m.I, m.J)))), S, "non-negative"),
    ("all-zero micro weights", lambda: solve(micro_moments=micro(lambda m: jnp.zeros((m.I, m.J)))), S, "zero in every"),
    (
        "micro values shaped unlike the weights",
        lambda: solve(micro_moments=micro(values=lambda m: jnp.ones((m.I, 1 + m.J)))),
        S,
        "values of micro part 'part0'",
    ),
    ("a fractional survey size", lambda: solve(micro_moments=micro(observations=2.5)), S, "whole number"),
    ("an unknown survey market", lambda: solve(micro_moments=micro(markets=[99])), S, r"unknown market\(s\) \[99\]"),
    ("several parts without a function", lambda: solve(micro_moments=micro(n=2)), S, "give function"),
    (
        "a NaN observed value",
        lambda: solve(micro_moments=[blpjax.MicroMoment("m", np.nan, micro()[0].parts)]),
        S,
        "non-finite observed",
    ),
    (
        "a weights function that fails",
        lambda: solve(micro_moments=micro(lambda m: m.agents["age"])),
        S,
        "weights of micro dataset 'survey' failed",
    ),
    # --- layouts --------------------------------------------------------------------------------------
    ("more devices than JAX sees", lambda: rc_problem(devices=1000), S, "JAX sees"),
    ("zero buckets", lambda: rc_problem(buckets=0), S, "buckets"),
    ("devices and buckets", lambda: rc_problem(devices=1, buckets=2), S, "devices and buckets"),
    ("a zero market batch", lambda: rc_problem(market_batch_size=0), S, "market_batch_size"),
    # --- Monte Carlo ----------------------------------------------------------------------------------
    (
        "Monte Carlo with products varying by replication",
        lambda: blpjax.monte_carlo(blpjax.SimulationConfig(markets=4, products=(2, 4), agents=5), 2),
        S,
        r"products=\(J, J\)",
    ),
    (
        "Monte Carlo with a SciPy optimizer",
        lambda: blpjax.monte_carlo(
            blpjax.SimulationConfig(markets=4, products=(3, 3), agents=5), 2, optimizer=blpjax.ScipyOptimizer()
        ),
        S,
        "OptaxOptimizer",
    ),
]


def _no_firms():
    a = AGENTS.assign(one=1.0)
    return blpjax.Problem(
        supply_products().drop(columns="firm_ids"),
        linear=("1", "x"),
        nonlinear=("1", "prices"),
        agent_data=a,
        demographics=("income", "one"),
        costs=("1",),
    )


@pytest.mark.parametrize("name, make, error, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_before_numerics_and_names_the_offender(name, make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_the_catalogue_is_large():
    assert len(CASES) + len(POST_ESTIMATION) >= 60


POST_ESTIMATION = [
    ("a column vector of prices", lambda r: r.compute_shares("prices", PRODUCTS.prices.to_numpy()[:, None]), "flatten"),
    ("prices of the wrong length", lambda r: r.compute_shares("prices", PRODUCTS.prices.to_numpy()[1:]), r"shape \("),
    ("a NaN price", lambda r: r.compute_shares("prices", set_row(PRODUCTS, 4, "prices", np.nan).prices), "NaN"),
    (
        "a Series missing rows",
        lambda r: r.counterfactual(PRODUCTS.prices.iloc[1:]),
        "1 row label",
    ),
    ("a DataFrame of prices", lambda r: r.counterfactual(PRODUCTS[["prices"]]), "not a DataFrame"),
    ("an unknown characteristic", lambda r: r.compute_elasticities("sugar"), "'sugar' is not a characteristic"),
    ("an unknown market", lambda r: r.elasticity_matrix("nowhere"), "unknown market"),
    ("an unknown layout", lambda r: r.compute_elasticities(layout="wide"), "layout"),
    ("consumer surplus at a NaN price", lambda r: r.compute_consumer_surplus(PRODUCTS.prices * np.nan), "NaN"),
]


@pytest.mark.parametrize("name, use, match", POST_ESTIMATION, ids=[c[0] for c in POST_ESTIMATION])
def test_bad_post_estimation_input_names_the_offender(results, name, use, match):
    with pytest.raises(BLPSpecificationError, match=match):
        use(results)


def test_a_reordered_series_is_aligned_by_its_index(results):
    """A Series in another row order gives the same counterfactual as the row-ordered array."""
    prices = PRODUCTS.prices * 1.1
    shuffled = prices.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(
        results.compute_shares("prices", shuffled), results.compute_shares("prices", prices.to_numpy()), rtol=1e-14
    )
    changed = results.compute_shares("prices", prices.to_numpy())
    assert not np.allclose(results.compute_shares("prices", shuffled.to_numpy()), changed)  # position would be wrong


def test_duplicate_rows_without_product_ids_are_flagged():
    """Without product ids a repeated row may be a product counted twice (or a twin: real data have them, e.g.
    two cars of PyBLP's BLP data): a warning naming the row and market, silenced by product_ids."""
    repeated = pd.concat([PRODUCTS, PRODUCTS.iloc[[0]]], ignore_index=True)
    with pytest.warns(blpjax.BLPDataWarning, match=r"duplicate rows\? 1 row\(s\) .* row 24, market '0"):
        blpjax.Problem(repeated.drop(columns="product_ids"), ("1", "x"))
    repeated.loc[24, "product_ids"] = "twin"
    blpjax.Problem(repeated, ("1", "x"))  # distinct products: no warning (warnings are errors in the suite)
