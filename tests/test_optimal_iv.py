"""Approximate optimal instruments vs PyBLP on the Nevo cereal data, at the same θ."""

import numpy as np
import pandas as pd
import pyblp
import pytest

import blpjax
from blpjax.internal import results_at

pyblp.options.verbose = False

SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
PI = np.array([[5.4819, 0, 0.2037, 0], [15.8935, -1.2000, 0, 2.6342], [-0.2506, 0, 0.0511, 0], [1.2650, 0, -0.8091, 0]])
DEMOGRAPHICS = ("income", "income_squared", "age", "child")


def _pyblp_at(problem):
    return problem.solve(SIGMA, PI, optimization=pyblp.Optimization("return"), method="1s", check_optimality="gradient")


@pytest.fixture(scope="module")
def nevo():
    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.NEVO_AGENTS_LOCATION)
    pb_problem = pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation("1 + prices + sugar + mushy")),
        products,
        pyblp.Formulation("0 + " + " + ".join(DEMOGRAPHICS)),
        agents,
    )
    pb_results = _pyblp_at(pb_problem)
    pb_optimal = pb_results.compute_optimal_instruments()  # default: reduced-form expected prices
    problem = blpjax.Problem(
        products,
        linear=("prices",),
        nonlinear=("1", "prices", "sugar", "mushy"),
        absorb=("product_ids",),
        agent_data=agents,
        demographics=DEMOGRAPHICS,
    )
    results = results_at(problem, SIGMA, PI)
    return pb_results, pb_optimal, results


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def test_optimal_instruments_match_pyblp(nevo):
    pb_results, pb_optimal, results = nevo
    assert abs(results.objective - float(pb_results.objective)) <= 1e-8 * float(pb_results.objective)

    # default expected prices: reduced-form fitted values on the absorbed instruments
    default = results.compute_optimal_instruments()
    assert _rel(default.expected_prices, pb_optimal.expected_prices[:, 0]) < 1e-10

    # the same expected prices in both libraries
    optimal = results.compute_optimal_instruments(expected_prices=pb_optimal.expected_prices)
    assert optimal.demand_instruments.shape == pb_optimal.demand_instruments.shape == (results.problem.N, 13)
    assert _rel(optimal.expected_shares, pb_optimal.expected_shares[:, 0]) < 1e-10
    assert abs(optimal.inverse_covariance / pb_optimal.inverse_covariance_matrix[0, 0] - 1) < 1e-8
    assert _rel(optimal.xi_jacobian, pb_optimal.expected_xi_by_theta_jacobian) < 1e-8
    for k in range(13):  # column by column, relative to each column's scale
        assert _rel(optimal.demand_instruments[:, k], pb_optimal.demand_instruments[:, k]) < 1e-8, k

    excluded = optimal.excluded_instruments
    assert list(excluded.columns) == [f"demand_instruments{k}" for k in range(14)]
    np.testing.assert_allclose(excluded["demand_instruments13"], pb_optimal.expected_prices[:, 0], rtol=1e-12)


def test_reestimate_with_optimal_instruments(nevo):
    pb_results, pb_optimal, results = nevo
    optimal = results.compute_optimal_instruments(expected_prices=pb_optimal.expected_prices)
    problem = optimal.to_problem()
    assert problem.setup.Z.shape[-1] == 14  # 13 for θ + prices at E[p | Z]; X1 has no exogenous column

    # the new problem is PyBLP's OptimalInstrumentProblem: same objective at the same θ
    pb_new = _pyblp_at(pb_optimal.to_problem())
    at_theta = results_at(problem, SIGMA, PI)
    assert abs(at_theta.objective / float(pb_new.objective) - 1) < 1e-7

    # and it re-estimates: just identified, so the objective goes to ~0
    new = problem.solve(SIGMA, PI, method="1s", optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-6))
    assert new.converged
    assert new.objective < 1e-6 * at_theta.objective
    assert np.all(np.isfinite(new.parameters["estimate"]))


def test_nested_logit_with_exogenous_characteristics():
    """ρ only (no random coefficients), exogenous X1 columns kept as their own instruments, as PyBLP."""
    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    products["nesting_ids"] = products["mushy"].astype(int)
    pb_results = pyblp.Problem((pyblp.Formulation("1 + prices + sugar"),), products).solve(
        rho=0.5, optimization=pyblp.Optimization("return"), method="1s"
    )
    pb_optimal = pb_results.compute_optimal_instruments()
    problem = blpjax.Problem(products, linear=("1", "prices", "sugar"))
    results = results_at(problem, rho=0.5)
    assert _rel(results.compute_optimal_instruments().expected_prices, pb_optimal.expected_prices[:, 0]) < 1e-10
    optimal = results.compute_optimal_instruments(expected_prices=pb_optimal.expected_prices)
    assert optimal.labels == ("rho",)
    assert _rel(optimal.demand_instruments, pb_optimal.demand_instruments) < 1e-8

    new = optimal.to_problem()
    pb_new = pb_optimal.to_problem().solve(rho=0.5, optimization=pyblp.Optimization("return"), method="1s")
    assert new.setup.Z.shape[-1] == pb_new.problem.products.ZD.shape[1] == 4  # 1, sugar, Z_opt[rho], E[p | Z]
    assert abs(results_at(new, rho=0.5).objective / float(pb_new.objective) - 1) < 1e-8

    # plain logit: no θ, the only optimal excluded instrument is prices at E[p | Z]
    plain = blpjax.Problem(products.drop(columns="nesting_ids"), linear=("1", "prices", "sugar"))
    logit = results_at(plain).compute_optimal_instruments()
    assert logit.demand_instruments.shape == (plain.N, 0)
    assert list(logit.excluded_instruments.columns) == ["demand_instruments0"]
