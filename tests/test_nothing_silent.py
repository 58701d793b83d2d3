"""Nothing silent: bad input fails before numerics, and a failed estimation is never reported as a success."""

import jax.numpy as jnp
import numpy as np
import pytest

import blpjax
from blpjax import BLPDataError, BLPDataWarning, BLPEstimationError, BLPSpecificationError


@pytest.fixture(scope="module")
def data():
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=8, agents=30, products=(3, 5)))
    return products, agents


@pytest.fixture(scope="module")
def rc_problem(data):
    products, agents = data
    return blpjax.Problem(products, ("1", "x", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",))


SIGMA, PI = np.diag([1.0, 0.3]), [[0.0], [0.4]]


# --- agent weights ----------------------------------------------------------------------------------------------
def _problem_with_weights(data, weights):
    products, agents = data
    agents = agents.assign(weights=weights)
    return blpjax.Problem(products, ("1", "prices"), ("1", "prices"), agent_data=agents)


def test_negative_agent_weights_are_refused(data):
    weights = data[1].weights.to_numpy().copy()
    weights[3] = -weights[3]
    with pytest.raises(BLPDataError, match=r"negative weights in market\(s\) \[0\]"):
        _problem_with_weights(data, weights)


def test_all_zero_agent_weights_in_a_market_are_refused(data):
    weights = np.where(data[1].market_ids == 5, 0.0, data[1].weights)
    with pytest.raises(BLPDataError, match=r"sums to 0 \(≤ 0\) in market\(s\) \[5\]"):
        _problem_with_weights(data, weights)


def test_agent_weights_not_summing_to_one_warn(data):
    weights = np.where(data[1].market_ids == 2, 2 * data[1].weights, data[1].weights)
    with pytest.warns(BLPDataWarning, match=r"differs from 1 .* in \[2\]"):
        _problem_with_weights(data, weights)


def test_sparse_grid_weights_may_be_negative(data):
    """Quadrature rules with negative weights that sum to one (sparse grids) are legitimate."""
    products, _ = data
    problem = blpjax.Problem(products, ("1", "prices"), ("1", "prices"), integration=blpjax.Integration("grid", 4))
    assert np.any(np.asarray(problem.agents.weights) < 0)


def test_subnormal_shares_are_refused(data):
    products = data[0].copy()
    products.loc[3, "shares"] = 1e-310
    with pytest.raises(BLPDataError, match="subnormal"):
        blpjax.Problem(products, ("1", "prices"))


# --- weighting matrices -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda M: np.where(np.eye(M) == 1, np.nan, 0.0) + np.eye(M), "NaN or infinite"),
        (lambda M: np.eye(M) + np.triu(np.ones((M, M)), 1), "not symmetric"),
        (lambda M: -np.eye(M), "not positive definite"),
        (lambda M: np.eye(M + 1), r"must be \d+×\d+"),
    ],
    ids=["nan", "asymmetric", "negative-definite", "shape"],
)
def test_bad_weighting_matrices_are_refused(rc_problem, make, match):
    M = rc_problem.setup.M
    with pytest.raises(BLPSpecificationError, match=match):
        rc_problem.solve(SIGMA, PI, W=make(M))


# --- failures are results, loudly ---------------------------------------------------------------------------------
def test_a_non_finite_objective_is_never_a_success(rc_problem):
    """A micro moment whose function divides by zero: every evaluation is non-finite. SciPy used to stop at
    the start and report success (with NaN β); now the estimation fails and says which moment."""
    survey = blpjax.MicroDataset("buyers", 500, lambda m: jnp.ones((m.I, m.J)))
    part = blpjax.MicroPart("E[income]", survey, lambda m: jnp.outer(m.agents["income"], jnp.ones(m.J)))
    broken = [blpjax.MicroMoment("income / 0", 1.0, part, lambda v: v[0] / 0.0)]
    with pytest.raises(BLPEstimationError, match=r"non-finite moments: income / 0") as error:
        rc_problem.solve(SIGMA, PI, method="1s", micro_moments=broken, W=np.eye(rc_problem.setup.M + 1))
    results = error.value.results
    assert not results.converged
    assert "every objective evaluation was non-finite" in results.message
    flagged = rc_problem.solve(
        SIGMA, PI, method="1s", micro_moments=broken, W=np.eye(rc_problem.setup.M + 1), throw=False
    )
    assert not flagged.converged and "income / 0" in flagged.message


def test_all_zero_micro_weights_are_refused(rc_problem):
    survey = blpjax.MicroDataset("nobody", 500, lambda m: jnp.zeros((m.I, m.J)))
    part = blpjax.MicroPart("E[income]", survey, lambda m: jnp.outer(m.agents["income"], jnp.ones(m.J)))
    with pytest.raises(BLPSpecificationError, match="zero in every market"):
        rc_problem.solve(SIGMA, PI, micro_moments=[blpjax.MicroMoment("m", 0.0, part)])


