"""After estimation: costs, markups, profits, HHI, pass-through, equilibrium prices after a merger, shares and
consumer surplus against PyBLP run in the test at the same parameters (Nevo, BLP autos); closed forms; the
price fixed point's implicit derivative against finite differences and unrolled iterations; bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from nevo import NEVO_PI, NEVO_SIGMA, nevo_data, nevo_problems

import blpjax
from blpjax.internal import (
    PriceDemand,
    demand_derivatives,
    equilibrium_prices,
    equilibrium_prices_unrolled,
    first_order_conditions,
    shares_at,
)

RTOL, ATOL = 1e-8, 1e-12
TIGHT = blpjax.ContractionConfig(method="simple", tol=1e-14)
STEPS = 200  # unrolled ζ-markup steps (the Nevo market of the test converges in far fewer)


def _close(ours, theirs, what, rtol=RTOL, atol=ATOL):
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    ok = np.isfinite(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    assert np.array_equal(ok, np.isfinite(ours)), what
    np.testing.assert_allclose(ours[ok], theirs[ok], rtol=rtol, atol=atol, err_msg=what)


def _by_market(series, pyblp_values, market_ids):
    """PyBLP's per-market rows follow its sorted unique market ids; ours follow first appearance."""
    return series.reindex(market_ids).to_numpy(), np.asarray(pyblp_values, float).ravel()


