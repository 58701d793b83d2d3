"""The supply side (Bertrand–Nash markups, log/linear marginal costs, stacked GMM) against PyBLP.

PyBLP runs in the tests on its bundled Petrin (2002) data, cut to a few markets and agents so
that both libraries evaluate the same problem quickly: objective, gradient, β, γ, their standard
errors, costs, markups, ω, the updated weighting matrix and micro values at the same θ. The
gradient is also checked against central finite differences of blpjax's own objective, for the
plain and the nested (RCNL) share Jacobian.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import blpjax
from blpjax import BLPSpecificationError, ContractionConfig
from blpjax.internal import (
    Concentration,
    DatasetMarket,
    Market,
    StatisticsOptions,
    bertrand_markups,
    bertrand_parts,
    firm_membership,
    markups,
    ownership_matrix,
    results_at,
)

pyblp = pytest.importorskip("pyblp")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import petrin  # noqa: E402

TOL = 1e-13  # as PyBLP's Petrin tutorial: 1e-14 is below the rounding noise of δ in some markets
AGENTS = 40  # of the 1,000 per market: all 13 markets (fewer make market-level instruments collinear)


def _subset(nested: bool = False, size: int = AGENTS):
    products, agents = petrin.load()
    agents = agents.groupby("market_ids").head(size).reset_index(drop=True)
    agents["weights"] = 1.0 / size
    if nested:
        products["nesting_ids"] = np.where(products["mi"] + products["sw"] + products["su"] + products["pv"] > 0, 1, 0)
    return products, agents


def _rel(a, b):
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def _pyblp_order(K1, MD_excluded, K3, MS_excluded, MM):
    """Positions in blpjax's moment order of PyBLP's: PyBLP puts excluded instruments first."""
    d_exog, d_excl = list(range(K1)), list(range(K1, K1 + MD_excluded))
    s0 = K1 + MD_excluded
    s_exog, s_excl = list(range(s0, s0 + K3)), list(range(s0 + K3, s0 + K3 + MS_excluded))
    m0 = s0 + K3 + MS_excluded
    return d_excl + d_exog + s_excl + s_exog + list(range(m0, m0 + MM))


@pytest.mark.parametrize("costs_type,with_micro", [("log", True), ("linear", False)])
def test_supply_matches_pyblp_at_fixed_theta(costs_type, with_micro):
    products, agents = _subset()
    problem = petrin.blpjax_problem(products, agents, costs_type)
    pproblem = pyblp.Problem(
        tuple(pyblp.Formulation(f) for f in petrin.PYBLP_FORMULATIONS),
        products,
        pyblp.Formulation(petrin.PYBLP_AGENT_FORMULATION),
        agents,
        costs_type=costs_type,
    )
    options = dict(se_type="clustered", W_type="clustered")
    p_options = dict(options)
    options["contraction"] = ContractionConfig(tol=TOL)
    if with_micro:
        options["micro_moments"] = petrin.blpjax_micro_moments()
        p_options["micro_moments"] = petrin.pyblp_micro_moments()
    res = results_at(problem, petrin.SIGMA, petrin.PI, **options)
    pres = pproblem.solve(
        petrin.SIGMA,
        petrin.PI,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": TOL}),
        check_optimality="gradient",
        **p_options,
    )
    assert res.contraction_summary["nonpositive_costs"] == 0 and not res.contraction_summary["failed_markets"]
    assert _rel(res.objective, pres.objective) < 1e-9
    assert _rel(res.gradient, pres.gradient) < 1e-5
    assert _rel(res.beta, pres.beta) < 1e-6
    assert _rel(res.gamma, pres.gamma) < 1e-6
    theta_se = np.r_[np.asarray(pres.sigma_se)[petrin.SIGMA != 0], np.asarray(pres.pi_se)[petrin.PI != 0]]
    assert _rel(res.final.se[: res.spec.P], theta_se) < 1e-6
    assert _rel(res.beta_se, pres.beta_se) < 1e-6
    assert _rel(res.gamma_se, pres.gamma_se) < 1e-6
    assert _rel(res.costs, pres.compute_costs()) < 1e-10
    np.testing.assert_allclose(res.markups, products["prices"].to_numpy() - res.costs, rtol=1e-12)
    np.testing.assert_allclose(res.omega, np.asarray(pres.omega).ravel(), atol=1e-7 * np.abs(res.omega).max())
    MM = res.micro.MM if res.micro is not None else 0
    order = _pyblp_order(len(petrin.X1), 22, len(petrin.X3), 16, MM)
    W = res.updated_W[np.ix_(order, order)]
    S, S_p = np.linalg.inv(W), np.linalg.inv(np.asarray(pres.updated_W))
    assert np.max(np.abs(S - S_p)) < 1e-7 * np.max(np.abs(S_p))
    if with_micro:
        assert _rel(res.micro_values["estimated"], pres.micro_values) < 1e-12


@pytest.mark.parametrize("nested", [False, True])
def test_supply_gradient_matches_finite_differences(nested):
    products, agents = _subset(nested, 12 if nested else AGENTS)  # nested: fewer agents, a cheaper jacfwd
    problem = petrin.blpjax_problem(products, agents, "linear" if nested else "log")
    config = ContractionConfig(tol=TOL)
    if nested:  # less heterogeneity: the damped nested contraction converges at these values
        res = results_at(problem, petrin.SIGMA * 0.25, petrin.PI * 0.5, np.array([0.3]), contraction=config)
    else:
        res = results_at(problem, petrin.SIGMA, petrin.PI, contraction=config)
    assert not res.contraction_summary["failed_markets"]
    spec, setup = res.spec, problem.setup
    conc = Concentration.build_host(setup.ZX_all(host=True), res.W)  # as Problem.solve builds it
    x = jnp.asarray(res.final.theta)
    delta0 = res.final.delta

    def value(y):
        return float(res.engine.value(jnp.asarray(y), delta0, conc)[0])

    q, grad, _, _ = res.engine.value_and_grad(x, delta0, conc)
    assert np.isclose(float(q), res.objective, rtol=1e-12)
    checked = [0, spec.P - 2, spec.P - 1] if nested else range(spec.P)  # nested: Σ, Π and ρ entries
    fd = np.empty(spec.P)
    for p in checked:
        h = 1e-5 * max(1.0, abs(float(x[p])))
        e = np.zeros(spec.P)
        e[p] = h
        fd[p] = (value(np.asarray(x) + e) - value(np.asarray(x) - e)) / (2 * h)
    checked = list(checked)
    np.testing.assert_allclose(np.asarray(grad)[checked], fd[checked], rtol=2e-5, atol=2e-6 * np.abs(fd[checked]).max())


def test_markups_match_logit_closed_form():
    """Plain logit with single-product firms: η_j = 1 / (α (1 − s_j)) exactly."""
    from blpjax import SimulationConfig, simulate

    product_data, _, _ = simulate(SimulationConfig(markets=4, agents=10, seed=3))
    product_data = product_data.copy()
    product_data["firm_ids"] = np.arange(len(product_data))
    product_data["supply_instruments0"] = product_data["demand_instruments0"]
    product_data["neg_prices"] = -product_data["prices"]
    agents = product_data[["market_ids"]].drop_duplicates().assign(weights=1.0, nodes0=0.0, one=1.0)
    problem = blpjax.Problem(
        product_data,
        linear=("1", "x"),
        nonlinear=("neg_prices",),
        agent_data=agents,
        demographics=("one",),
        costs=("1", "x"),
        price_derivatives={"neg_prices": -1.0},
    )
    alpha = 1.7
    res = results_at(problem, np.zeros((1, 1)), np.array([[alpha]]))
    s = product_data["shares"].to_numpy()
    np.testing.assert_allclose(res.markups, 1 / (alpha * (1 - s)), rtol=1e-12)


def test_supply_errors_teach():
    products, agents = _subset()
    bj_products, bj_agents = petrin.blpjax_data(products, agents)
    common = dict(agent_data=bj_agents, demographics=petrin.DEMOGRAPHICS, costs=petrin.X3)
    in_x1 = blpjax.Problem(bj_products, linear=("1", "prices"), nonlinear=petrin.X2, **common)
    with pytest.raises(BLPSpecificationError, match=r"coefficients of \['prices'\].*solve\(beta="):
        in_x1.solve(petrin.SIGMA, petrin.PI)
    with pytest.raises(BLPSpecificationError, match="prices must enter utility"):
        blpjax.Problem(bj_products, linear=petrin.X1, nonlinear=petrin.X2, **common)
    with pytest.raises(blpjax.BLPDataError, match="firm_ids"):
        blpjax.Problem(
            bj_products.drop(columns="firm_ids"),
            linear=petrin.X1,
            nonlinear=petrin.X2,
            price_derivatives={"neg_prices": -1.0},
            **common,
        )
    with pytest.raises(BLPSpecificationError, match="costs_type"):
        blpjax.Problem(
            bj_products,
            linear=petrin.X1,
            nonlinear=petrin.X2,
            costs_type="exp",
            price_derivatives={"neg_prices": -1.0},
            **common,
        )
    # nonpositive marginal costs under log costs are reported, with the fix
    problem = blpjax.Problem(
        bj_products,
        linear=petrin.X1,
        nonlinear=petrin.X2,
        costs_type="log",
        price_derivatives={"neg_prices": -1.0},
        **common,
    )
    res = results_at(problem, petrin.SIGMA, petrin.PI / 50)
    summary = res.contraction_summary
    assert summary["nonpositive_costs"] > 0 and "costs_bounds" in summary["costs_message"]
    assert not res.converged
    clipped = results_at(problem, petrin.SIGMA, petrin.PI / 50, costs_bounds=(1e-3, None))
    assert clipped.contraction_summary["clipped_costs"] == summary["nonpositive_costs"]
    assert np.isfinite(clipped.objective)
    jax.clear_caches()


def test_outer_product_micro_parts_equal_dense_path():
    """Parts and weights detected as outer products (a_i b_j, c_i d_j) give the dense path's values,
    derivatives and covariances."""
    import dataclasses

    products, agents = _subset(size=10)
    problem = petrin.blpjax_problem(products, agents)
    # a second survey with non-trivial weights c_i d_j (family size x a product characteristic)
    survey = blpjax.MicroDataset(
        "weighted", 500, lambda m: jnp.outer(m.agents["fs"], jnp.r_[0.5, 1.0 + m.products["hpwt"]])
    )
    parts = [
        blpjax.MicroPart("age x mi", survey, lambda m: jnp.outer(m.agents["age"], jnp.r_[0.0, m.products["mi"]])),
        blpjax.MicroPart("inside", survey, lambda m: jnp.outer(jnp.ones(m.I), jnp.r_[0.0, jnp.ones(m.J)])),
    ]
    weighted = blpjax.MicroMoment("weighted ratio", 0.5, parts, lambda v: v[0] / v[1])
    micro, _ = problem.build_micro([*petrin.blpjax_micro_moments(), weighted])
    assert len(micro.datasets) == 2
    assert all(s.factored_values and s.factored_weights for s in micro.specs)
    assert all(ds.weights is None and ds.values is None for ds in micro.datasets)  # no dense array is kept

    def variant(dense_values: bool):
        datasets = tuple(
            DatasetMarket(weights=ds.dense_weights(), values=ds.dense_values())
            if dense_values
            else DatasetMarket(weights=ds.dense_weights(), a=ds.a, b=ds.b)
            for ds in micro.datasets
        )
        specs = tuple(
            dataclasses.replace(s, factored_weights=False, factored_values=not dense_values) for s in micro.specs
        )
        return dataclasses.replace(micro, datasets=datasets, specs=specs)

    res = results_at(problem, petrin.SIGMA, petrin.PI, contraction=ContractionConfig(tol=TOL))
    x, delta, M = jnp.asarray(res.final.theta), res.final.delta, problem.setup.M
    conc = Concentration.build_host(problem.setup.ZX_all(host=True), np.eye(M + micro.MM))

    def statistics(m):
        engine = problem.engine(res.spec, ContractionConfig(tol=TOL), micro=m)
        return engine.statistics(x, delta, conc, StatisticsOptions())

    reference = statistics(variant(True))
    for m in (micro, variant(False)):
        out = statistics(m)
        np.testing.assert_allclose(out.micro_values, reference.micro_values, rtol=1e-13)
        G, G_ref = np.asarray(out.moments_jacobian)[M:], np.asarray(reference.moments_jacobian)[M:]
        np.testing.assert_allclose(G, G_ref, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(out.micro_covariances, reference.micro_covariances, rtol=1e-11, atol=1e-16)


@pytest.mark.parametrize("firms_per_market", [3, 9])
def test_markup_jvp_rule_matches_dense_autodiff(firms_per_market):
    """The O(J·I·F) JVP rule of the markups equals autodiff through the dense J×J Δ: forward, reverse, Hessian.

    Random probabilities (with padded products), price derivatives, weights and ownership; 3 firms
    of 10 products takes the factored ownership product B (Bᵀ X), 9 firms the dense (B Bᵀ) X.
    """

    rng = np.random.default_rng(firms_per_market)
    I, J = 7, 10
    mask = jnp.asarray(np.arange(J) < 8)  # two padded products
    firm_ids = jnp.asarray(rng.integers(0, firms_per_market, size=(1, J)))
    firms = firm_membership(firm_ids, mask[None])[0]
    u = rng.normal(size=(I, J))
    e = np.exp(u) * np.asarray(mask)
    # products by agents, (J, I), as the rule takes them
    P = jnp.asarray(e / (1 + e.sum(1, keepdims=True))).T
    a = jnp.asarray(-rng.uniform(1, 3, size=(I, 1)) * rng.uniform(0.5, 1.5, size=(I, J)) * np.asarray(mask)).T
    w = jnp.asarray(rng.uniform(0.5, 1.5, size=I) / I)

    def dense(P, a, w):
        capital_delta, s, _, _ = bertrand_parts(P, a, w, firms, mask)
        return jnp.where(mask, jnp.linalg.solve(capital_delta, s), 0.0)

    def rule(P, a, w):
        return bertrand_markups(P, a, w, firms, mask)

    np.testing.assert_allclose(rule(P, a, w), dense(P, a, w), rtol=1e-13)
    tangents = tuple(jnp.asarray(rng.normal(size=x.shape)) for x in (P, a, w))
    np.testing.assert_allclose(
        jax.jvp(rule, (P, a, w), tangents)[1], jax.jvp(dense, (P, a, w), tangents)[1], rtol=1e-10, atol=1e-12
    )
    cot = jnp.asarray(rng.normal(size=J))
    for g_rule, g_dense in zip(jax.vjp(rule, P, a, w)[1](cot), jax.vjp(dense, P, a, w)[1](cot), strict=True):
        np.testing.assert_allclose(g_rule, g_dense, rtol=1e-10, atol=1e-12)

    def scalar(f):
        return lambda w_: jnp.sum(jnp.log1p(f(P, a, w_) ** 2))

    np.testing.assert_allclose(jax.hessian(scalar(rule))(w), jax.hessian(scalar(dense))(w), rtol=1e-9, atol=1e-10)


def test_markup_derivatives_match_dense_path_in_a_market():
    """Through θ and δ in a real market: the JVP rule equals autodiff of the dense price Jacobian."""

    products, agents = _subset(size=8)
    problem = petrin.blpjax_problem(products, agents)
    res = results_at(problem, petrin.SIGMA, petrin.PI, contraction=ContractionConfig(tol=TOL))
    setup, spec = problem.setup, res.spec
    t = 2
    market = jax.tree_util.tree_map(lambda v: v[t], setup.market)
    supply = jax.tree_util.tree_map(lambda v: v[t], setup.supply.market)
    assert isinstance(market, Market)
    delta = jnp.asarray(res.final.delta)[t]
    O = ownership_matrix(supply.firm_ids, market.mask)

    def both(x, d):
        theta = spec.unpack(x)
        return markups(d, theta, market, supply), markups(d, theta, market, supply, ownership=O)

    x = jnp.asarray(res.final.theta)
    rule, dense = both(x, delta)
    np.testing.assert_allclose(rule, dense, rtol=1e-12)
    J_rule, J_dense = jax.jacfwd(both, argnums=(0, 1))(x, delta)
    for r, d in zip(J_rule, J_dense, strict=True):
        np.testing.assert_allclose(r, d, rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(d))))


def test_firm_membership_gives_the_ownership_matrix():
    """B Bᵀ from the vectorised per-market firm codes equals the same-firm matrix, padding excluded."""

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=(30, 12))
    mask = rng.random((30, 12)) < 0.8
    mask[3] = False  # a market without products
    B = np.asarray(firm_membership(ids, mask), float)
    assert B.shape[2] == max(len(np.unique(ids[t][mask[t]])) for t in range(30))
    assert np.all(B.sum(2) == mask)  # one firm per real product, none on padding
    for t in range(30):
        O = np.asarray(ownership_matrix(jnp.asarray(ids[t]), jnp.asarray(mask[t])))
        np.testing.assert_array_equal(B[t] @ B[t].T, O)


def test_shared_probabilities_equal_separate_ones():
    """Supply side + micro moments share one set of choice probabilities per evaluation: same q and ∂q/∂θ."""
    import dataclasses

    products, agents = _subset(size=10)
    problem = petrin.blpjax_problem(products, agents)
    config = ContractionConfig(tol=TOL)
    res = results_at(problem, petrin.SIGMA, petrin.PI, contraction=config, micro_moments=petrin.blpjax_micro_moments())
    conc = Concentration.build_host(problem.setup.ZX_all(host=True), res.W)
    x = jnp.asarray(res.final.theta)
    shared = res.engine
    assert shared.work.statics.share_probabilities
    work = dataclasses.replace(shared.work, statics=dataclasses.replace(shared.work.statics, share_probabilities=False))
    separate = dataclasses.replace(shared, work=work)
    q_shared, g_shared = shared.value_and_grad(x, res.final.delta, conc)[:2]
    q_separate, g_separate = separate.value_and_grad(x, res.final.delta, conc)[:2]
    np.testing.assert_allclose(q_shared, q_separate, rtol=1e-12)
    np.testing.assert_allclose(g_shared, g_separate, rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(g_separate))))


def test_a_per_agent_price_slope_equals_the_general_price_derivatives():
    """With prices alone in X2 every product has the same ∂X2/∂p, so ∂u_ij/∂p_j is one slope per agent, broadcast;
    a prices × x column with zero σ and Π makes ∂X2/∂p differ by product (the general product of the coefficients
    with ∂X2/∂p) without changing the model: the objective and its gradient agree."""
    from layout_problems import data

    products, agents = data()
    agents = agents.assign(nodes2=0.0)  # the extra column's node (its σ is 0)
    common = dict(linear="1 + x", demographics="0 + income + one", costs="1 + x", costs_type="log", agent_data=agents)
    pi = np.array([[0.0, 0.0], [0.3, -2.0]])
    uniform = blpjax.Problem(products.drop(columns=["nesting_ids"]), nonlinear="1 + prices", **common)
    varying = blpjax.Problem(products.drop(columns=["nesting_ids"]), nonlinear="1 + prices + prices:x", **common)
    a = uniform.objective(np.diag([0.8, 0.3]), pi)
    b = varying.objective(np.diag([0.8, 0.3, 0.0]), np.vstack([pi, np.zeros((1, 2))]))
    np.testing.assert_array_equal(a.x0, b.x0)
    qa, ga, state_a = a.value_and_grad(a.x0, a.init_state())
    qb, gb, state_b = b.value_and_grad(b.x0, b.init_state())
    assert not np.any(np.asarray(state_a.status)) and not np.any(np.asarray(state_b.status))
    np.testing.assert_allclose(qa, qb, rtol=1e-10)
    np.testing.assert_allclose(ga, gb, rtol=1e-8, atol=1e-10 * np.abs(ga).max())
