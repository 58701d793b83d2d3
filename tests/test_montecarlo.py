"""Monte Carlo as one program: vmapped ≡ replication by replication, recovery of the truth, labels."""

import numpy as np
import pytest

import blpjax
from blpjax import BLPSpecificationError, OptaxOptimizer, SimulationConfig
from blpjax.internal import (
    Concentration,
    StatisticsOptions,
    income_price_covariance,
    results_at_truth,
    simulated_micro_moments,
    simulated_problems,
    stack_problems,
)

CONFIG = SimulationConfig(markets=30, products=(5, 5), agents=20)
R = 10
SIGMA = np.diag(CONFIG.sigma)
PI = np.asarray(CONFIG.pi).reshape(2, 1)


@pytest.fixture(scope="module")
def vmapped():
    """Every replication in one vmap (what an accelerator runs by default)."""
    return blpjax.monte_carlo(CONFIG, R, seed=0, method="2s", batch_size=R)


@pytest.fixture(scope="module")
def problems():
    return simulated_problems(CONFIG, R, seed=0)[0]


@pytest.fixture(scope="module")
def solved(problems):
    """Replication by replication: Problem.solve with the same optax loop (independent of the vmap)."""
    return [problems[r].solve(SIGMA, PI, method="2s", optimizer=OptaxOptimizer()) for r in (0, 1, 2)]


