"""Closed-form inversions against the definitions and against the contraction (independent paths)."""

import jax
import jax.numpy as jnp
import numpy as np

import blpjax
from blpjax import ContractionConfig, Market, Theta, solve_delta
from blpjax.internal import logit_delta, shares


def test_logit_inversion_is_log_share_ratio_and_inverts_shares():
    s = jnp.array([0.1, 0.2, 0.05, 0.0])
    mask = jnp.array([True, True, True, False])
    d = logit_delta(s, mask)
    np.testing.assert_allclose(d[:3], np.log([0.1, 0.2, 0.05]) - np.log(0.65), rtol=1e-14)
    assert d[3] == 0
    back = shares(d, jnp.zeros((1, 4)), jnp.ones(1), mask)
    np.testing.assert_allclose(back, s, rtol=1e-13)


def test_nested_inversion_matches_contraction_with_one_agent():
    # nested logit = RCNL with one agent and μ = 0: the closed form and the contraction must agree
    s = jnp.array([0.1, 0.2, 0.05, 0.15, 0.0])
    mask = jnp.array([True, True, True, True, False])
    nests = jnp.array([0, 0, 1, 1, 0])
    rho = jnp.array([0.4, 0.7])
    closed = logit_delta(s, mask, nests, rho)
    market = Market(
        jnp.zeros((5, 1)),
        jnp.zeros((1, 1)),
        jnp.zeros((1, 0)),
        jnp.ones(1),
        jnp.where(mask, jnp.log(jnp.where(mask, s, 1.0)), 0.0),
        mask,
        nests,
    )
    fp = solve_delta(Theta(jnp.zeros((1, 1)), jnp.zeros((1, 0)), rho), market, jnp.zeros(5), ContractionConfig())
    np.testing.assert_allclose(fp.x, closed, atol=1e-12)
    np.testing.assert_allclose(shares(closed, jnp.zeros((1, 5)), jnp.ones(1), mask, nests, rho), s, rtol=1e-12)


def test_optax_loop_reaches_the_scipy_optimum():
    products, agents, truth = blpjax.simulate(blpjax.SimulationConfig(markets=40, agents=50, seed=1))
    problem = blpjax.Problem(
        products, ("1", "x", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",)
    )
    start = (truth["sigma"], [[0.0], [0.4]])
    scipy_res = problem.solve(*start, method="1s", optimizer=blpjax.ScipyOptimizer("l-bfgs-b", gtol=1e-10))
    optax_res = problem.solve(*start, method="1s", optimizer=blpjax.OptaxOptimizer(max_steps=300, gtol=1e-8))
    assert optax_res.converged
    np.testing.assert_allclose(optax_res.final.theta, scipy_res.final.theta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(optax_res.objective, scipy_res.objective, rtol=1e-8)
    assert jax.config.read("jax_enable_x64")
