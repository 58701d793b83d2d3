"""Formulas: PyBLP's column names, order and values for the same formula; price terms (prices², prices × a
characteristic, log prices) endogenous and differentiated by autodiff, checked against PyBLP at the same
parameters in estimation (objective, β, standard errors) and after it (elasticities, costs, merger prices,
shares); the warning for a pre-built exact function of prices; bad formulas."""

import warnings

import numpy as np
import pytest
from nevo import nevo_data

import blpjax

RTOL, ATOL = 1e-8, 1e-12

FORMULAS = [
    "1 + prices + I(prices**2) + log(sugar + 1) + C(brand) + prices:mushy + sugar*mushy",
    "prices + C(brand) + mushy",
    "0 + C(brand) + prices",
    "1 + prices + C(brand):prices",
    "sugar:mushy:prices + mushy + exp(sugar/10) + I(1/prices) + log(prices)",
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PyBLP's collinearity notes on these designs
@pytest.mark.parametrize("formula", FORMULAS)
def test_columns_names_and_order_match_pyblp(formula):
    pyblp, products, _ = nevo_data(8)
    products["brand"] = products.product_ids.str[:2]
    ours = blpjax.Problem(products, linear=formula)
    theirs = pyblp.Problem((pyblp.Formulation(formula),), products)
    assert ours.linear == tuple(str(f) for f in theirs._X1_formulations)
    X1 = ours.index.flat(np.asarray(ours.products.X1))
    np.testing.assert_allclose(X1, theirs.products.X1, rtol=1e-13, atol=1e-13)
    # every column that involves prices is endogenous, never its own instrument
    moving = [n for n in ours.linear if "prices" in n]
    assert set(moving) <= set(ours.endogenous)
    assert not set(moving) & set(ours.index.z_names)


def _problems(pyblp, products, agents, linear, nonlinear):
    theirs = pyblp.Problem(
        (pyblp.Formulation(linear, absorb="C(product_ids)"), pyblp.Formulation(nonlinear)),
        products,
        pyblp.Formulation("0 + income"),
        agents,
    )
    ours = blpjax.Problem(
        products,
        linear=linear,
        nonlinear=nonlinear,
        absorb="C(product_ids)",
        agent_data=agents,
        demographics="0 + income",
    )
    return theirs, ours


def _close(ours, theirs, what, rtol=RTOL, atol=ATOL):
    ours, theirs = np.asarray(ours, float).ravel(), np.asarray(theirs, float).ravel()
    ok = np.isfinite(theirs)
    np.testing.assert_allclose(ours[ok], theirs[ok], rtol=rtol, atol=atol, err_msg=what)


@pytest.fixture(scope="module")
def price_terms():
    """Nevo (12 markets) with prices × sugar in X1 and prices², log prices in X2, at fixed parameters."""
    pyblp, products, agents = nevo_data(12)
    linear, nonlinear = "0 + prices + prices:sugar", "1 + prices + I(prices**2) + log(prices)"
    theirs, ours = _problems(pyblp, products, agents, linear, nonlinear)
    sigma = np.diag([0.3, 1.5, 3.0, 0.05])
    pi = np.array([[0.5], [-2.0], [0.0], [0.0]])
    fixed = theirs.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    results = ours.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    return pyblp, products, fixed, results, ours


def test_price_terms_estimation_matches_pyblp(price_terms):
    pyblp, products, theirs, results, problem = price_terms
    assert problem.linear == ("prices", "prices*sugar") and problem.endogenous[:2] == ("prices", "prices*sugar")
    assert problem.nonlinear == ("1", "prices", "prices**2", "log(prices)")
    _close(results.objective, theirs.objective, "objective")
    _close(results.beta, theirs.beta, "beta")
    _close(results.beta_se, theirs.beta_se, "beta SE", rtol=1e-6)


def test_price_terms_after_estimation_match_pyblp(price_terms):
    pyblp, products, theirs, results, _ = price_terms
    _close(results.compute_elasticities(layout="stacked"), theirs.compute_elasticities(), "elasticities", atol=1e-10)
    _close(results.compute_costs(), theirs.compute_costs(), "costs")
    _close(results.compute_markups(), theirs.compute_markups(), "Lerner markups", atol=1e-8)
    # (p − c)/p cancels where c ≈ p: costs agree to 1e-8 relative, so the index to ≈ 1e-8 absolute
    merged = products.firm_ids.replace(2, 1)
    iteration = pyblp.Iteration("simple", {"atol": 1e-14})
    p_theirs = theirs.compute_prices(firm_ids=merged.to_numpy()[:, None], iteration=iteration)
    p_ours = results.compute_prices(firm_ids=merged, iteration=blpjax.ContractionConfig(method="simple", tol=1e-14))
    assert np.abs(p_ours.to_numpy() - products.prices.to_numpy()).max() > 1e-3
    _close(p_ours, p_theirs, "merger prices (prices², prices × mushy and log prices re-evaluated)")
    _close(results.compute_shares(p_ours), theirs.compute_shares(p_theirs), "post-merger shares")
    # prices do not enter utility linearly: the log-sum is not consumer surplus
    with pytest.raises(blpjax.BLPSpecificationError, match="marginal utility"):
        results.compute_consumer_surpluses()


def test_a_prebuilt_function_of_prices_warns_and_the_formula_does_not():
    pyblp, products, _ = nevo_data(8)
    products["prices_squared"] = products.prices**2
    products["prices_sugar"] = products.prices * products.sugar
    for column in ("prices_squared", "prices_sugar"):
        with pytest.warns(blpjax.BLPDataWarning, match=f"'{column}' is exactly"):
            blpjax.Problem(products, linear=("1", "prices", column))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        problem = blpjax.Problem(products, linear="1 + prices + I(prices**2) + prices:sugar")
    assert problem.endogenous == ("prices", "prices**2", "prices*sugar")


def test_bad_formulas_are_refused_naming_the_problem():
    pyblp, products, agents = nevo_data(4)
    cases = [
        ("1 + prices + sqrt(sugar)", blpjax.BLPSpecificationError, "sqrt"),
        ("1 + prices + missing_column", blpjax.BLPDataError, "missing_column"),
        ("1 + prices + log(mushy)", blpjax.BLPDataError, "not finite"),
        ("1 + prices + C(sugar, Sum)", blpjax.BLPSpecificationError, "only C"),
        ("shares ~ prices", blpjax.BLPSpecificationError, "left-hand side"),
    ]
    for formula, error, text in cases:
        with pytest.raises(error, match=text):
            blpjax.Problem(products, linear=formula)
    with pytest.raises(blpjax.BLPSpecificationError, match="autodiff"):
        blpjax.Problem(products, linear="1 + prices + I(-prices*sugar)", price_derivatives={"x": 1})


def test_costs_that_depend_on_shares_match_pyblp():
    """X3 with log(shares): endogenous on the supply side (not an instrument), and re-evaluated at the new shares by
    compute_prices(constant_costs=False), against PyBLP at the same parameters."""
    pyblp, products, agents = nevo_data(12)
    agents["one"] = 1.0
    for k in range(3):
        products[f"supply_instruments{k}"] = products[f"demand_instruments{k}"]
    costs = "1 + sugar + log(shares)"
    theirs = pyblp.Problem(
        (pyblp.Formulation("1 + sugar + mushy"), pyblp.Formulation("0 + prices"), pyblp.Formulation(costs)),
        products,
        pyblp.Formulation("0 + one + income"),
        agents,
    )
    ours = blpjax.Problem(
        products,
        linear="1 + sugar + mushy",
        nonlinear="0 + prices",
        costs=costs,
        agent_data=agents,
        demographics="0 + one + income",
    )
    assert ours.zs_names == ("1", "sugar", "supply_instruments0", "supply_instruments1", "supply_instruments2")
    sigma, pi = np.array([[1.0]]), np.array([[-10.0, 1.0]])
    fixed = theirs.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    results = ours.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    _close(results.objective, fixed.objective, "objective")
    _close(results.gamma, fixed.gamma, "gamma")
    merged = products.firm_ids.replace(2, 1)
    iteration = pyblp.Iteration("simple", {"atol": 1e-14})
    tight = blpjax.ContractionConfig(method="simple", tol=1e-14)
    moved = {}
    for constant in (True, False):
        p_theirs = fixed.compute_prices(
            firm_ids=merged.to_numpy()[:, None], iteration=iteration, constant_costs=constant
        )
        p_ours = results.compute_prices(firm_ids=merged, iteration=tight, constant_costs=constant)
        _close(p_ours, p_theirs, f"merger prices, constant_costs={constant}")
        moved[constant] = p_ours.to_numpy()
    assert np.abs(moved[True] - moved[False]).max() > 1e-4  # costs moving with shares change the equilibrium


def test_log_normal_price_coefficient_matches_pyblp():
    """rc_types 'log' on I(-prices), its mean a Π entry on a column of ones (PyBLP's way): objective, gradient,
    β and SEs, elasticities, costs and merger prices at the same parameters."""
    pyblp, products, agents = nevo_data(12)
    agents["one"] = 1.0
    linear, nonlinear, rc_types = "1 + sugar + mushy", "1 + I(-prices)", ("linear", "log")
    theirs = pyblp.Problem(
        (pyblp.Formulation(linear), pyblp.Formulation(nonlinear)),
        products,
        pyblp.Formulation("0 + one + income"),
        agents,
        rc_types=list(rc_types),
    )
    ours = blpjax.Problem(
        products,
        linear=linear,
        nonlinear=nonlinear,
        agent_data=agents,
        demographics="0 + one + income",
        rc_types=rc_types,
    )
    assert ours.nonlinear == ("1", "-prices") and "-prices" not in ours.index.z_names
    sigma = np.diag([0.3, 0.4])
    pi = np.array([[0.0, 0.5], [2.5, 0.1]])  # mean log price sensitivity 2.5: E[α] ≈ −exp(2.5)
    fixed = theirs.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    results = ours.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    _close(results.objective, fixed.objective, "objective")
    _close(results.gradient, fixed.gradient, "gradient", rtol=1e-6, atol=1e-8)
    _close(results.beta, fixed.beta, "beta")
    _close(results.beta_se, fixed.beta_se, "beta SE", rtol=1e-6)
    _close(results.compute_elasticities(layout="stacked"), fixed.compute_elasticities(), "elasticities", atol=1e-10)
    _close(results.compute_costs(), fixed.compute_costs(), "costs")
    merged = products.firm_ids.replace(2, 1)
    p_theirs = fixed.compute_prices(
        firm_ids=merged.to_numpy()[:, None], iteration=pyblp.Iteration("simple", {"atol": 1e-14})
    )
    p_ours = results.compute_prices(firm_ids=merged, iteration=blpjax.ContractionConfig(method="simple", tol=1e-14))
    _close(p_ours, p_theirs, "merger prices")
    cs = results.compute_consumer_surpluses()  # one price coefficient per agent: the log-sum formula holds
    np.testing.assert_allclose(
        cs.reindex(fixed.problem.unique_market_ids.ravel()).to_numpy(),
        fixed.compute_consumer_surpluses().ravel(),
        rtol=RTOL,
    )


def test_absorbed_formulas_interacted_fixed_effects_match_pyblp():
    """absorb='C(product_ids) + C(market_ids):C(firm_ids)': the intercept dropped, product and market × firm
    fixed effects absorbed, β as PyBLP's (plain logit, 2SLS)."""
    pyblp, products, _ = nevo_data(30)
    products["quarter"] = products.market_ids.str[-2:]
    absorb = "C(product_ids) + C(quarter):C(firm_ids)"
    theirs = pyblp.Problem((pyblp.Formulation("prices + sugar:prices", absorb=absorb),), products).solve(method="1s")
    ours = blpjax.Problem(products, linear="prices + sugar:prices", absorb=absorb)
    assert ours.linear == ("prices", "prices*sugar") and ours.absorb == ("product_ids", "quarter:firm_ids")
    results = ours.solve(method="1s")
    _close(results.beta, theirs.beta, "beta")
    _close(results.beta_se, theirs.beta_se, "beta SE", rtol=1e-6)


def test_supply_fixed_effects_match_pyblp():
    """Fixed effects absorbed from the cost equation (PyBLP's absorb in the X3 formulation; the intercept drops out):
    objective, β, γ and their SEs, ω and costs at the same parameters, linear and log costs; the column form equals
    the formula form."""
    pyblp, products, agents = nevo_data(12)
    agents["one"] = 1.0
    for k in range(3):
        products[f"supply_instruments{k}"] = products[f"demand_instruments{k}"]
    sigma, pi = np.array([[1.0]]), np.array([[-30.0, 1.0]])  # markups below prices: log costs defined
    for costs_type in ("linear", "log"):
        theirs = pyblp.Problem(
            (
                pyblp.Formulation("1 + sugar + mushy"),
                pyblp.Formulation("0 + prices"),
                pyblp.Formulation("0 + sugar", absorb="C(firm_ids) + C(market_ids)"),
            ),
            products,
            pyblp.Formulation("0 + one + income"),
            agents,
            costs_type=costs_type,
        )
        fixed = theirs.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
        for costs, costs_absorb in (
            ("1 + sugar", "C(firm_ids) + C(market_ids)"),
            (("sugar",), ("firm_ids", "market_ids")),
        ):
            ours = blpjax.Problem(
                products,
                linear="1 + sugar + mushy",
                nonlinear="0 + prices",
                costs=costs,
                costs_absorb=costs_absorb,
                costs_type=costs_type,
                agent_data=agents,
                demographics="0 + one + income",
            )
            results = ours.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
            _close(results.objective, fixed.objective, f"objective ({costs_type})")
            _close(results.beta, fixed.beta, "beta")
            _close(results.gamma, fixed.gamma, f"gamma ({costs_type})")
            _close(results.gamma_se, fixed.gamma_se, "gamma SE")
            _close(results.beta_se, fixed.beta_se, "beta SE")
            _close(results.omega, fixed.omega, f"omega ({costs_type})")
            _close(results.compute_costs(), fixed.compute_costs(), "costs")
    with pytest.raises(blpjax.BLPSpecificationError, match="constant '1' in X3 is absorbed"):
        blpjax.Problem(
            products,
            "1 + sugar",
            "0 + prices",
            costs=("1", "sugar"),
            costs_absorb=("firm_ids",),
            agent_data=agents,
            demographics="0 + one + income",
        )
