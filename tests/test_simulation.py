"""Simulation (PyBLP's names): Bertrand–Nash prices and shares at known parameters (replace_endogenous) and the
exogenous characteristics that rationalise given prices and shares (replace_exogenous), against PyBLP run in the test
on the same data, agents, ξ and ω; and the simulated data back through a Problem."""

import numpy as np
import pandas as pd
import pytest

import blpjax

BETA, GAMMA = [1.0, -2.0, 1.0], [1.0, 0.5]
SIGMA, PI = np.diag([0.5, 0.3]), [[0.2], [0.4]]


def _data(nested: bool = False):
    rng = np.random.default_rng(0)
    rows = []
    for t in range(12):
        for j in range(int(rng.integers(3, 7))):
            rows.append(dict(market_ids=t, firm_ids=j % 3, product_ids=f"p{j}", x=rng.uniform(), z=rng.uniform()))
    products = pd.DataFrame(rows)
    if nested:
        products["nesting_ids"] = np.where(products["x"] > 0.5, "high", "low")
    I = 50
    agents = pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(12), I),
            "weights": 1.0 / I,
            "nodes0": rng.normal(size=12 * I),
            "nodes1": rng.normal(size=12 * I),
            "income": rng.normal(size=12 * I),
        }
    )
    N = len(products)
    return products, agents, rng.normal(0, 0.3, N), rng.normal(0, 0.1, N)


def _pyblp_simulation(pyblp, products, agents, xi, omega, costs_type="linear", rho=None, x2="0 + prices + x", **kw):
    return pyblp.Simulation(
        (pyblp.Formulation("1 + prices + x"), pyblp.Formulation(x2), pyblp.Formulation("1 + z")),
        products,
        beta=BETA,
        sigma=kw.get("sigma", SIGMA),
        pi=kw.get("pi", PI),
        gamma=GAMMA,
        rho=rho,
        agent_formulation=pyblp.Formulation("0 + income"),
        agent_data=agents,
        xi=xi,
        omega=omega,
        costs_type=costs_type,
    )


def _simulation(products, agents, xi, omega, **options):
    """blpjax's Simulation of the tests' specification: X1 = (1, prices, x), X2 = (prices, x), X3 = (1, z)."""
    return blpjax.Simulation(
        products,
        ("1", "prices", "x"),
        ("prices", "x"),
        ("1", "z"),
        beta=BETA,
        sigma=SIGMA,
        pi=PI,
        gamma=GAMMA,
        agent_data=agents,
        demographics=("income",),
        xi=xi,
        omega=omega,
        **options,
    )


def _close(ours, theirs, what=""):
    theirs = np.asarray(theirs, np.float64).ravel()
    np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=1e-8, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("costs_type, nested", [("linear", False), ("log", False), ("linear", True)])
def test_replace_endogenous_matches_pyblp(costs_type, nested):
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    products, agents, xi, omega = _data(nested)
    rho = 0.4 if nested else None
    theirs = _pyblp_simulation(pyblp, products, agents, xi, omega, costs_type, rho).replace_endogenous(
        iteration=pyblp.Iteration("simple", {"atol": 1e-14})
    )
    sim = _simulation(products, agents, xi, omega, rho=rho, costs_type=costs_type)
    ours = sim.replace_endogenous(iteration=blpjax.ContractionConfig(method="simple", tol=1e-14))
    assert not ours.status.any()
    _close(ours.product_data["prices"], theirs.product_data.prices)
    _close(ours.product_data["shares"], theirs.product_data.shares)
    _close(ours.costs, theirs.costs)
    _close(ours.delta, theirs.delta)


def test_replace_exogenous_matches_pyblp_and_recovers_the_characteristics():
    """On equilibrium data: the x and z that rationalise the prices and shares are PyBLP's, and the ones the
    equilibrium was simulated with (a closed loop)."""
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    products, agents, xi, omega = _data()
    sigma, pi = np.diag([0.5]), [[0.4]]
    spec = dict(
        beta=BETA, sigma=sigma, pi=pi, gamma=GAMMA, agent_data=agents, demographics=("income",), xi=xi, omega=omega
    )
    simulated = blpjax.Simulation(products, ("1", "prices", "x"), ("prices",), ("1", "z"), **spec).replace_endogenous(
        iteration=blpjax.ContractionConfig(method="simple", tol=1e-14)
    )
    data = simulated.product_data.copy()
    truth = data[["x", "z"]].copy()
    data["x"], data["z"] = 0.0, 0.0  # forgotten: replace_exogenous finds them again
    theirs = _pyblp_simulation(pyblp, data, agents, xi, omega, x2="0 + prices", sigma=sigma, pi=pi).replace_exogenous(
        "x", "z", iteration=pyblp.Iteration("squarem", {"atol": 1e-14})
    )
    ours = blpjax.Simulation(data, ("1", "prices", "x"), ("prices",), ("1", "z"), **spec).replace_exogenous("x", "z")
    _close(ours.product_data["x"], theirs.product_data.x)
    _close(ours.product_data["z"], theirs.product_data.z)
    np.testing.assert_allclose(ours.product_data[["x", "z"]], truth, rtol=1e-8, atol=1e-10)


