"""The public objective: a pure, differentiable, vmappable q(x) on the engine Problem.solve uses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import blpjax

SIGMA, PI = np.diag([1.0, 0.3]), [[0.0], [0.4]]


@pytest.fixture(scope="module")
def problem():
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=8, agents=30, products=(3, 5)))
    return blpjax.Problem(products, ("1", "x", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",))


@pytest.fixture(scope="module")
def obj(problem):
    return problem.objective(SIGMA, PI)


def _central(f, x, h=1e-5):
    x = np.asarray(x, np.float64)
    cols = []
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = h * max(1.0, abs(x[k]))
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * e[k]))
    return np.stack(cols, axis=-1)


def test_grad_equals_the_solver_gradient_and_finite_differences(obj):
    x = obj.x0
    g = np.asarray(jax.grad(obj)(x))
    q, g_solver, state = obj.value_and_grad(x)
    np.testing.assert_allclose(g, g_solver, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(q, obj(x), rtol=1e-12)
    np.testing.assert_allclose(g, _central(obj, x), rtol=1e-6, atol=1e-8)
    assert not np.any(np.asarray(state.status))


def test_hessian_equals_finite_differences_of_the_gradient(obj):
    x = obj.x0
    H = np.asarray(jax.hessian(obj)(x))
    np.testing.assert_allclose(H, H.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(H, _central(jax.grad(obj), x), rtol=1e-5, atol=1e-7)


def test_vmap_over_points_equals_a_loop(obj):
    xs = obj.x0[None, :] * (1 + 0.1 * jnp.arange(8.0))[:, None]
    np.testing.assert_allclose(jax.vmap(obj)(xs), [obj(x) for x in xs], rtol=1e-10)
    np.testing.assert_allclose(jax.jit(obj)(xs[3]), obj(xs[3]), rtol=1e-10)


def test_a_hand_written_optax_loop_reaches_the_solve_optimum(problem, obj):
    """optax's L-BFGS driven by the caller with the warm start carried as state, against Problem.solve (SciPy BFGS)."""
    reference = problem.solve(SIGMA, PI, method="1s")
    solver = optax.lbfgs()
    value_and_grad = jax.jit(obj.value_and_grad)
    update = jax.jit(lambda g, s, x, q: solver.update(g, s, x, value=q, grad=g, value_fn=obj))
    x, state, opt_state = obj.x0, obj.init_state(), solver.init(obj.x0)
    for _ in range(200):
        q, g, state = value_and_grad(x, state)
        if np.max(np.abs(g)) < 1e-8:
            break
        updates, opt_state = update(g, opt_state, x, q)
        x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(q, reference.objective, rtol=1e-8)
    np.testing.assert_allclose(x, reference.final.theta, rtol=1e-5, atol=1e-7)


def test_pack_unpack_and_results_at_x(obj):
    x = obj.x0 * 1.1
    theta = obj.unpack(x)
    np.testing.assert_allclose(obj.pack(theta["sigma"], theta["pi"]), x)
    assert list(theta["x"].index) == obj.labels
    np.testing.assert_allclose(obj.results(x).objective, obj(x), rtol=1e-10)


def test_a_failing_x_gives_inf_and_a_status(obj):
    config_obj = obj.problem.objective(SIGMA, PI, contraction=blpjax.ContractionConfig(max_evaluations=2))
    q, aux = config_obj.value_and_aux(config_obj.x0)
    assert q == np.inf and np.any(np.asarray(aux.status) != 0)
    q, _, state = config_obj.value_and_grad(config_obj.x0)
    assert q == np.inf and np.any(np.asarray(state.status) != 0)
    np.testing.assert_array_equal(state.delta, config_obj.delta0)  # a failed δ never seeds the next call
