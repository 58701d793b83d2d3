"""Linear parameters fixed or optimised with θ instead of concentrated out (PyBLP's ``beta``/``gamma`` with bounds),
against PyBLP run here on the same data and parameters: the objective, its gradient, every estimate and SE,
elasticities, costs and markups; and a coefficient on prices in X1 under a supply side, which only this allows."""

import numpy as np
import pytest
from nevo import nevo_data

import blpjax

RTOL, ATOL = 1e-8, 1e-12


def _close(ours, theirs, what, rtol=RTOL, atol=ATOL):
    ours, theirs = np.asarray(ours, float).ravel(), np.asarray(theirs, float).ravel()
    ok = np.isfinite(theirs)  # PyBLP's NaN: SEs of entries that are not parameters (zeros of Σ)
    np.testing.assert_allclose(ours[ok], theirs[ok], rtol=rtol, atol=atol, err_msg=what)


def _both(linear, nonlinear, costs=None, demographics="0 + income"):
    pyblp, products, agents = nevo_data(12)
    for k in range(3):
        products[f"supply_instruments{k}"] = products[f"demand_instruments{k}"]
    formulations = [pyblp.Formulation(linear), pyblp.Formulation(nonlinear)]
    if costs:
        formulations.append(pyblp.Formulation(costs))
    theirs = pyblp.Problem(tuple(formulations), products, pyblp.Formulation(demographics), agents)
    ours = blpjax.Problem(
        products, linear=linear, nonlinear=nonlinear, costs=costs or (), agent_data=agents, demographics=demographics
    )
    return pyblp, theirs, ours


def test_fixed_beta_matches_pyblp():
    """β entries fixed by equal bounds, and one fixed at zero: not concentrated out, not estimated (SE 0 here)."""
    pyblp, theirs, ours = _both("1 + prices + sugar + mushy", "1 + prices")
    sigma, pi = np.diag([0.3, 1.5]), np.array([[0.5], [2.0]])
    beta = [np.nan, np.nan, 0.02, 0.0]
    bounds = ([-np.inf, -np.inf, 0.02, -np.inf], [np.inf, np.inf, 0.02, np.inf])
    fixed = theirs.solve(
        sigma, pi, beta=beta, beta_bounds=bounds, method="1s", optimization=pyblp.Optimization("return")
    )
    results = ours.solve(
        sigma, pi, beta=beta, beta_bounds=bounds, method="1s", optimizer=blpjax.ScipyOptimizer("return")
    )
    assert results.labels[:3] == ["sigma[1, 1]", "sigma[prices, prices]", "pi[1, income]"]
    _close(results.objective, fixed.objective, "objective")
    _close(results.gradient, fixed.gradient, "gradient")
    _close(results.beta, fixed.beta, "beta")
    assert results.beta["sugar"] == 0.02 and results.beta["mushy"] == 0.0
    se = results.beta_se.to_numpy()
    _close(se[:2], np.asarray(fixed.beta_se).ravel()[:2], "beta SE")
    assert np.all(se[2:] == 0)
    _close(results.sigma_se, fixed.sigma_se, "sigma SE")
    _close(results.pi_se, fixed.pi_se, "pi SE")
    _close(results.xi, fixed.xi, "xi")
    _close(results.compute_elasticities(layout="stacked"), fixed.compute_elasticities(), "elasticities", atol=1e-10)


def test_price_coefficient_in_x1_with_a_supply_side_matches_pyblp():
    """The mean price coefficient in X1 under a supply side, optimised with θ (PyBLP's beta=): objective, gradient,
    β, γ and every SE, costs and markups at the start, then the one-step estimate from the same start."""
    pyblp, theirs, ours = _both("1 + prices + sugar", "0 + prices", costs="1 + sugar")
    sigma, pi = np.array([[1.0]]), np.array([[1.0]])
    beta, bounds = [np.nan, -20.0, np.nan], ([np.nan, -100.0, np.nan], [np.nan, -1.0, np.nan])
    fixed = theirs.solve(
        sigma, pi, beta=beta, beta_bounds=bounds, method="1s", optimization=pyblp.Optimization("return")
    )
    results = ours.solve(
        sigma, pi, beta=beta, beta_bounds=bounds, method="1s", optimizer=blpjax.ScipyOptimizer("return")
    )
    _close(results.objective, fixed.objective, "objective")
    _close(results.gradient, fixed.gradient, "gradient (σ, π, β_prices)")
    _close(results.beta, fixed.beta, "beta")
    _close(results.gamma, fixed.gamma, "gamma")
    _close(results.beta_se, fixed.beta_se, "beta SE")
    _close(results.gamma_se, fixed.gamma_se, "gamma SE")
    _close(results.sigma_se, fixed.sigma_se, "sigma SE")
    _close(results.compute_costs(), fixed.compute_costs(), "costs")
    _close(results.markups, np.asarray(fixed.problem.products.prices).ravel() - fixed.compute_costs().ravel(), "η")
    # the estimate from the same start (L-BFGS-B within the bounds, both); σ fixed at zero (not identified here)
    sigma = np.zeros((1, 1))
    theirs_hat = theirs.solve(
        sigma,
        pi,
        beta=beta,
        beta_bounds=bounds,
        method="1s",
        optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-10}),
    )
    ours_hat = ours.solve(sigma, pi, beta=beta, beta_bounds=bounds, method="1s")
    _close(ours_hat.pi, theirs_hat.pi, "estimated pi", rtol=1e-5)
    _close(ours_hat.beta_se, theirs_hat.beta_se, "beta SE at the estimate", rtol=1e-4)
    _close(ours_hat.objective, theirs_hat.objective, "objective at the estimate", rtol=1e-6)
    _close(ours_hat.beta, theirs_hat.beta, "estimated beta", rtol=1e-5)
    _close(ours_hat.gamma, theirs_hat.gamma, "estimated gamma", rtol=1e-5)