def test_simulated_data_through_a_problem_give_back_xi_and_costs():
    """to_problem: at the true θ the δ a Problem inverts from the simulated shares is X1β + ξ at the true β."""
    products, agents, xi, omega = _data()
    rng = np.random.default_rng(1)
    for k in range(5):
        products[f"demand_instruments{k}"] = rng.normal(size=len(products))
    sim = _simulation(products, agents, xi, omega)
    simulated = sim.replace_endogenous(iteration=blpjax.ContractionConfig(method="simple", tol=1e-14))
    problem = simulated.to_problem(costs=())  # demand only (blpjax's supply side needs prices in X2)
    results = problem.solve(SIGMA, PI, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    np.testing.assert_allclose(results.delta, simulated.delta, rtol=0, atol=1e-10)


def test_simulation_refuses_bad_inputs():
    products, agents, xi, omega = _data()
    base = dict(agent_data=agents, demographics=("income",), xi=xi, omega=omega, sigma=SIGMA, pi=PI)
    with pytest.raises(blpjax.BLPSpecificationError, match="beta must have one value per linear column"):
        blpjax.Simulation(products, ("1", "prices", "x"), ("prices", "x"), beta=[1.0, 2.0], **base)
    with pytest.raises(blpjax.BLPSpecificationError, match="firm_ids"):
        blpjax.Simulation(products.drop(columns="firm_ids"), ("1", "prices", "x"), ("prices", "x"), beta=BETA, **base)
    sim = blpjax.Simulation(products, ("1", "prices", "x"), ("prices", "x"), beta=BETA, **base)
    with pytest.raises(blpjax.BLPSpecificationError, match="needs costs"):
        sim.replace_endogenous()
    with pytest.raises(blpjax.BLPSpecificationError, match="needs 'prices'"):
        sim.replace_exogenous("x")
    data = products.assign(prices=1.0 + products["z"], shares=0.05)
    sim = blpjax.Simulation(data, ("1", "prices", "x"), ("prices", "x"), beta=BETA, **base)
    with pytest.raises(blpjax.BLPSpecificationError, match="no X2 column reads"):
        sim.replace_exogenous("x")


def test_formulas_and_costs_that_depend_on_shares_match_pyblp():
    """Formulas in the Simulation: prices² in X1 re-evaluated at the simulated prices, and log(shares) in X3
    re-evaluated at the simulated shares (constant_costs=False), against PyBLP's Simulation on the same data."""
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    products, agents, xi, omega = _data()
    products["shares"] = 0.05  # the shares at which costs are first evaluated (PyBLP needs them in the data)
    linear, nonlinear, costs = "1 + prices + I(prices**2) + x", "0 + prices + x", "1 + z + log(shares)"
    beta, gamma = [1.0, -2.0, -0.1, 1.0], [1.0, 0.5, 0.05]
    theirs = pyblp.Simulation(
        (pyblp.Formulation(linear), pyblp.Formulation(nonlinear), pyblp.Formulation(costs)),
        products,
        beta=beta,
        sigma=SIGMA,
        pi=PI,
        gamma=gamma,
        agent_formulation=pyblp.Formulation("0 + income"),
        agent_data=agents,
        xi=xi,
        omega=omega,
    )
    sim = blpjax.Simulation(
        products,
        linear,
        nonlinear,
        costs,
        beta=beta,
        gamma=gamma,
        sigma=SIGMA,
        pi=PI,
        agent_data=agents,
        demographics="0 + income",
        xi=xi,
        omega=omega,
    )
    assert sim.linear_names == ("1", "prices", "prices**2", "x") and sim.cost_names == ("1", "z", "log(shares)")
    tight = blpjax.ContractionConfig(method="simple", tol=1e-14)
    for constant in (True, False):
        expected = theirs.replace_endogenous(
            iteration=pyblp.Iteration("simple", {"atol": 1e-14}), constant_costs=constant
        )
        ours = sim.replace_endogenous(iteration=tight, constant_costs=constant)
        _close(ours.product_data["prices"], expected.product_data.prices, f"prices, constant_costs={constant}")
        _close(ours.product_data["shares"], expected.product_data.shares, f"shares, constant_costs={constant}")
        _close(ours.costs, expected.costs, f"costs, constant_costs={constant}")
        _close(ours.delta, expected.delta, f"delta, constant_costs={constant}")
