"""Bad input fails before any numerics, with a message naming the column or market."""

import numpy as np
import pandas as pd
import pytest

import blpjax
from blpjax import BLPDataError, BLPSpecificationError


@pytest.fixture
def data():
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=6, agents=10, products=(3, 5)))
    return products, agents


def test_missing_column(data):
    products, _ = data
    with pytest.raises(BLPDataError, match=r"missing column\(s\) \['sugar'\]"):
        blpjax.Problem(products, linear=("1", "prices", "sugar"))


def test_nan_in_a_used_column_names_column_and_market(data):
    products, _ = data
    products.loc[4, "x"] = np.nan
    market = products.loc[4, "market_ids"]
    with pytest.raises(BLPDataError, match=rf"'x' has 1 NaN/inf value\(s\) \(first in market\(s\) \[{market}\]"):
        blpjax.Problem(products, linear=("1", "x", "prices"))


def test_nonpositive_share(data):
    products, _ = data
    products.loc[0, "shares"] = 0.0
    with pytest.raises(BLPDataError, match="shares must be positive"):
        blpjax.Problem(products, linear=("1", "prices"))


def test_inside_shares_sum_to_one(data):
    products, _ = data
    products.loc[products["market_ids"] == 2, "shares"] = 0.5
    with pytest.raises(BLPDataError, match=r"sum to ≥ 1 in market\(s\) \[2\]"):
        blpjax.Problem(products, linear=("1", "prices"))


def test_duplicate_products(data):
    products, _ = data
    products.loc[1, "product_ids"] = products.loc[0, "product_ids"]
    with pytest.raises(BLPDataError, match="duplicate products"):
        blpjax.Problem(products, linear=("1", "prices"))


def test_too_few_instruments(data):
    products, _ = data
    products = products.drop(columns=[c for c in products.columns if c.startswith("demand_instruments")])
    with pytest.raises(BLPDataError, match="too few instruments"):
        blpjax.Problem(products, linear=("1", "prices"))


def test_too_few_moments_for_nonlinear_parameters(data):
    products, agents = data
    products = products.drop(columns=[f"demand_instruments{k}" for k in range(1, 8)])
    problem = blpjax.Problem(products, ("1", "prices"), ("1", "prices"), agent_data=agents)
    with pytest.raises(BLPSpecificationError, match="too few moments"):
        problem.solve(np.eye(2))


def test_collinear_regressors(data):
    products, _ = data
    products["x2"] = 2 * products["x"] + 1
    with pytest.raises(BLPDataError, match="collinear regressors in X1: 'x2'"):
        blpjax.Problem(products, linear=("1", "x", "x2", "prices"))


def test_constant_with_absorbed_fixed_effects(data):
    products, _ = data
    with pytest.raises(BLPDataError, match="absorbed by the fixed effects"):
        blpjax.Problem(products, linear=("1", "prices"), absorb=("product_ids",))


def test_characteristic_absorbed_by_fixed_effect(data):
    products, _ = data
    products["firm_char"] = products["market_ids"] * 0.1
    with pytest.raises(BLPDataError, match="'firm_char'.*after absorbing"):
        blpjax.Problem(products, linear=("prices", "firm_char"), absorb=("market_ids",))


def test_unmatched_agent_markets(data):
    products, agents = data
    with pytest.raises(BLPDataError, match="agent_data has market"):
        blpjax.Problem(
            products, ("1", "prices"), ("1", "prices"), agent_data=pd.concat([agents, agents.assign(market_ids=99)])
        )
    with pytest.raises(BLPDataError, match="have products but no agents"):
        blpjax.Problem(products, ("1", "prices"), ("1", "prices"), agent_data=agents[agents["market_ids"] != 3])


def test_too_few_nodes(data):
    products, agents = data
    with pytest.raises(BLPDataError, match="node column"):
        blpjax.Problem(products, ("1", "prices"), ("1", "prices"), agent_data=agents.drop(columns=["nodes1"]))


def test_sigma_not_lower_triangular(data):
    products, agents = data
    problem = blpjax.Problem(products, ("1", "prices"), ("1", "prices"), agent_data=agents)
    with pytest.raises(BLPSpecificationError, match="lower triangular"):
        problem.solve(np.array([[1.0, 0.5], [0.0, 1.0]]))


def test_rho_without_nests(data):
    products, _ = data
    with pytest.raises(BLPSpecificationError, match="no nesting_ids"):
        blpjax.Problem(products, ("1", "prices")).solve(rho=0.5)


def test_clustered_without_clustering_ids(data):
    products, _ = data
    with pytest.raises(BLPSpecificationError, match="clustering_ids"):
        blpjax.Problem(products, ("1", "prices")).solve(se_type="clustered")
