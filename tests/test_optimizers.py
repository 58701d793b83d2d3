"""The caller owns the loop: the public objective under the ecosystem's optimisers (a hand-written optax L-BFGS loop,
optimistix, SciPy) on PyBLP's Nevo tutorial, and many starting points as one vmapped program."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from nevo import NEVO_PI, NEVO_SIGMA, nevo_data, nevo_problems

import blpjax

NEVO_OBJECTIVE = 4.561514  # PyBLP's Nevo tutorial, 1-step GMM (also asserted against PyBLP in test_rc.py)
SIGMA, PI = np.diag([1.0, 0.3]), [[0.0], [0.4]]


@pytest.fixture(scope="module")
def nevo_objective():
    pyblp, products, agents = nevo_data()
    _, bp = nevo_problems(pyblp, products, agents)
    return bp.objective(NEVO_SIGMA, NEVO_PI)


@pytest.fixture(scope="module")
def small():
    return small_problem()


def small_problem(**layout):
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=8, agents=30, products=(3, 5)))
    return blpjax.Problem(
        products, ("1", "x", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",), **layout
    )


def test_a_hand_written_optax_lbfgs_loop_reaches_pyblps_nevo_optimum(nevo_objective):
    """The caller's own jitted loop: optax L-BFGS on obj.value_and_grad with the warm start carried as state."""
    obj, solver = nevo_objective, optax.lbfgs()

    @jax.jit
    def run(x0):
        def cond(c):
            return (c[5] < 3000) & (jnp.max(jnp.abs(c[4])) > 1e-6)

        def body(c):
            x, state, opt_state, q, g, k = c
            value_fn = lambda y: obj.value_and_grad(y, state)[0]  # noqa: E731  (line search from the warm start)
            updates, opt_state = solver.update(g, opt_state, x, value=q, grad=g, value_fn=value_fn)
            x = optax.apply_updates(x, updates)
            q, g, state = obj.value_and_grad(x, state)
            return x, state, opt_state, q, g, k + 1

        q, g, state = obj.value_and_grad(x0, obj.init_state())
        return jax.lax.while_loop(cond, body, (x0, state, solver.init(x0), q, g, 0))

    x, state, _, q, g, _ = run(obj.x0)
    assert not np.any(np.asarray(state.status))
    np.testing.assert_allclose(q, NEVO_OBJECTIVE, rtol=1e-6)
    assert np.max(np.abs(g)) < 1e-5
    np.testing.assert_allclose(jax.grad(obj)(x), g, rtol=1e-6, atol=1e-9)  # the pure q(x) agrees at the optimum


def test_optimistix_bfgs_reaches_pyblps_nevo_optimum(nevo_objective):
    """optimistix.minimise on the pure q(x). Its BFGS stops once steps and decreases fall to q's rounding, which on
    Nevo leaves the largest gradient entry at about 2e-5 (π on prices × income is of order 500)."""
    optx = pytest.importorskip("optimistix")
    obj = nevo_objective
    solution = optx.minimise(lambda x, _: obj(x), optx.BFGS(rtol=1e-10, atol=1e-10), obj.x0, max_steps=1000)
    np.testing.assert_allclose(obj(solution.value), NEVO_OBJECTIVE, rtol=1e-6)
    assert np.max(np.abs(jax.grad(obj)(solution.value))) < 1e-4


def test_scipy_through_the_jitted_value_and_grad_matches_solve(small):
    obj = small.objective(SIGMA, PI)
    value_and_grad = jax.jit(obj.value_and_grad)
    state = [obj.init_state()]

    def fun(x):
        q, g, state[0] = value_and_grad(jnp.asarray(x), state[0])
        return float(q), np.asarray(g)

    res = scipy.optimize.minimize(fun, np.asarray(obj.x0), jac=True, method="BFGS", options={"gtol": 1e-10})
    reference = small.solve(SIGMA, PI, method="1s")
    np.testing.assert_allclose(res.fun, reference.objective, rtol=1e-8)
    np.testing.assert_allclose(res.x, reference.final.theta, rtol=1e-5, atol=1e-7)


