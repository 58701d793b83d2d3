"""Random-coefficients engine: implicit derivatives, batching, padding, PyBLP agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from nevo import NEVO_PI, NEVO_SIGMA, nevo_data, nevo_problems

import blpjax
from blpjax import ContractionConfig, Market, Status, Theta, solve_delta, solve_delta_unrolled


def _toy(nested=False, seed=0, T=4, J=6, I=30):
    rng = np.random.default_rng(seed)
    X2 = jnp.asarray(rng.normal(size=(T, J, 2)))
    nodes = jnp.asarray(rng.normal(size=(T, I, 2)))
    demo = jnp.asarray(rng.normal(size=(T, I, 1)))
    w = jnp.full((T, I), 1 / I)
    mask = jnp.ones((T, J), bool).at[0, -2:].set(False)  # an unbalanced market
    s = jnp.where(mask, 0.04 + 0.03 * jnp.asarray(rng.uniform(size=(T, J))), 0.0)
    log_s = jnp.where(mask, jnp.log(jnp.where(mask, s, 1.0)), 0.0)
    nest_ids = jnp.asarray(np.tile(np.arange(J) % 2, (T, 1)))
    market = Market(X2, nodes, demo, w, log_s, mask, nest_ids)
    rho = jnp.array([0.3, 0.5]) if nested else jnp.zeros(0)
    theta = Theta(jnp.array([[0.6, 0.0], [0.2, 0.9]]), jnp.array([[0.3], [-0.2]]), rho)
    return market, theta


def _delta(theta, market, config=ContractionConfig()):
    T, J = market.mask.shape
    return jax.vmap(solve_delta, in_axes=(None, 0, 0, None))(theta, market, jnp.zeros((T, J)), config)


def _params(theta):
    return jnp.concatenate([theta.sigma[jnp.tril_indices(2)], theta.pi.ravel(), theta.rho])


def _unflatten(x, nested):
    sigma = jnp.zeros((2, 2)).at[jnp.tril_indices(2)].set(x[:3])
    return Theta(sigma, x[3:5].reshape(2, 1), x[5:] if nested else jnp.zeros(0))


@pytest.mark.parametrize("nested", [False, True])
def test_ift_gradient_matches_unrolled_and_finite_differences(nested):
    market, theta = _toy(nested)
    x0 = _params(theta)
    T, J = market.mask.shape
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(T, J)))

    def f(x):
        return jnp.sum(weights * _delta(_unflatten(x, nested), market).x)

    def f_unrolled(x):
        th = _unflatten(x, nested)
        d = jax.vmap(solve_delta_unrolled, in_axes=(None, 0, 0, None))(th, market, jnp.zeros((T, J)), 4000)
        return jnp.sum(weights * d)

    f = jax.jit(f)
    g_rev = jax.jit(jax.grad(f))(x0)
    g_fwd = jax.jit(jax.jacfwd(f))(x0)
    g_unrolled = jax.jit(jax.grad(f_unrolled))(x0)
    eps = 1e-6
    g_fd = np.array([(f(x0 + eps * e) - f(x0 - eps * e)) / (2 * eps) for e in np.eye(x0.size)])
    np.testing.assert_allclose(g_rev, g_fwd, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_rev, g_unrolled, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(g_rev, g_fd, rtol=1e-6, atol=1e-8)
    # each parameter type actually moves δ
    assert np.all(np.abs(np.asarray(g_rev)) > 1e-6)


def test_hessian_is_symmetric_and_matches_finite_differences_of_gradient():
    market, theta = _toy()
    x0 = _params(theta)

    def f(x):
        return jnp.sum(_delta(_unflatten(x, False), market).x ** 2)

    H = jax.jit(jax.hessian(f))(x0)
    g = jax.jit(jax.grad(f))
    eps = 1e-5
    H_fd = np.array([(g(x0 + eps * e) - g(x0 - eps * e)) / (2 * eps) for e in np.eye(x0.size)])
    np.testing.assert_allclose(H, H.T, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(H, H_fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["squarem", "anderson", "newton", "simple"])
@pytest.mark.parametrize("nested", [False, True])
def test_contraction_solves_share_equations(method, nested):
    market, theta = _toy(nested)
    fp = _delta(theta, market, ContractionConfig(method=method))
    assert np.all(np.asarray(fp.status) == Status.CONVERGED)
    from blpjax.internal import market_log_shares

    ls = jax.vmap(market_log_shares, in_axes=(0, None, 0))(fp.x, theta, market)
    np.testing.assert_allclose(np.where(market.mask, ls, 0), market.log_shares, atol=1e-12)
    # padded products stay exactly at zero
    assert np.all(np.asarray(fp.x)[~np.asarray(market.mask)] == 0)


def test_vmap_equals_per_market_loop_and_jit_equals_eager():
    market, theta = _toy()
    batched = _delta(theta, market).x
    cfg = ContractionConfig()
    for t in range(market.mask.shape[0]):
        m_t = jax.tree_util.tree_map(lambda a, t=t: a[t], market)
        one = solve_delta(theta, m_t, jnp.zeros(market.mask.shape[1]), cfg).x
        np.testing.assert_allclose(one, batched[t], rtol=0, atol=1e-13)
    jitted = jax.jit(lambda th: _delta(th, market).x)(theta)
    np.testing.assert_allclose(jitted, batched, rtol=0, atol=1e-13)


def test_padding_products_and_agents_changes_nothing():
    market, theta = _toy()
    base = _delta(theta, market).x
    T, J = market.mask.shape
    I = market.weights.shape[1]
    pad_j, pad_i = 3, 7
    padded = Market(
        jnp.concatenate([market.X2, jnp.ones((T, pad_j, 2))], 1),
        jnp.concatenate([market.nodes, jnp.ones((T, pad_i, 2))], 1),
        jnp.concatenate([market.demographics, jnp.ones((T, pad_i, 1))], 1),
        jnp.concatenate([market.weights, jnp.zeros((T, pad_i))], 1),
        jnp.concatenate([market.log_shares, jnp.zeros((T, pad_j))], 1),
        jnp.concatenate([market.mask, jnp.zeros((T, pad_j), bool)], 1),
        jnp.concatenate([market.nest_ids, jnp.zeros((T, pad_j), int)], 1),
    )
    out = jax.vmap(solve_delta, in_axes=(None, 0, 0, None))(
        theta, padded, jnp.zeros((T, J + pad_j)), ContractionConfig()
    )
    np.testing.assert_allclose(out.x[:, :J], base, rtol=0, atol=1e-12)
    assert I + pad_i == padded.weights.shape[1]


def test_non_convergence_is_a_status_not_a_nan():
    market, theta = _toy()
    fp = _delta(theta, market, ContractionConfig(max_evaluations=3))
    assert np.all(np.asarray(fp.status) == Status.MAX_EVALUATIONS)
    assert np.all(np.isfinite(fp.x))
    assert "evaluation limit" in Status.MAX_EVALUATIONS.explain()


def test_objective_does_not_retrace_when_theta_changes():
    product_data, agent_data, _ = blpjax.simulate(blpjax.SimulationConfig(markets=10, agents=20))
    problem = blpjax.Problem(
        product_data, ("1", "x", "prices"), ("1", "prices"), agent_data=agent_data, demographics=("income",)
    )
    r1 = problem.solve(np.diag([1.0, 0.5]), [[0.0], [0.3]], method="1s")
    misses = r1.engine.cache_size("value_and_grad"), r1.engine.cache_size("statistics")
    r2 = problem.solve(np.diag([0.7, 0.2]), [[0.0], [0.1]], method="1s")
    assert (r2.engine.cache_size("value_and_grad"), r2.engine.cache_size("statistics")) == misses
    assert r1.converged


def test_statistics_program_compiled_once_in_the_background(caplog):
    """The step statistics compile in the background while the objective is traced, exactly once
    for a two-step solve, and the estimates equal those of a solve that compiles in order."""
    from blpjax.internal import override

    product_data, agent_data, _ = blpjax.simulate(blpjax.SimulationConfig(markets=7, agents=13, seed=5))
    problem = blpjax.Problem(
        product_data, ("1", "x", "prices"), ("1", "prices"), agent_data=agent_data, demographics=("income",)
    )
    args = (np.diag([1.0, 0.5]), [[0.0], [0.3]])
    with override(overlap_compile=True), jax.log_compiles(True), caplog.at_level("DEBUG"):
        background = problem.solve(*args, method="2s")
    compiles = [
        r.getMessage() for r in caplog.records if "Finished XLA compilation of jit(_statistics_body)" in r.getMessage()
    ]
    assert len(compiles) == 1, compiles
    with override(overlap_compile=False):
        in_order = problem.solve(*args, method="2s")
    assert background.converged
    pd.testing.assert_frame_equal(background.parameters, in_order.parameters)


def test_simulate_and_recover_from_half_the_truth():
    from blpjax import SimulationConfig, simulate

    cfg = SimulationConfig(markets=150, agents=150, seed=3)
    product_data, agent_data, truth = simulate(cfg)
    problem = blpjax.Problem(
        product_data, ("1", "x", "prices"), ("1", "prices"), agent_data=agent_data, demographics=("income",)
    )
    res = problem.solve(truth["sigma"] / 2, [[0.0], [cfg.pi[1] / 2]], method="2s")
    assert res.converged
    est = res.parameters
    true = {
        "sigma[1, 1]": cfg.sigma[0],
        "pi[prices, income]": cfg.pi[1],
        "beta[prices]": cfg.beta[2],
        "beta[x]": cfg.beta[1],
    }
    for label, value in true.items():
        z = (est.loc[label, "estimate"] - value) / est.loc[label, "se"]
        assert abs(z) < 4, (label, est.loc[label].to_dict(), value)


def _nevo():
    pyblp, products, agents = nevo_data()
    pp, bp = nevo_problems(pyblp, products, agents)
    return pyblp, pp, bp, NEVO_SIGMA, NEVO_PI


def test_nevo_objective_and_gradient_match_pyblp_at_starting_values():
    pyblp, pp, bp, sigma, pi = _nevo()
    r = pp.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("return"))
    res = bp.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("bfgs", maxiter=0), throw=False)
    np.testing.assert_allclose(res.objective, float(r.objective), rtol=1e-9)
    np.testing.assert_allclose(res.gradient, np.asarray(r.gradient).ravel(), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res.delta, np.asarray(r.delta).ravel(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        res.parameters["se"],
        np.asarray(r.parameters_se).ravel()
        if False
        else np.r_[
            np.asarray(r.sigma_se)[np.nonzero(sigma)],
            np.asarray(r.pi_se)[np.nonzero(pi)],
            np.asarray(r.beta_se).ravel(),
        ],
        rtol=1e-6,
    )


@pytest.mark.slow
def test_nevo_estimates_match_pyblp():
    pyblp, pp, bp, sigma, pi = _nevo()
    r = pp.solve(sigma, pi, method="1s", optimization=pyblp.Optimization("bfgs", {"gtol": 1e-5}))
    res = bp.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-5))
    np.testing.assert_allclose(res.objective, 4.561514, rtol=1e-6)
    np.testing.assert_allclose(res.objective, float(r.objective), rtol=1e-6)
    theta_py = np.r_[np.asarray(r.sigma)[np.nonzero(sigma)], np.asarray(r.pi)[np.nonzero(pi)]]
    se_py = np.r_[np.asarray(r.sigma_se)[np.nonzero(sigma)], np.asarray(r.pi_se)[np.nonzero(pi)]]
    np.testing.assert_allclose(res.final.theta, theta_py, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.final.se[: res.spec.P], se_py, rtol=1e-5)
    np.testing.assert_allclose(res.beta.values, np.asarray(r.beta).ravel(), rtol=1e-5)
    E = np.asarray(r.compute_elasticities())
    Eb = res.compute_elasticities(layout="stacked")
    ok = np.isfinite(E)
    np.testing.assert_allclose(Eb[ok], E[ok], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("nested", [False, True])
def test_ift_data_tangents_match_unrolled_and_finite_differences(nested):
    """JVP of δ along θ and every data array at once (the closed-form rule without nesting)."""
    market, theta = _toy(nested, seed=2)
    T, J = market.mask.shape
    rng = np.random.default_rng(5)

    def delta_of(sigma, pi, rho, X2, nodes, demographics, weights, log_shares, unrolled=False):
        th = Theta(sigma, pi, rho)
        mk = Market(X2, nodes, demographics, weights, log_shares, market.mask, market.nest_ids)
        if unrolled:
            return jax.vmap(solve_delta_unrolled, in_axes=(None, 0, 0, None))(th, mk, jnp.zeros((T, J)), 3000)
        return _delta(th, mk).x

    primals = (theta.sigma, theta.pi, theta.rho, market.X2, market.nodes, market.demographics, market.weights)
    primals = primals + (market.log_shares,)
    tangents = tuple(jnp.asarray(rng.normal(size=p.shape)) for p in primals)
    tangents = tangents[:-1] + (jnp.where(market.mask, tangents[-1], 0.0),)
    _, t_ift = jax.jit(lambda p, t: jax.jvp(delta_of, p, t))(primals, tangents)
    _, t_unrolled = jax.jit(lambda p, t: jax.jvp(lambda *a: delta_of(*a, unrolled=True), p, t))(primals, tangents)
    f = jax.jit(delta_of)
    eps = 1e-6
    plus = f(*(p + eps * t for p, t in zip(primals, tangents, strict=True)))
    minus = f(*(p - eps * t for p, t in zip(primals, tangents, strict=True)))
    t_fd = (plus - minus) / (2 * eps)
    mask = np.asarray(market.mask)
    np.testing.assert_allclose(np.asarray(t_ift)[mask], np.asarray(t_unrolled)[mask], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(t_ift)[mask], np.asarray(t_fd)[mask], rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(t_ift)[~mask] == 0)
    # reverse mode transposes the same rule
    v = jnp.asarray(rng.normal(size=(T, J)))
    g = jax.jit(jax.grad(lambda p: jnp.sum(v * delta_of(*p))))(primals)
    np.testing.assert_allclose(
        sum(jnp.sum(gi * ti) for gi, ti in zip(g, tangents, strict=True)), jnp.sum(v * t_ift), rtol=1e-10
    )


def test_anderson_and_squarem_reach_the_same_optimum_on_nevo():
    """Anderson acceleration inside estimation: the same optimum as SQUAREM (it used to stop at a wrong one), and
    the default optimiser (BFGS without bounds) reaches PyBLP's optimum of the README's model."""
    _, _, bp, sigma, pi = _nevo()
    squarem = bp.solve(sigma, pi, method="1s")
    anderson = bp.solve(sigma, pi, method="1s", contraction=blpjax.ContractionConfig(method="anderson"))
    assert squarem.converged and anderson.converged
    np.testing.assert_allclose(squarem.objective, 4.561514, rtol=1e-6)  # PyBLP's Nevo tutorial objective
    np.testing.assert_allclose(anderson.objective, squarem.objective, rtol=1e-8)
    np.testing.assert_allclose(anderson.parameters["estimate"], squarem.parameters["estimate"], rtol=1e-5, atol=1e-7)
    assert anderson.contraction_summary["mean_evaluations"] < squarem.contraction_summary["mean_evaluations"]


def test_every_method_converges_from_a_far_warm_start():
    """A warm start far above the solution (as after an optimiser's step to extreme θ) saturates the map: the outside
    share vanishes and g(δ) = δ + log ΣS shifts every δ alike with a constant residual, where extrapolation has no
    direction of descent. SQUAREM used to hit the 5,000-evaluation cap here and Anderson to jump to δ ≈ 7,800 (found
    on Mixtape Exercise 2.5); the stall guard (plain steps after 100 evaluations without progress) and Anderson's
    bounded extrapolation make every method reach the fixed point that plain iteration (a contraction) reaches
    (without the logit start, which would otherwise avoid this start: the next test)."""
    _, _, bp, sigma, pi = _nevo()
    delta0 = np.asarray(bp.objective(sigma, pi).delta0) + 50.0
    solved = {}
    for method in ("simple", "squarem", "anderson", "newton"):
        config = ContractionConfig(method=method, logit_start=False)
        obj = bp.objective(sigma, pi, contraction=config, delta=delta0)
        q, aux = obj.value_and_aux(obj.x0)
        assert np.all(np.asarray(aux.status) == Status.CONVERGED), method
        assert np.isfinite(q)
        solved[method] = np.asarray(aux.delta)
    np.testing.assert_allclose(solved["squarem"], solved["simple"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(solved["anderson"], solved["simple"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(solved["newton"], solved["simple"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["squarem", "anderson", "newton"])
def test_logit_start_replaces_a_far_or_broken_warm_start(method):
    """A solve whose warm start's residual exceeds 0.1 also evaluates the map at the logit δ and goes on from
    whichever start has the smaller residual: from a warm start 50 above the solution (or NaN) each market starts
    from the logit δ instead, and reaches the δ that the far start reaches, in fewer evaluations (the far start alone
    saturates the map: previous test); from a good warm start (the solution itself) it costs nothing: the same
    evaluations as without the logit start."""
    _, _, bp, sigma, pi = _nevo()
    base = bp.objective(sigma, pi)
    delta0 = np.asarray(base.delta0)
    out = {}
    for start, shift in (("far", 50.0), ("nan", np.nan)):
        for logit_start in (False, True):
            config = ContractionConfig(method=method, logit_start=logit_start)
            _, aux = bp.objective(sigma, pi, contraction=config, delta=delta0 + shift).value_and_aux(base.x0)
            out[start, logit_start] = aux
    assert np.all(np.asarray(out["far", True].status) == Status.CONVERGED)
    assert np.all(np.asarray(out["far", False].status) == Status.CONVERGED)
    np.testing.assert_allclose(out["far", True].delta, out["far", False].delta, rtol=0, atol=1e-12)
    evaluations = {k: np.asarray(out["far", k].evaluations) for k in (False, True)}
    assert evaluations[True].mean() < 0.8 * evaluations[False].mean()
    assert evaluations[True].max() < evaluations[False].max()
    assert np.all(np.asarray(out["nan", False].status) == Status.NONFINITE)  # nothing to go on from
    assert np.all(np.asarray(out["nan", True].status) == Status.CONVERGED)
    np.testing.assert_allclose(out["nan", True].delta, out["far", False].delta, rtol=0, atol=1e-12)
    solution = np.asarray(out["far", False].delta)
    near = {}
    for logit_start in (False, True):
        config = ContractionConfig(method=method, logit_start=logit_start)
        _, aux = bp.objective(sigma, pi, contraction=config, delta=solution).value_and_aux(base.x0)
        near[logit_start] = np.asarray(aux.evaluations)
    assert near[False].max() <= 2  # at most a step or two: it is the solution
    np.testing.assert_array_equal(near[True], near[False])


@pytest.mark.parametrize("scale", [1.0, 3.0])  # 3: a hard problem (σ and Π tripled: shares near 0 and 1)
def test_newton_reaches_squarems_delta_and_gradient_and_reports_failure(scale):
    """The safeguarded Newton inner solve (exact ∂log s/∂δ from the evaluation's probabilities): the same δ (1e-12)
    and objective gradient as SQUAREM on every Nevo market, in fewer evaluations; a cap it cannot meet is a status."""
    _, _, bp, sigma, pi = _nevo()
    out = {}
    for method in ("squarem", "newton"):
        obj = bp.objective(sigma * scale, np.asarray(pi) * scale, contraction=ContractionConfig(method=method))
        _, grad, _ = obj.value_and_grad(obj.x0)
        _, aux = obj.value_and_aux(obj.x0)
        assert np.all(np.asarray(aux.status) == Status.CONVERGED), method
        out[method] = (np.asarray(aux.delta), np.asarray(grad), np.asarray(aux.evaluations))
    np.testing.assert_allclose(out["newton"][0], out["squarem"][0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["newton"][1], out["squarem"][1], rtol=1e-7, atol=1e-9)
    assert out["newton"][2].mean() < out["squarem"][2].mean()
    capped = bp.objective(
        sigma * scale, np.asarray(pi) * scale, contraction=ContractionConfig(method="newton", max_evaluations=2)
    )
    _, aux = capped.value_and_aux(capped.x0)
    assert np.all(np.asarray(aux.status) == Status.MAX_EVALUATIONS)