def _nevo(markets=None):
    """Results at the tutorial's published estimates (no optimisation: β concentrated out, as PyBLP's 'return')."""
    pyblp, products, agents = nevo_data(markets)
    _, problem = nevo_problems(pyblp, products, agents)
    results = problem.solve(NEVO_SIGMA, NEVO_PI, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    return pyblp, products, agents, results


@pytest.fixture(scope="module")
def nevo():
    pyblp, products, agents = nevo_data()
    pp, bp = nevo_problems(pyblp, products, agents)
    results = bp.solve(NEVO_SIGMA, NEVO_PI, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    theirs = pp.solve(NEVO_SIGMA, NEVO_PI, method="1s", optimization=pyblp.Optimization("return"))
    return pyblp, products, results, theirs


def test_costs_markups_profits_hhi_passthrough_match_pyblp(nevo):
    pyblp, products, results, theirs = nevo
    np.testing.assert_allclose(results.beta.to_numpy(), np.asarray(theirs.beta).ravel(), rtol=1e-10)
    markets = theirs.problem.unique_market_ids.ravel()
    _close(results.compute_costs(), theirs.compute_costs().ravel(), "costs")
    _close(results.compute_markups(), theirs.compute_markups().ravel(), "Lerner markups (p − c)/p")
    _close(results.compute_eta(), products.prices - theirs.compute_costs().ravel(), "markups p − c")
    _close(results.compute_profits(), theirs.compute_profits().ravel(), "profits")
    _close(*_by_market(results.compute_hhi(), theirs.compute_hhi().ravel(), markets), "HHI")
    _close(results.compute_passthrough(layout="stacked"), theirs.compute_passthrough(), "pass-through")


def test_merger_prices_shares_surplus_match_pyblp(nevo):
    pyblp, products, results, theirs = nevo
    markets = theirs.problem.unique_market_ids.ravel()
    merged = products.firm_ids.replace(2, 1)  # firm 2 merges into firm 1
    iteration = pyblp.Iteration("simple", {"atol": 1e-14})
    p_theirs = theirs.compute_prices(firm_ids=merged.to_numpy()[:, None], iteration=iteration)
    p_ours = results.compute_prices(firm_ids=merged, iteration=TIGHT)
    _close(p_ours, p_theirs.ravel(), "merger prices")
    assert np.abs(p_ours.to_numpy() - products.prices.to_numpy()).max() > 1e-3  # the merger moves prices
    _close(
        results.compute_approximate_prices(firm_ids=merged),
        theirs.compute_approximate_prices(firm_ids=merged.to_numpy()[:, None]).ravel(),
        "approximate merger prices",
    )
    s_ours = results.compute_shares(p_ours)
    s_theirs = theirs.compute_shares(p_theirs).ravel()
    _close(s_ours, s_theirs, "post-merger shares")
    c_theirs = theirs.compute_costs()
    _close(
        results.compute_profits(p_ours, s_ours),
        theirs.compute_profits(p_theirs, s_theirs[:, None], c_theirs).ravel(),
        "post-merger profits",
    )
    _close(
        *_by_market(
            results.compute_hhi(merged, s_ours),
            theirs.compute_hhi(merged.to_numpy()[:, None], s_theirs[:, None]),
            markets,
        ),
        "post-merger HHI",
    )
    cs_change = results.compute_consumer_surpluses(p_ours) - results.compute_consumer_surpluses()
    theirs_change = theirs.compute_consumer_surpluses(p_theirs) - theirs.compute_consumer_surpluses()
    _close(*_by_market(cs_change, theirs_change.ravel(), markets), "consumer surplus change")
    agents = results.compute_consumer_surpluses(keep_all=True)
    _close(agents.reindex(markets).to_numpy(), theirs.compute_consumer_surpluses(keep_all=True), "per-agent surplus")
    gone = list(products.product_ids.iloc[[0, 3]])
    _close(
        *_by_market(
            results.compute_consumer_surpluses(eliminate_product_ids=gone),
            theirs.compute_consumer_surpluses(eliminate_product_ids=gone).ravel(),
            markets,
        ),
        "surplus without two products",
    )
    # unchanged ownership and costs: the data are the equilibrium, from any start
    again = results.compute_prices(prices=products.prices * 1.2, iteration=TIGHT)
    _close(again, products.prices, "prices of the data's own equilibrium", rtol=1e-10)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:duplicate rows")  # the autos data have twin rows, as PyBLP's tutorial notes
@pytest.mark.filterwarnings("ignore:agent_data weights sum", "ignore:Integration weights")  # importance sampling
def test_blp_autos_merger_matches_pyblp():
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    products = pd.read_csv(pyblp.data.BLP_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.BLP_AGENTS_LOCATION)
    sigma = np.diag([3.612, 0, 4.628, 1.818, 1.050, 2.056])
    pi = np.c_[[0, -43.501, 0, 0, 0, 0]]
    x1, x2 = ("1", "hpwt", "air", "mpd", "space"), ("1", "prices", "hpwt", "air", "mpd", "space")
    ours_agents = agents[["market_ids", "weights"]].copy()
    ours_agents["inv_income"] = 1 / agents["income"]
    for k in range(len(x2)):
        ours_agents[f"nodes{k}"] = 0.0
    for source, k in enumerate(np.flatnonzero(np.diag(sigma) != 0)):
        ours_agents[f"nodes{k}"] = agents[f"nodes{source}"].to_numpy()
    problem = blpjax.Problem(products, x1, x2, agent_data=ours_agents, demographics=("inv_income",))
    results = problem.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    pp = pyblp.Problem(
        (pyblp.Formulation(" + ".join(x1)), pyblp.Formulation(" + ".join(x2))),
        products,
        pyblp.Formulation("0 + I(1 / income)"),
        agents,
    )
    theirs = pp.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    markets = pp.unique_market_ids.ravel()
    _close(results.compute_costs(), theirs.compute_costs().ravel(), "autos costs")
    merged = products.firm_ids.replace(19, 18)  # two of the larger firms
    p_theirs = theirs.compute_prices(
        firm_ids=merged.to_numpy()[:, None], iteration=pyblp.Iteration("simple", {"atol": 1e-14})
    )
    p_ours = results.compute_prices(firm_ids=merged, iteration=TIGHT)
    _close(p_ours, p_theirs.ravel(), "autos merger prices")
    change = results.compute_consumer_surpluses(p_ours) - results.compute_consumer_surpluses()
    _close(
        *_by_market(
            change, (theirs.compute_consumer_surpluses(p_theirs) - theirs.compute_consumer_surpluses()).ravel(), markets
        ),
        "autos consumer surplus change",
    )


# --- closed forms -------------------------------------------------------------------------------
def _logit_results(seed=0, T=6, J=4):
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(T):
        x = rng.normal(size=J)
        z = rng.normal(size=(J, 2))
        p = 1 + 0.5 * z[:, 0] + 0.3 * rng.normal(size=J)
        u = 1 + x - 2 * p + 0.2 * rng.normal(size=J)
        s = np.exp(u) / (1 + np.exp(u).sum())
        for j in range(J):
            rows.append(
                dict(
                    market_ids=t,
                    product_ids=j,
                    firm_ids=j,
                    shares=s[j],
                    prices=p[j],
                    x=x[j],
                    demand_instruments0=z[j, 0],
                    demand_instruments1=z[j, 1],
                )
            )
    df = pd.DataFrame(rows)
    return df, blpjax.Problem(df, ("1", "prices", "x")).solve(method="1s")


def test_logit_markups_and_monopoly_prices_closed_forms():
    df, results = _logit_results()
    alpha = results.beta["prices"]
    s = df.shares.to_numpy()
    # single-product firms: p − c = −1/(α(1 − s))
    _close(results.compute_eta(), -1 / (alpha * (1 - s)), "single-product logit markups", rtol=1e-12)
    # one firm owns everything: every product's markup is −1/(α s₀) at the new equilibrium
    costs = results.compute_costs()
    monopoly = results.compute_prices(firm_ids=np.zeros(len(df)), iteration=TIGHT)
    new_shares = pd.Series(results.compute_shares(monopoly), index=df.index)
    s0 = 1 - new_shares.groupby(df.market_ids).transform("sum")
    _close(monopoly - costs, -1 / (alpha * s0), "monopoly logit markups", rtol=1e-10)
    assert (monopoly > df.prices).all()


# --- derivatives ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_nevo():
    return _nevo(markets=6)


def test_price_fixed_point_derivative_matches_unrolled_and_finite_differences(small_nevo):
    _, products, _, results = small_nevo
    fitted = results.fitted
    t = 0
    theta, demand = fitted.theta, jax.tree_util.tree_map(lambda a: a[t], fitted.demand)
    merged = jnp.where(fitted.firm_ids[t] == 2, 1, fitted.firm_ids[t])
    O = (merged[:, None] == merged[None, :]) & demand.mask[:, None] & demand.mask[None, :]
    O = O.astype(jnp.float64)
    costs = fitted.compute_costs()[t]

    @jax.jit
    def implicit(c, sigma):
        th = blpjax.Theta(sigma, theta.pi, theta.rho)
        return equilibrium_prices(c, th, demand, O, demand.prices, TIGHT).x

    @jax.jit
    def unrolled(c, sigma):
        th = blpjax.Theta(sigma, theta.pi, theta.rho)
        return equilibrium_prices_unrolled(c, th, demand, O, demand.prices, STEPS)

    p = implicit(costs, theta.sigma)
    assert np.abs(np.asarray(first_order_conditions(p, costs, theta, demand, O))).max() < 1e-12
    np.testing.assert_allclose(unrolled(costs, theta.sigma), p, rtol=1e-12)  # enough steps to converge
    ift = jax.jit(jax.jacfwd(implicit, argnums=(0, 1)))(costs, theta.sigma)
    unr = jax.jit(jax.jacfwd(unrolled, argnums=(0, 1)))(costs, theta.sigma)
    for a, b in zip(ift, unr, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    # finite differences in one cost and one σ entry
    h = 1e-5
    e = jnp.zeros_like(costs).at[0].set(h)
    fd = (implicit(costs + e, theta.sigma) - implicit(costs - e, theta.sigma)) / (2 * h)
    np.testing.assert_allclose(ift[0][:, 0], fd, rtol=1e-6, atol=1e-9)
    # reverse mode transposes the same rule
    g = jax.jit(jax.grad(lambda c: implicit(c, theta.sigma).sum()))(costs)
    np.testing.assert_allclose(g, ift[0].sum(axis=0), rtol=1e-10)


def test_merger_jacobian_in_the_estimates_matches_finite_differences(small_nevo):
    _, products, _, results = small_nevo
    fitted = results.fitted
    merged = jnp.where(fitted.firm_ids == 2, 1, fitted.firm_ids)

    def price_change(f):
        return f.compute_prices(ownership=f.ownership(merged), iteration=TIGHT).x - f.prices

    def surplus_change(f):
        p = f.compute_prices(ownership=f.ownership(merged), iteration=TIGHT).x
        return f.compute_consumer_surpluses(p) - f.compute_consumer_surpluses()

    x = fitted.x
    solve = blpjax.ContractionConfig(tol=1e-14)
    for fn in (price_change, surplus_change):
        out = results.delta_method(fn)
        G = np.asarray(out.jacobian).reshape(-1, x.shape[0])
        g = jax.jit(lambda v, fn=fn: fn(fitted.at(v, solve=solve)).ravel())
        np.testing.assert_allclose(g(x), np.asarray(out.estimate).ravel(), rtol=1e-10, atol=1e-13)
        for k in range(x.shape[0]):
            h = 1e-5 * max(1.0, abs(float(x[k])))
            e = jnp.zeros_like(x).at[k].set(h)
            fd = (g(x + e) - g(x - e)) / (2 * h)
            scale = np.abs(G).max()
            np.testing.assert_allclose(G[:, k], fd, rtol=1e-6, atol=1e-6 * scale, err_msg=f"{fn.__name__} {k}")
        assert np.isfinite(np.asarray(out.se)).all()


def test_standard_errors_of_outputs_are_labelled_and_positive(small_nevo):
    _, products, _, results = small_nevo
    merged = products.firm_ids.replace(2, 1)
    out = results.compute_prices(firm_ids=merged, se=True)
    assert list(out.columns) == ["estimate", "se"] and out.index.equals(products.index)
    _close(out["estimate"], results.compute_prices(firm_ids=merged), "estimate column")
    assert (out["se"] > 0).all()
    costs = results.compute_costs(se=True)
    # costs = p − η: their standard error is η's
    _close(costs["se"], results.compute_eta(se=True)["se"], "se of costs and of markups", rtol=1e-10)
    hhi = results.compute_hhi(se=True)
    np.testing.assert_array_equal(hhi["se"], 0.0)  # observed shares: no parameter moves the HHI


# --- bad inputs ----------------------------------------------------------------------------------
def test_bad_counterfactual_inputs_are_refused(small_nevo):
    _, products, _, results = small_nevo
    N = len(products)
    with pytest.raises(blpjax.BLPSpecificationError, match="ownership must be PyBLP's stacked"):
        results.compute_prices(ownership=np.eye(3))
    with pytest.raises(blpjax.BLPSpecificationError, match="firm_ids or ownership, not both"):
        results.compute_prices(firm_ids=products.firm_ids, ownership=np.ones((N, 24)))
    with pytest.raises(blpjax.BLPSpecificationError, match="one label per product row"):
        results.compute_prices(firm_ids=products.firm_ids.to_numpy()[1:])
    with pytest.raises(blpjax.BLPSpecificationError, match="missing"):
        results.compute_prices(firm_ids=products.firm_ids.iloc[1:])
    bad = np.ones((N, 24))
    bad[0, 0] = np.nan
    with pytest.raises(blpjax.BLPSpecificationError, match="NaN or infinite entries in market"):
        results.compute_costs(ownership=bad)
    with pytest.raises(blpjax.BLPSpecificationError, match="unknown product id"):
        results.compute_consumer_surpluses(eliminate_product_ids=["no such cereal"])
    with pytest.raises(blpjax.BLPSpecificationError, match="NaN"):
        results.compute_prices(costs=products.prices * np.nan)
    with pytest.raises(blpjax.BLPEstimationError, match="did not converge in .* market"):
        results.compute_prices(
            firm_ids=products.firm_ids.replace(2, 1),
            iteration=blpjax.ContractionConfig(method="simple", max_evaluations=2),
        )
    with pytest.warns(blpjax.BLPNumericalWarning, match="evaluation limit"):
        results.compute_prices(
            firm_ids=products.firm_ids.replace(2, 1),
            iteration=blpjax.ContractionConfig(method="simple", max_evaluations=2),
            throw=False,
        )
    # a reordered Series is aligned by its index, never by position
    merged = products.firm_ids.replace(2, 1)
    shuffled = merged.sample(frac=1.0, random_state=0)
    _close(results.compute_prices(firm_ids=shuffled), results.compute_prices(firm_ids=merged), "aligned firm ids")


def test_post_estimation_without_firm_ids_says_so():
    df, results = _logit_results()
    no_firms = blpjax.Problem(df.drop(columns="firm_ids"), ("1", "prices", "x")).solve(method="1s")
    with pytest.raises(blpjax.BLPSpecificationError, match="no 'firm_ids' column"):
        no_firms.compute_costs()
    # firm ids given to the call instead
    _close(no_firms.compute_costs(firm_ids=df.firm_ids), results.compute_costs(), "costs with firm_ids given")


def test_diversion_aggregate_elasticities_probabilities_diagonals_match_pyblp(nevo):
    pyblp, products, results, theirs = nevo
    markets = theirs.problem.unique_market_ids.ravel()
    _close(
        results.compute_long_run_diversion_ratios(layout="stacked"),
        theirs.compute_long_run_diversion_ratios(),
        "long-run diversion ratios",
    )
    _close(
        *_by_market(results.compute_aggregate_elasticities(), theirs.compute_aggregate_elasticities().ravel(), markets),
        "aggregate elasticities",
    )
    _close(results.compute_probabilities(), theirs.compute_probabilities(), "choice probabilities")
    E = results.compute_elasticities(layout="stacked")
    _close(results.extract_diagonals(E), theirs.extract_diagonals(E).ravel(), "own elasticities")
    _close(
        *_by_market(results.extract_diagonal_means(E), theirs.extract_diagonal_means(E).ravel(), markets),
        "mean own elasticities",
    )


def test_hypothesis_tests_match_pyblp():
    pyblp, products, agents = nevo_data(markets=40)  # a smaller problem: the statistics are the same maths
    pp, bp = nevo_problems(pyblp, products, agents)
    restricted_pi = NEVO_PI.copy()
    restricted_pi[3, 0] = 0  # mushy × income out
    fit = {}
    for name, pi in (("unrestricted", NEVO_PI), ("restricted", restricted_pi)):
        theirs = pp.solve(NEVO_SIGMA, pi, method="2s", optimization=pyblp.Optimization("return"))
        ours = bp.solve(NEVO_SIGMA, pi, method="2s", optimizer=blpjax.ScipyOptimizer("return"))
        fit[name] = (ours, theirs)
    ours, theirs = fit["unrestricted"]
    np.testing.assert_allclose(ours.run_hansen_test(), theirs.run_hansen_test(), rtol=1e-8)
    np.testing.assert_allclose(ours.run_lm_test(), theirs.run_lm_test(), rtol=1e-6)
    K = len(ours.labels)
    R = np.zeros((2, K))
    R[0, 0] = 1.0  # σ_constant = 0.3
    R[1, ours.labels.index("beta[prices]")] = 1.0  # β_prices = −30
    r = np.array([ours.parameters["estimate"].iloc[0] - 0.3, ours.beta["prices"] + 30])
    np.testing.assert_allclose(ours.run_wald_test(r, R), theirs.run_wald_test(r[:, None], R), rtol=1e-6)
    np.testing.assert_allclose(
        fit["restricted"][0].run_distance_test(ours), fit["restricted"][1].run_distance_test(theirs), rtol=1e-8
    )
    with pytest.raises(blpjax.BLPSpecificationError, match="restrictions_jacobian must be 2 × "):
        ours.run_wald_test(r, R[:, :-1])


def test_delta_method_standard_errors_beside_a_parametric_bootstrap():
    """Delta-method SEs of merger price changes beside a 200-draw parametric bootstrap (PyBLP's), on a simulated
    problem estimated from the truth, reported.

    They differ by the nonlinearity of the map and by simulation error (about 5% for a standard deviation from 200
    draws), so only the order of magnitude is asserted: the median ratio within [0.67, 1.5] catches the errors that
    matter (a missing chain term through δ(θ) or the costs, a √N slip), which move it by far more."""
    products, agents, truth = blpjax.simulate(
        blpjax.SimulationConfig(markets=60, products=(6, 10), agents=100, sigma=(1.0, 0.0), seed=3)
    )
    problem = blpjax.Problem(
        products, ("1", "x", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",)
    )
    results = problem.solve(truth["sigma"], truth["pi"], method="1s")
    merged = products.firm_ids.replace(1, 0)
    ownership = results.ownership(firm_ids=merged)

    def price_change(f):
        return f.compute_prices(ownership=ownership).x - f.prices

    delta = results.delta_method(price_change)
    _close(results.to_rows(delta.estimate), results.compute_prices(firm_ids=merged) - products.prices, "estimate")
    boot = results.bootstrap(price_change, draws=200, seed=0)
    assert boot.values.shape == (200, *delta.estimate.shape) and not np.asarray(boot.failed).any()
    mask = np.asarray(results.fitted.mask)
    ratio = np.std(np.asarray(boot.values), axis=0)[mask] / np.asarray(delta.se)[mask]
    print(f"bootstrap sd / delta-method se: median {np.median(ratio):.3f}, range {ratio.min():.3f}-{ratio.max():.3f}")
    assert 0.67 < np.median(ratio) < 1.5


def test_nested_logit_merger_matches_pyblp():
    """Nested logit (PyBLP's Nevo tutorial: nests by mushy, ρ = 0.7): costs, merger prices, surplus change."""
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    keep = products.market_ids.unique()[:30]
    products = products[products.market_ids.isin(keep)].reset_index(drop=True)
    products["nesting_ids"] = products["mushy"]
    pp = pyblp.Problem(pyblp.Formulation("0 + prices", absorb="C(product_ids)"), products)
    theirs = pp.solve(rho=0.7, optimization=pyblp.Optimization("return"))
    results = blpjax.Problem(products, ("prices",), absorb=("product_ids",)).solve(
        rho=0.7, method="2s", optimizer=blpjax.ScipyOptimizer("return")
    )
    markets = pp.unique_market_ids.ravel()
    np.testing.assert_allclose(results.beta.to_numpy(), np.asarray(theirs.beta).ravel(), rtol=1e-9)
    _close(results.compute_costs(), theirs.compute_costs().ravel(), "nested logit costs")
    merged = products.firm_ids.replace(2, 1)
    p_theirs = theirs.compute_prices(
        firm_ids=merged.to_numpy()[:, None], iteration=pyblp.Iteration("simple", {"atol": 1e-14})
    )
    p_ours = results.compute_prices(firm_ids=merged, iteration=TIGHT)
    _close(p_ours, p_theirs.ravel(), "nested logit merger prices")
    change = results.compute_consumer_surpluses(p_ours) - results.compute_consumer_surpluses()
    theirs_change = theirs.compute_consumer_surpluses(p_theirs) - theirs.compute_consumer_surpluses()
    _close(*_by_market(change, theirs_change.ravel(), markets), "nested logit surplus change")
    _close(results.compute_passthrough(layout="stacked"), theirs.compute_passthrough(), "nested pass-through")


def test_return_evaluates_at_the_given_parameters_and_maxiter_zero_does_not_move():
    """PyBLP's Optimization('return'): results at fixed parameters, reported as such; SciPy's L-BFGS-B takes a step
    even with maxiter=0, which must not happen (it moved ρ from 0.7 to 0.99 on a Nevo nested logit)."""
    df, _ = _logit_results()
    df["nesting_ids"] = df.product_ids % 2
    problem = blpjax.Problem(df, ("1", "prices", "x"))
    returned = problem.solve(rho=0.7, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    assert returned.converged and "method='return'" in returned.final.optimizer_message
    np.testing.assert_array_equal(returned.rho, [0.7])
    zero = problem.solve(rho=0.7, method="1s", optimizer=blpjax.ScipyOptimizer("l-bfgs-b", maxiter=0), throw=False)
    np.testing.assert_array_equal(zero.rho, [0.7])
    assert not zero.converged and "maxiter=0" in zero.message


def test_share_jacobian_when_the_price_coefficient_varies_across_products():
    """Prices interacted with a product characteristic (α_ij varies with j): the closed-form ∂s/∂p against autodiff
    of the shares, and the equilibrium's implicit derivative against finite differences."""
    rng = np.random.default_rng(0)
    J, I, K2 = 5, 40, 2
    market = blpjax.Market(
        X2=jnp.asarray(rng.normal(size=(J, K2))),
        nodes=jnp.asarray(rng.normal(size=(I, K2))),
        demographics=jnp.zeros((I, 0)),
        weights=jnp.full(I, 1.0 / I),
        log_shares=jnp.zeros(J),
        mask=jnp.asarray([True] * 4 + [False]),
        nest_ids=jnp.zeros(J, int),
    )
    theta = blpjax.Theta(jnp.diag(jnp.asarray([0.5, 0.3])), jnp.zeros((K2, 0)), jnp.zeros(0))
    prices = jnp.asarray(rng.uniform(1, 2, J))
    dX2 = jnp.stack([jnp.zeros(J), jnp.asarray(rng.uniform(0.5, 1.5, J))], axis=1)  # X2[:, 1] = prices × z_j
    d = PriceDemand(market, jnp.asarray(rng.normal(size=J)) - 2, prices, jnp.full(J, -1.5), dX2)
    _, _, jac = demand_derivatives(prices, theta, d)
    np.testing.assert_allclose(
        jac, jax.jacfwd(shares_at)(prices, theta, d) * np.outer(market.mask, market.mask), atol=1e-14
    )
    ownership = jnp.where(market.mask[:, None] & market.mask[None, :], 1.0, 0.0)
    costs = prices - 0.3

    @jax.jit
    def solve(c):
        out = equilibrium_prices(c, theta, d, ownership, prices, TIGHT)
        return jnp.where(out.status == 0, out.x, jnp.nan)

    assert np.abs(np.asarray(first_order_conditions(solve(costs), costs, theta, d, ownership))[:4]).max() < 1e-12
    h = 1e-6
    fd = (solve(costs.at[0].add(h)) - solve(costs.at[0].add(-h))) / (2 * h)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(solve))(costs)[:, 0], fd, rtol=1e-6, atol=1e-9)


def test_partial_ownership_and_ownership_layouts_match_pyblp(nevo):
    """κ(f, g) partial ownership (PyBLP's build_ownership with a kappa function): the owners' factorisation, the
    stacked matrix and the dense padded matrix give PyBLP's equilibrium prices."""
    pyblp, products, results, theirs = nevo

    def kappa(f, g):
        return 1.0 if f == g else (0.4 if {f, g} == {1, 2} else 0.0)

    stacked = pyblp.build_ownership(products, kappa)
    p_theirs = theirs.compute_prices(ownership=stacked, iteration=pyblp.Iteration("simple", {"atol": 1e-14}))
    owners = results.ownership(kappa_specification=kappa)
    for ownership in (owners, stacked, np.asarray(owners.dense())):
        _close(results.compute_prices(ownership=ownership, iteration=TIGHT), p_theirs.ravel(), "partial ownership")


def test_demand_jacobians_hessians_and_profit_hessians_match_pyblp():
    """On unbalanced markets (Nevo's first 8 markets, a product dropped from every other market), so that PyBLP's
    NaN padding of the stacked arrays is checked too; prices and a non-price characteristic (sugar, in X2)."""
    pyblp, products, agents = nevo_data(8)
    drop = products.groupby("market_ids").cumcount().eq(0) & products.market_ids.isin(products.market_ids.unique()[::2])
    products = products[~drop].reset_index(drop=True)
    pp, bp = nevo_problems(pyblp, products, agents)
    results = bp.solve(NEVO_SIGMA, NEVO_PI, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    theirs = pp.solve(NEVO_SIGMA, NEVO_PI, method="1s", optimization=pyblp.Optimization("return"))
    for name in ("prices", "sugar"):
        _close(results.compute_demand_jacobians(name), theirs.compute_demand_jacobians(name), f"{name} Jacobians")
        _close(results.compute_demand_hessians(name), theirs.compute_demand_hessians(name), f"{name} Hessians")
    _close(results.compute_profit_hessians(), theirs.compute_profit_hessians(), "profit Hessians")
    market = products.market_ids.iloc[0]
    _close(
        results.compute_profit_hessians(market_id=market),
        theirs.compute_profit_hessians(market_id=market),
        "one market's profit Hessians",
    )
    # closed form: ∂²π_j/∂p_j² = 2 ∂s_j/∂p_j + (p_j − c_j) ∂²s_j/∂p_j²
    market = products.market_ids.unique()[1]
    H = results.compute_profit_hessians(market_id=market)
    J1 = results.compute_demand_jacobians(market_id=market)
    H1 = results.compute_demand_hessians(market_id=market)
    eta = results.compute_eta()[products.market_ids == market].to_numpy()
    own = np.arange(len(eta))
    np.testing.assert_allclose(H[own, own, own], 2 * J1[own, own] + eta * H1[own, own, own], rtol=1e-10)


def test_compute_delta_under_new_agents_matches_pyblp(nevo):
    """δ at the estimated θ with other agents (the tutorial's nodes scaled by 1.2): as PyBLP's compute_delta."""
    pyblp, products, results, theirs = nevo
    agents = pd.read_csv(pyblp.data.NEVO_AGENTS_LOCATION)
    for k in range(4):
        agents[f"nodes{k}"] *= 1.2
    ours = results.compute_delta(agent_data=agents, iteration=blpjax.ContractionConfig(tol=1e-14))
    delta = theirs.compute_delta(agent_data=agents, iteration=pyblp.Iteration("squarem", {"atol": 1e-14}))
    _close(ours, np.asarray(delta).ravel(), "delta under new agents", rtol=1e-9)
    assert np.abs(ours.to_numpy() - results.delta).max() > 1e-3  # the new agents move δ
    with pytest.raises(blpjax.BLPSpecificationError, match="agent_data"):
        results.compute_delta()


def test_rcnl_merger_matches_pyblp():
    """Random coefficients with nesting (σ on the constant and prices, nests by mushy, ρ = 0.5) on 20 Nevo markets:
    costs, merger prices, shares and the consumer-surplus change against PyBLP at the same parameters."""
    pyblp, products, agents = nevo_data(20)
    products["nesting_ids"] = products["mushy"]
    agents = agents[["market_ids", "weights", "nodes0", "nodes1"]]
    sigma = np.diag([0.5, 1.5])
    pp = pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation("1 + prices")),
        products,
        None,
        agents,
    )
    theirs = pp.solve(sigma, rho=0.5, method="1s", optimization=pyblp.Optimization("return"))
    ours_problem = blpjax.Problem(products, ("prices",), ("1", "prices"), absorb=("product_ids",), agent_data=agents)
    results = ours_problem.solve(sigma, rho=0.5, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    markets = pp.unique_market_ids.ravel()
    _close(results.compute_costs(), theirs.compute_costs().ravel(), "RCNL costs")
    merged = products.firm_ids.replace(2, 1)
    p_theirs = theirs.compute_prices(
        firm_ids=merged.to_numpy()[:, None], iteration=pyblp.Iteration("simple", {"atol": 1e-14})
    )
    p_ours = results.compute_prices(firm_ids=merged, iteration=TIGHT)
    _close(p_ours, p_theirs.ravel(), "RCNL merger prices")
    _close(results.compute_shares(p_ours), theirs.compute_shares(p_theirs).ravel(), "RCNL merger shares")
    change = results.compute_consumer_surpluses(p_ours) - results.compute_consumer_surpluses()
    theirs_change = theirs.compute_consumer_surpluses(p_theirs) - theirs.compute_consumer_surpluses()
    _close(*_by_market(change, theirs_change.ravel(), markets), "RCNL surplus change")