def test_many_starts_equal_the_same_starts_solved_one_by_one(small):
    """Four starts vmapped in one batch: each ends where it would alone (a done member idles on a zero gradient)."""
    optimizer = blpjax.OptaxOptimizer(gtol=1e-9)
    results = small.solve(
        SIGMA, PI, method="1s", optimizer=optimizer, starts=blpjax.MultiStart(number=4, seed=3, batch_size=4)
    )
    report = results.starts
    table, labels = report.table, small.objective(SIGMA, PI).labels
    assert len(table) == 4 and list(report.optima.columns[3:]) == labels
    obj = small.objective(SIGMA, PI)
    lower, upper = obj.bounds
    starts = table[[f"start {label}" for label in labels]].to_numpy()
    assert np.all((starts >= lower) & (starts <= upper))
    for k, start in enumerate(starts):
        theta = obj.unpack(start)
        alone = small.solve(theta["sigma"], theta["pi"], method="1s", optimizer=optimizer, throw=False)
        np.testing.assert_allclose(table[labels].iloc[k], alone.final.theta, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(table["objective"].iloc[k], alone.objective, rtol=1e-8)
        assert table["converged"].iloc[k] == alone.converged
    # the estimate goes on from the best start's optimum, and the table of optima counts every finite start
    best = table.iloc[report.best]
    assert best["objective"] == table.loc[table["converged"], "objective"].min()
    np.testing.assert_allclose(results.objective, best["objective"], rtol=1e-8)
    assert report.optima["starts"].sum() == np.isfinite(table["objective"]).sum()
    assert np.all(np.diff(report.optima["objective"]) > 0)


def test_many_starts_from_given_points_and_bad_starts(small):
    obj = small.objective(SIGMA, PI)
    points = np.stack([np.asarray(obj.x0), np.asarray(obj.x0) * 1.5])
    results = small.solve(SIGMA, PI, method="1s", starts=points)
    np.testing.assert_allclose(results.starts.table[[f"start {label}" for label in obj.labels]], points)
    with pytest.raises(blpjax.BLPSpecificationError, match="OptaxOptimizer"):
        small.solve(SIGMA, PI, method="1s", starts=2, optimizer=blpjax.ScipyOptimizer())
    with pytest.raises(blpjax.BLPSpecificationError, match=r"\(K, 3\)"):
        small.solve(SIGMA, PI, method="1s", starts=np.ones((2, 5)))
    with pytest.raises(blpjax.BLPSpecificationError, match="outside its bounds"):
        small.solve(SIGMA, PI, method="1s", starts=points, sigma_bounds=(np.zeros((2, 2)), np.diag([1.2, 0.3])))
    with pytest.raises(blpjax.BLPSpecificationError, match="positive integer"):
        small.solve(SIGMA, PI, method="1s", starts=0)


@pytest.mark.parametrize(
    "chunked, batch", [(False, None), (True, None), (False, 3)], ids=["padded", "tangents in chunks", "market chunks"]
)
def test_a_failed_line_search_is_certified_by_the_exact_hessian(small, chunked, batch, request):
    """gtol 1e-13 is below q's rounding: BFGS stops on "precision loss", and the exact Hessian at the point certifies
    it: positive definite, a negligible Newton decrement. That Hessian, kept as ``results.hessian``, and the one
    ``results.hessian`` computes on demand after an uncertified solve, equal central differences of the gradient:
    with the forward tangents all at once or one at a time, and with markets in ``lax.map`` chunks (whose second
    derivatives were 36% off on Nevo when the Hessian's program started from the estimate's own δ)."""
    if chunked:
        request.getfixturevalue("chunked_tangents")
    problem = small
    if batch is not None:
        problem = small_problem(market_batch_size=batch)
    res = problem.solve(SIGMA, PI, method="1s", optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-13))
    assert res.converged
    message = res.steps[0].optimizer_message
    if batch is None:  # (on market chunks, rounding let BFGS meet gtol itself)
        assert "precision loss" in message and "Accepted: the exact Hessian is positive definite" in message
    uncertified = problem.solve(
        SIGMA,
        PI,
        method="1s",
        optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-13, certify=False, restarts=0),
        throw=False,
    )
    obj = problem.objective(SIGMA, PI)  # the same (2SLS) weighting matrix as the one-step estimate
    for result in (res, uncertified):
        x, state = np.asarray(result.final.theta), obj.init_state()

        def gradient(y, state=state):
            return np.asarray(obj.value_and_grad(jnp.asarray(y), state)[1])

        step = 1e-5
        columns = [(gradient(x + step * e) - gradient(x - step * e)) / (2 * step) for e in np.eye(x.size)]
        expected = np.stack(columns, axis=1)
        np.testing.assert_allclose(result.hessian, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def _scipy_minimize(f, x0, gtol):
    """blpjax's SciPy driver on a plain function f(x) -> (q, gradient), every evaluation a successful one."""
    from blpjax.internal import scipy_minimize

    ev = SimpleNamespace(status=np.zeros(1, int), delta=np.zeros(1))
    unbounded = np.full(x0.size, np.inf)
    return scipy_minimize(
        lambda x, _: (*f(np.asarray(x)), ev),
        x0,
        np.zeros(1),
        -unbounded,
        unbounded,
        blpjax.ScipyOptimizer("bfgs", gtol=gtol),
    )


def _noisy_rosenbrock(x):
    """Rosenbrock + 100 with rounding-like noise of ±5e-10 (below ``precision_decrement`` × q = 1e-9), exact gradient."""
    x = np.asarray(x, np.float64)
    noise = 5e-10 * np.sin(1e9 * (x @ np.arange(1, x.size + 1)))
    return 100.0 + scipy.optimize.rosen(x) + noise, scipy.optimize.rosen_der(x)


@pytest.mark.parametrize("x0", [np.full(4, -1.0), np.array([-1.2, 1.0, -0.5, 0.3]), np.zeros(6)])
@pytest.mark.parametrize("gtol", [1e-6, 1e-8])
def test_scipy_stops_where_the_objectives_rounding_ends_progress(x0, gtol):
    """Near the optimum the objective's rounding hides the decreases SciPy's line search looks for: it ends in
    "precision loss" after many fruitless evaluations. The driver stops earlier, at a point meeting the gradient
    criterion whose objective is within rounding of the lowest, or at the lowest point once the line search stalls
    (reported as precision loss, for the exact Newton check); never at a worse point than SciPy's."""
    evaluations = []

    def counted(x):
        evaluations.append(x)
        return _noisy_rosenbrock(x)

    plain = scipy.optimize.minimize(counted, x0, jac=True, method="BFGS", options={"gtol": gtol})
    assert "precision loss" in plain.message  # the setting is the one described
    ours = _scipy_minimize(_noisy_rosenbrock, x0, gtol)
    q, g = _noisy_rosenbrock(ours.x)
    assert ours.evaluations < 0.8 * len(evaluations)
    assert q <= plain.fun + 1e-9
    if ours.success:
        assert np.max(np.abs(g)) <= gtol and "gradient criterion is met" in ours.message
    else:
        assert "precision loss" in ours.message and "stalled" in ours.message


def test_scipy_runs_as_scipy_on_an_exact_objective():
    """Without rounding noise the early stops change nothing: SciPy's own path, evaluations and point."""
    calls = []

    def f(x):
        calls.append(x)
        return scipy.optimize.rosen(x), scipy.optimize.rosen_der(x)

    x0 = np.array([-1.2, 1.0, -0.5, 0.3])
    plain = scipy.optimize.minimize(f, x0, jac=True, method="BFGS", options={"gtol": 1e-6})
    scipy_evaluations = len(calls)
    ours = _scipy_minimize(f, x0, 1e-6)
    assert plain.success and ours.success
    assert ours.evaluations == scipy_evaluations
    np.testing.assert_allclose(ours.x, plain.x, rtol=1e-12, atol=1e-14)