def test_linear_parameter_errors_teach():
    pyblp, theirs, ours = _both("1 + prices + sugar", "0 + prices", costs="1 + sugar")
    sigma, pi = np.array([[1.0]]), np.array([[1.0]])
    with pytest.raises(blpjax.BLPSpecificationError, match=r"one value per X1 column \(3\)"):
        ours.solve(sigma, pi, beta=[np.nan, -20.0])
    with pytest.raises(blpjax.BLPSpecificationError, match="concentrated out"):
        ours.solve(sigma, pi, beta=[np.nan, -20.0, np.nan], beta_bounds=([0.0, -30, np.nan], [1.0, -1, np.nan]))
    with pytest.raises(blpjax.BLPSpecificationError, match="outside beta_bounds"):
        ours.solve(sigma, pi, beta=[np.nan, -20.0, np.nan], beta_bounds=([np.nan, -10, np.nan], [np.nan, -1, np.nan]))


def test_epsilon_scale_matches_pyblp():
    """PyBLP's epsilon_scale (λ: probabilities of (δ + μ)/λ) with a supply side, at the same parameters: objective,
    gradient, β, γ, SEs, δ, elasticities and costs; consumer surplus obeys Roy's identity (∂CS/∂p_j = α-weighted
    −s_j: here PyBLP's log-sum omits λ, so the check is against finite differences of our own closed form)."""
    pyblp, products, agents = nevo_data(12)
    for k in range(3):
        products[f"supply_instruments{k}"] = products[f"demand_instruments{k}"]
    agents["one"] = 1.0
    linear, nonlinear, costs = "1 + sugar + mushy", "1 + prices", "1 + sugar"
    theirs = pyblp.Problem(
        tuple(pyblp.Formulation(f) for f in (linear, nonlinear, costs)),
        products,
        pyblp.Formulation("0 + one + income"),
        agents,
        epsilon_scale=0.8,
    )
    ours = blpjax.Problem(
        products,
        linear=linear,
        nonlinear=nonlinear,
        costs=costs,
        agent_data=agents,
        demographics="0 + one + income",
        epsilon_scale=0.8,
    )
    sigma, pi = np.diag([0.3, 1.0]), np.array([[0.0, 0.5], [-30.0, 1.0]])
    fixed = theirs.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    results = ours.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    _close(results.objective, fixed.objective, "objective")
    _close(results.gradient, fixed.gradient, "gradient")
    _close(results.delta, fixed.delta, "delta")
    _close(results.beta, fixed.beta, "beta")
    _close(results.gamma, fixed.gamma, "gamma")
    _close(results.beta_se, fixed.beta_se, "beta SE")
    _close(results.pi_se, fixed.pi_se, "pi SE")
    _close(results.compute_elasticities(layout="stacked"), fixed.compute_elasticities(), "elasticities", atol=1e-10)
    _close(results.compute_costs(), fixed.compute_costs(), "costs")
    unscaled = blpjax.Problem(
        products, linear=linear, nonlinear=nonlinear, costs=costs, agent_data=agents, demographics="0 + one + income"
    ).solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    assert abs(unscaled.objective - results.objective) > 1e-3 * results.objective  # λ changes the model
    # Roy's identity on one market: ∂CS/∂p_j = −s_j (per capita; CS in money)
    prices = products.prices.to_numpy().copy()
    first = products.market_ids == products.market_ids.iloc[0]
    j = np.flatnonzero(first)[2]
    h = 1e-6

    def cs(shift):
        p = prices.copy()
        p[j] += shift
        return float(results.compute_consumer_surpluses(p).iloc[0])

    shares = np.asarray(results.compute_shares())
    np.testing.assert_allclose((cs(h) - cs(-h)) / (2 * h), -shares[j], rtol=1e-6)
    # a smaller scale: the contraction's step is λ(log S − log s), so it still converges (PyBLP's unscaled step stops
    # at its iteration limit here) and the model reproduces the observed shares
    half = blpjax.Problem(
        products,
        linear=linear,
        nonlinear=nonlinear,
        agent_data=agents,
        demographics="0 + one + income",
        epsilon_scale=0.5,
    ).solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    np.testing.assert_allclose(np.asarray(half.compute_shares()), products.shares.to_numpy(), rtol=1e-10)
    newton = half.problem.solve(
        sigma,
        pi,
        method="1s",
        optimizer=blpjax.ScipyOptimizer("return"),
        contraction=blpjax.ContractionConfig("newton"),
    )
    np.testing.assert_allclose(newton.delta, half.delta, rtol=0, atol=1e-12)  # the Newton step scales with λ too
    _close(newton.gradient, half.gradient, "gradient with Newton's inversion")