def test_failed_share_inversions_raise_and_name_markets(rc_problem):
    config = blpjax.ContractionConfig(max_evaluations=3)
    with pytest.raises(BLPEstimationError, match=r"share inversion failed in \d+ market\(s\)"):
        rc_problem.solve(SIGMA, PI, method="1s", contraction=config)


# --- options that change the answer change the program or its inputs ------------------------------------------------
def test_bounds_are_respected_on_a_re_solve(rc_problem):
    """Two optax solves of one parameter structure with different bounds: each respects its own."""
    opt = blpjax.OptaxOptimizer(max_steps=200, gtol=1e-6)
    free = rc_problem.solve(SIGMA, PI, method="1s", optimizer=opt, throw=False)
    assert free.sigma[1, 1] > 0.15  # the unbounded optimum lies above the bound used next
    bounds = (np.zeros((2, 2)), np.array([[5.0, 5.0], [5.0, 0.1]]))
    start = np.diag([1.0, 0.05])
    bounded = rc_problem.solve(start, PI, method="1s", optimizer=opt, sigma_bounds=bounds, throw=False)
    assert bounded.sigma[1, 1] == pytest.approx(0.1, abs=1e-12)  # at the bound the optimum lies beyond
    bounded_scipy = rc_problem.solve(start, PI, method="1s", sigma_bounds=bounds, throw=False)
    assert bounded_scipy.sigma[1, 1] == pytest.approx(0.1, abs=1e-12)


def test_tolerances_w_and_methods_each_change_the_answer(rc_problem):
    """Every option that changes the answer reaches the compiled program or its inputs: re-solves of one parameter
    structure in one process, each differing from a baseline in one option, each showing that option's effect."""
    base = rc_problem.solve(SIGMA, PI, method="1s")
    loose = rc_problem.solve(SIGMA, PI, method="1s", contraction=blpjax.ContractionConfig(tol=1e-9))
    assert loose.contraction_summary["mean_evaluations"] < base.contraction_summary["mean_evaluations"]
    coarse = rc_problem.solve(SIGMA, PI, method="1s", optimizer=blpjax.ScipyOptimizer(gtol=1e-1), throw=False)
    assert coarse.final.optimizer.iterations < base.final.optimizer.iterations
    W = np.diag(np.linspace(1.0, 3.0, np.asarray(base.W).shape[0]))
    weighted = rc_problem.solve(SIGMA, PI, method="1s", W=W)
    np.testing.assert_allclose(weighted.W, W)
    assert abs(weighted.objective - base.objective) > 1e-6 * abs(base.objective)
    two = rc_problem.solve(SIGMA, PI, method="2s")
    assert len(two.steps) == 2
    np.testing.assert_allclose(two.steps[1].W, base.updated_W, rtol=1e-8)
    simple = rc_problem.solve(SIGMA, PI, method="1s", contraction=blpjax.ContractionConfig(method="simple"))
    assert simple.contraction_summary["mean_evaluations"] > base.contraction_summary["mean_evaluations"]
    np.testing.assert_allclose(simple.objective, base.objective, rtol=1e-6)


# --- progress output --------------------------------------------------------------------------------------------
def test_verbose_prints_one_line_per_outer_iteration(rc_problem, capsys):
    """One progress line per optimiser iteration with the objective, gradient, step and contraction columns (not θ),
    and a closing line per GMM step; the last line's objective is the estimate's."""
    opt = blpjax.ScipyOptimizer(verbose=True)
    results = rc_problem.solve(sigma=SIGMA, pi=PI, optimizer=opt, method="1s")
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if "|proj grad|" in line)
    assert out[header - 2] == "GMM step 1 of 1"
    rows = [line.split() for line in out[header + 1 :] if line.strip()[:1].isdigit()]
    assert len(rows) == results.final.optimizer.iterations  # one line per iteration
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))
    objectives = [float(r[2]) for r in rows]
    assert objectives[-1] == pytest.approx(results.objective, rel=1e-8)
    assert all(int(r[5]) > 0 and int(r[6]) <= int(r[5]) and r[7] == "0" for r in rows)  # contraction columns
    assert out[-1].startswith("  step 1: objective")


def test_verbose_optax_prints_each_update(rc_problem, capsys):
    opt = blpjax.OptaxOptimizer(max_steps=5, verbose=True)
    rc_problem.solve(sigma=SIGMA, pi=PI, optimizer=opt, method="1s", throw=False)
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 5


def test_an_unfinished_trust_constr_run_is_reported_not_a_crash(rc_problem):
    """trust-constr's ``jac`` holds the constraints' Jacobians: a run stopped by maxiter is read from ``grad``."""
    opt = blpjax.ScipyOptimizer("trust-constr", maxiter=2)
    results = rc_problem.solve(SIGMA, PI, method="1s", optimizer=opt, throw=False)
    assert not results.converged and "maximum number" in results.message.lower()