def test_vmapped_equals_replication_by_replication(vmapped, solved):
    """Each replication's estimates and SEs, both GMM steps, equal Problem.solve with the optax loop."""
    for r, res in enumerate(solved):
        assert res.converged
        for step_mc, step in zip(vmapped.steps, res.steps, strict=True):
            np.testing.assert_allclose(step_mc.theta[r], step.theta, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(step_mc.beta[r], step.beta, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(step_mc.se[r], step.se, rtol=1e-7, atol=1e-10)
            np.testing.assert_allclose(step_mc.objective[r], step.objective, rtol=1e-8, atol=1e-12)
            assert int(step_mc.iterations[r]) == step.optimizer_iterations
        np.testing.assert_allclose(vmapped.estimates.iloc[r], res.parameters["estimate"], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(vmapped.standard_errors.iloc[r], res.parameters["se"], rtol=1e-7, atol=1e-10)


def test_one_at_a_time_equals_vmap(vmapped):
    """The CPU default (replications one at a time in the same program) gives the vmapped first step."""
    scanned = blpjax.monte_carlo(CONFIG, R, seed=0, method="1s", batch_size=1)
    first = vmapped.steps[0]
    np.testing.assert_allclose(scanned.final.theta, first.theta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(scanned.final.beta, first.beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(scanned.final.se, first.se, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(scanned.final.iterations), np.asarray(first.iterations))


def test_recovers_the_truth(vmapped):
    """Known truth: every replication converges, no large bias, CIs cover the truth most of the time."""
    assert vmapped.converged.all()
    assert (vmapped.diagnostics["gradient_norm"] <= 1e-8).all()
    table = vmapped.summary()
    n = table["n"].to_numpy()
    assert (n == R).all()
    # bias within 4 Monte Carlo standard errors of zero
    assert (np.abs(table["bias"]) <= 4 * table["sd"] / np.sqrt(n)).all(), table
    # RMSE² = bias² + variance (population variance of the same draws)
    np.testing.assert_allclose(table["rmse"] ** 2, table["bias"] ** 2 + table["sd"] ** 2 * (n - 1) / n, rtol=1e-10)
    # SEs of the right size and 95% intervals covering the truth in most replications
    ratio = table["mean_se"] / table["sd"]
    assert ((ratio > 0.4) & (ratio < 2.5)).all(), table
    assert table["coverage_95"].mean() >= 0.8, table


def test_labels_shapes_and_tables(vmapped, solved):
    labels = list(solved[0].parameters.index)
    assert labels == [
        "sigma[1, 1]",
        "sigma[prices, prices]",
        "pi[prices, income]",
        "beta[1]",
        "beta[x]",
        "beta[prices]",
    ]
    assert vmapped.labels == labels
    assert list(vmapped.estimates.columns) == labels and vmapped.estimates.shape == (R, len(labels))
    assert vmapped.standard_errors.shape == (R, len(labels))
    assert list(vmapped.summary().index) == labels
    assert list(vmapped.truth) == [1.0, 0.3, 0.4, -1.0, 1.0, -2.0]
    assert vmapped.final.contraction_status.shape == (R, CONFIG.markets)
    assert len(vmapped.steps) == 2 and vmapped.diagnostics.shape[0] == R
    # a different truth, by label
    shifted = vmapped.summary(truth={k: v + 1 for k, v in vmapped.truth.items()})
    np.testing.assert_allclose(shifted["bias"], vmapped.summary()["bias"] - 1, atol=1e-12)


def test_plot(vmapped):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fig = vmapped.plot()
    assert sum(ax.get_visible() for ax in fig.axes) == len(vmapped.labels)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_replications_must_have_identical_shapes():
    with pytest.raises(BLPSpecificationError, match="products=\\(J, J\\)"):
        blpjax.monte_carlo(SimulationConfig(markets=5, products=(3, 6), agents=5), 2)
    small = simulated_problems(SimulationConfig(markets=6, products=(4, 4), agents=5), 1)[0]
    large = simulated_problems(SimulationConfig(markets=6, products=(5, 5), agents=5), 1)[0]
    spec = small[0].parameter_spec(SIGMA, PI)
    with pytest.raises(BLPSpecificationError, match="identical shapes"):
        stack_problems(small + large, spec)


# --- micro moments ----------------------------------------------------------------------------------------
MICRO_R = 3


@pytest.fixture(scope="module")
def micro_moments(problems):
    """Per replication: Cov(income, price | inside) with its observed value from a survey simulated at the truth."""
    return simulated_micro_moments(problems[:MICRO_R], SIGMA, PI, moments=[income_price_covariance(300)], seed=7)


def test_micro_vmapped_equals_problem_solve(problems):
    """With a micro moment (observed value differing by replication, initial W update), one vmap ≡ Problem.solve."""
    template = income_price_covariance(300)
    values = [0.1, 0.15, 0.2]  # near the model's values (surveys' values are tested below; they cost a compile)
    micro_moments = [[blpjax.MicroMoment(template.name, v, template.parts, template.function)] for v in values]
    mc = blpjax.MonteCarlo.from_problems(
        problems[:MICRO_R], SIGMA, PI, method="1s", micro_moments=micro_moments, batch_size=MICRO_R
    )
    assert mc.micro_labels == ["Cov(income, prices | j > 0)"]
    np.testing.assert_allclose(mc.micro_observed[:, 0], values)
    for r in range(MICRO_R):
        res = problems[r].solve(SIGMA, PI, method="1s", optimizer=OptaxOptimizer(), micro_moments=micro_moments[r])
        assert res.converged and mc.converged[r]
        (step,) = res.steps
        f = mc.final
        np.testing.assert_allclose(f.W[r], step.W, rtol=1e-8, atol=1e-10)  # the initial update's W
        np.testing.assert_allclose(f.theta[r], step.theta, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(f.beta[r], step.beta, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(f.se[r], step.se, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(f.objective[r], step.objective, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(f.micro_values[r], step.micro_values, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(f.updated_W[r], step.updated_W, rtol=1e-7, atol=1e-9)
        assert int(f.iterations[r]) == step.optimizer_iterations


def test_survey_observed_value_is_noisy_around_the_model_value(problems, micro_moments):
    """The survey's observed value is the model value at the truth up to sampling noise of size ~ sd/√N_d."""
    for r in range(MICRO_R):
        truth = results_at_truth(problems[r], SIGMA, PI)
        micro, _ = problems[r].build_micro(micro_moments[r])
        engine = problems[r].engine(truth.spec, blpjax.ContractionConfig(), micro=micro)
        conc = Concentration.build_host(problems[r].setup.ZX_all(host=True), np.eye(problems[r].setup.M + 1))
        stats = engine.statistics(truth.final.theta, truth.final.delta, conc, StatisticsOptions())
        model = float(stats.micro_values[0])
        se = float(np.sqrt(stats.micro_covariances[0, 0]))  # includes 1/N_d
        assert 0 < abs(micro_moments[r][0].value - model) < 5 * se


def test_micro_moments_need_identical_structure(problems):
    with pytest.raises(BLPSpecificationError, match="micro"):
        blpjax.MonteCarlo.from_problems(
            problems[:2], SIGMA, PI, micro_moments=[[income_price_covariance(100)], [income_price_covariance(200)]]
        )
