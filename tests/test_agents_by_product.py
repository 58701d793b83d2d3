"""Product-specific demographics (a distance to every product) and agent-specific availability, against PyBLP run
in the test at the same parameters: objective, gradient, β and SEs, elasticities, costs and merger prices; and on
the layouts (buckets and market chunks equal padded)."""

import numpy as np
import pytest
from nevo import nevo_data

import blpjax

RTOL = 1e-8


def _close(ours, theirs, what, rtol=RTOL, atol=1e-12):
    ours, theirs = np.asarray(ours, float).ravel(), np.asarray(theirs, float).ravel()
    ok = np.isfinite(theirs)
    np.testing.assert_allclose(ours[ok], theirs[ok], rtol=rtol, atol=atol, err_msg=what)


def _data(markets: int = 10):
    pyblp, products, agents = nevo_data(markets)
    J = int(products.groupby("market_ids").size().max())
    rng = np.random.default_rng(0)
    counts = products.groupby("market_ids", sort=False).size()
    J_t = agents.market_ids.map(counts).to_numpy()
    for j in range(J):
        agents[f"distance{j}"] = np.where(j < J_t, rng.uniform(0, 2, len(agents)), np.nan)  # NaN beyond a market
        agents[f"availability{j}"] = (rng.uniform(size=len(agents)) > 0.2).astype(float)
    return pyblp, products, agents


def _problem(products, agents, demographics=("income", "distance"), **layout):
    return blpjax.Problem(
        products,
        linear=("prices",),
        nonlinear=("1", "prices"),
        absorb=("product_ids",),
        agent_data=agents,
        demographics=demographics,
        **layout,
    )


@pytest.fixture(scope="module")
def fixed():
    pyblp, products, agents = _data()
    sigma, pi = np.diag([0.5, 1.0]), np.array([[0.5, -1.0], [1.0, 0.3]])
    theirs = pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation("1 + prices")),
        products,
        pyblp.Formulation("0 + income + distance"),
        agents.fillna(0.0),
    ).solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    ours = _problem(products, agents).solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    return pyblp, products, theirs, ours, (sigma, pi)


def test_estimation_pieces_match_pyblp(fixed):
    pyblp, products, theirs, ours, _ = fixed
    assert ours.problem.agents.product_demographics is not None and ours.problem.agents.availability is not None
    _close(ours.objective, theirs.objective, "objective")
    _close(ours.gradient, theirs.gradient, "gradient", rtol=1e-6, atol=1e-8)
    _close(ours.beta, theirs.beta, "beta")
    _close(ours.beta_se, theirs.beta_se, "beta SE", rtol=1e-6)
    _close(ours.parameters["se"].to_numpy()[:-1], np.r_[np.diag(theirs.sigma_se), theirs.pi_se.ravel()], "θ SEs", 1e-6)


def test_after_estimation_matches_pyblp(fixed):
    pyblp, products, theirs, ours, _ = fixed
    _close(ours.compute_elasticities(layout="stacked"), theirs.compute_elasticities(), "elasticities", atol=1e-10)
    _close(ours.compute_costs(), theirs.compute_costs(), "costs")
    merged = products.firm_ids.replace(2, 1)
    p_theirs = theirs.compute_prices(
        firm_ids=merged.to_numpy()[:, None], iteration=pyblp.Iteration("simple", {"atol": 1e-14})
    )
    p_ours = ours.compute_prices(firm_ids=merged, iteration=blpjax.ContractionConfig(method="simple", tol=1e-14))
    _close(p_ours, p_theirs, "merger prices")


def test_layouts_equal_padded(fixed):
    """Buckets and market chunks equal padded; the demographics stated as a formula too."""
    pyblp, products, theirs, ours, (sigma, pi) = fixed
    _, _, agents = _data()
    problem = _problem(products, agents, buckets=2, market_batch_size=3, demographics="0 + income + distance")
    assert problem.demographics == ("income", "distance")
    other = problem.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    _close(other.objective, ours.objective, "objective on buckets and chunks", rtol=1e-10)
    _close(other.gradient, ours.gradient, "gradient on buckets and chunks", rtol=1e-8, atol=1e-10)


def test_bad_agent_columns_are_refused():
    pyblp, products, agents = _data(4)
    with pytest.raises(blpjax.BLPDataError, match="distance"):
        blpjax.Problem(
            products,
            ("prices",),
            ("1", "prices"),
            agent_data=agents.drop(columns="distance3"),
            demographics=("income", "distance"),
        )
    bad = agents.assign(availability0=0.0)
    with pytest.raises(blpjax.BLPDataError, match="available to no agent"):
        blpjax.Problem(products, ("prices",), ("1", "prices"), agent_data=bad, demographics=("income",))
    with pytest.raises(blpjax.BLPSpecificationError, match="only as itself"):
        _problem(products, agents, demographics="0 + income + I(distance**2)")
    with pytest.raises(blpjax.BLPDataError, match="1 .available. or 0"):
        blpjax.Problem(
            products,
            ("prices",),
            ("1", "prices"),
            agent_data=agents.assign(availability1=0.5),
            demographics=("income",),
        )
