"""Every layout equals padded: one engine behind buckets, market chunks, devices and vmapped replications.

Models (tests/layout_problems.py): demand only, + a supply side with log costs, + micro moments (a
first-choice survey of half the markets and a second-choice survey), + both, and RCNL. At a fixed θ,
every layout gives the padded path's objective, gradient, standard errors, micro values, δ and
statuses; estimating on a layout gives the padded estimates. Devices run in a subprocess with 8 host
devices; replications are vmapped over stacked engines.
"""

import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import blpjax
from blpjax.internal import Concentration, StatisticsOptions, plan_buckets, predicted_start, stack_problems

sys.path.insert(0, os.path.dirname(__file__))
import layout_problems as lp  # noqa: E402

LAYOUTS = {
    "buckets=2": dict(buckets=2),
    "market_batch_size=3": dict(market_batch_size=3),
    "both": dict(buckets=2, market_batch_size=3),
}
FAST = {("demand", "both"), ("both", "both"), ("nested", "both"), ("formulas", "both"), ("both", "market_batch_size=3")}
#: every model on buckets and chunks together, and the model with everything on each alone (a model-specific bug
#: on one layout shows on the combined one too); BLPJAX_TEST_FULL_GRID=1 runs every model on every layout (2.5 minutes
#: more on 2 cores, over the suite's budget)
GRID = (
    [(m, name) for m in lp.MODELS for name in LAYOUTS]
    if os.environ.get("BLPJAX_TEST_FULL_GRID") == "1"
    else [(m, "both") for m in lp.MODELS] + [("both", "buckets=2"), ("both", "market_batch_size=3")]
)


def at_fixed_theta(model: str, seed: int = 3, **layout) -> dict:
    """Objective, gradient, SEs, micro values, δ and statuses at the starting values, identity-like W."""
    problem, start, moments = lp.problem(model, seed=seed, **layout)
    micro = None if moments is None else problem.build_micro(moments)[0]
    spec = problem.parameter_spec(**start)
    engine = problem.engine(spec, blpjax.ContractionConfig(), micro=micro)
    MW = problem.setup.M + (0 if micro is None else micro.MM)
    conc = engine.concentration(np.eye(MW))
    x = jnp.asarray(spec.x0)
    q, g, ev, _ = engine.value_and_grad(x, problem.logit_delta(), conc)
    stats = engine.statistics(x, ev.delta, conc, StatisticsOptions())
    out = dict(q=q, gradient=g, se=stats.se, delta=ev.delta, status=ev.status, beta=stats.beta)
    if ev.delta_jacobian is not None:  # demand only (forward-mode gradient): every layout gives it
        out["delta_jacobian"] = ev.delta_jacobian
    if micro is not None:
        out["micro_values"] = stats.micro_values
    if stats.costs is not None:
        out["costs"] = stats.costs
    return {k: np.asarray(v) for k, v in out.items()}


def assert_same(got: dict, expected: dict, what: str, rtol=1e-8):
    assert got.keys() == expected.keys(), what
    for k in expected:
        if k == "status":
            np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{what}: {k}")
            assert not expected[k].any(), f"{what}: a failed inversion makes the comparison moot"
        else:
            scale = np.abs(expected[k]).max()
            np.testing.assert_allclose(got[k], expected[k], rtol=rtol, atol=1e-12 * scale, err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def padded():
    cache = {}

    def get(model):
        if model not in cache:
            cache[model] = at_fixed_theta(model)
        return cache[model]

    return get


@pytest.mark.parametrize(
    "model, layout",
    [pytest.param(m, name, marks=() if (m, name) in FAST else pytest.mark.slow) for m, name in GRID],
)
def test_every_layout_equals_padded_at_fixed_theta(padded, model, layout):
    assert_same(at_fixed_theta(model, **LAYOUTS[layout]), padded(model), f"{model} on {layout}")


def test_statistics_in_tangent_chunks_equal_all_at_once(padded, request):
    """Large problems form the statistics' moment Jacobian a few tangents at a time, and take its by-products (the
    sums, costs, micro values) from the chunks' primal pass: the same numbers as all at once, with a supply side and
    micro moments."""
    expected = padded("both")  # all tangents at once
    request.getfixturevalue("chunked_tangents")
    assert_same(at_fixed_theta("both"), expected, "one tangent at a time")


@pytest.mark.parametrize("model", ["demand", "nested", "both"])
def test_delta_jacobian_equals_central_differences_of_solved_delta(model):
    """The Evaluation's dδ/dx (the forward-mode gradient's by-product, demand only: with and without nesting) against
    central differences of δ solved to 1e-14 at x ± h; the warm start predicted from it (``predicted_start``) is
    second-order accurate: at a step of 1e-3 its error is a hundred times smaller than the unpredicted δ's. With a
    supply side and micro moments the gradient is reverse mode and there is no dδ/dx (None), and the padded
    gradient is checked against central differences of q."""
    problem, start, moments = lp.problem(model)
    micro = None if moments is None else problem.build_micro(moments)[0]
    spec = problem.parameter_spec(**start)
    engine = problem.engine(spec, blpjax.ContractionConfig(), micro=micro)
    conc = engine.concentration(np.eye(problem.setup.M + (0 if micro is None else micro.MM)))
    x = jnp.asarray(spec.x0)
    q, g, ev, _ = engine.value_and_grad(x, problem.logit_delta(), conc)
    h = 1e-5
    if model == "both":
        assert ev.delta_jacobian is None
        value = lambda y: float(engine.value(y, ev.delta, conc)[0])  # noqa: E731
        fd = [(value(x.at[k].add(h)) - value(x.at[k].add(-h))) / (2 * h) for k in range(x.shape[0])]
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())
        return
    assert ev.delta_jacobian.shape == ev.delta.shape + x.shape
    value = lambda y: float(engine.value(y, ev.delta, conc)[0])  # noqa: E731
    fd = [(value(x.at[k].add(h)) - value(x.at[k].add(-h))) / (2 * h) for k in range(x.shape[0])]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())  # the forward-mode gradient

    def solved(y):
        _, (e, _) = engine.value(y, ev.delta, conc)
        assert not np.asarray(e.status).any()
        return np.asarray(e.delta)

    fd = np.stack([(solved(x.at[k].add(h)) - solved(x.at[k].add(-h))) / (2 * h) for k in range(x.shape[0])], axis=-1)
    np.testing.assert_allclose(ev.delta_jacobian, fd, rtol=1e-6, atol=1e-7 * np.abs(fd).max())
    step = 1e-3 * np.where(np.arange(x.shape[0]) % 2 == 0, 1.0, -1.0)
    truth = solved(x + step)
    predicted = np.asarray(predicted_start(ev.delta, ev.delta_jacobian, x + step, x))
    plain_error, predicted_error = np.abs(np.asarray(ev.delta) - truth).max(), np.abs(predicted - truth).max()
    assert predicted_error < plain_error / 100, (predicted_error, plain_error)


@pytest.mark.parametrize(
    "model",
    lp.MODELS
    if os.environ.get("BLPJAX_TEST_FULL_GRID") == "1"
    else ["both", pytest.param("nested", marks=pytest.mark.slow)],
)
def test_vmapped_replications_equal_a_loop_at_fixed_theta(model):
    """R = 3 problems stacked on a replication axis: one vmapped evaluation ≡ each problem's own."""
    problems, moments, shared = [], [], None  # one list of MicroMoment for every replication (same functions)
    for seed in (3, 4, 5):
        problem, start, m = lp.problem(model, seed=seed, fixed=True)
        shared = m if shared is None else shared
        problems.append(problem)
        moments.append(None if m is None else problem.build_micro(shared)[0])
    spec = problems[0].parameter_spec(**start)
    data = stack_problems(problems, spec, micro=None if moments[0] is None else moments)
    MW = problems[0].setup.M + (0 if moments[0] is None else moments[0].MM)
    concs = [Concentration.build_host(p.setup.ZX_all(host=True), np.eye(MW)) for p in problems]
    conc = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *concs)

    def evaluate(engine, x, delta0, conc):
        q, g, ev, _ = engine.value_and_grad(x, delta0, conc)
        stats = engine.statistics(x, ev.delta, conc, StatisticsOptions())
        return q, g, ev.delta, stats.se, stats.micro_values

    vmapped = jax.jit(jax.vmap(evaluate))(data.engine, data.x0, data.delta0, conc)
    for r, problem in enumerate(problems):
        engine = problem.engine(spec, blpjax.ContractionConfig(), micro=moments[r])
        alone = evaluate(engine, jnp.asarray(spec.x0), problem.logit_delta(), concs[r])
        for got, expected in zip(vmapped, alone, strict=True):
            if expected is not None:
                np.testing.assert_allclose(got[r], expected, rtol=1e-8, atol=1e-12 * np.abs(expected).max())


def estimates(results) -> np.ndarray:
    return np.r_[results.parameters["estimate"].to_numpy(), results.parameters["se"].to_numpy(), results.objective]


@pytest.mark.parametrize("layout", list(LAYOUTS) if os.environ.get("BLPJAX_TEST_FULL_GRID") == "1" else ["both"])
def test_estimating_on_a_layout_gives_the_padded_estimates(layout):
    """Supply side and micro moments, two-step GMM with the initial update, BFGS: the same estimates, costs and
    post-estimation (merger prices with their delta-method SEs)."""
    optimizer = blpjax.ScipyOptimizer("bfgs", gtol=1e-9)
    problem, start, moments = lp.problem("both")
    reference = problem.solve(**start, micro_moments=moments, optimizer=optimizer)
    problem.scale = blpjax.ScaleOut(**LAYOUTS[layout])
    results = problem.solve(**start, micro_moments=moments, optimizer=optimizer)
    np.testing.assert_allclose(estimates(results), estimates(reference), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(results.costs, reference.costs, rtol=1e-6)
    # after estimation: costs from the first-order conditions (another implementation than the supply side's) and a
    # merger's prices with delta-method SEs
    np.testing.assert_allclose(results.compute_costs(), results.costs, rtol=1e-9)
    firms = problem.product_data.firm_ids
    merged = firms.replace(firms.iloc[1], firms.iloc[0])
    np.testing.assert_allclose(
        results.compute_prices(firm_ids=merged, se=True), reference.compute_prices(firm_ids=merged, se=True), rtol=1e-5
    )


def test_monte_carlo_with_a_supply_side_and_micro_moments_equals_problem_solve():
    """The vmapped GMM driver with a supply side and micro moments (initial update): each replication's
    estimates equal Problem.solve with the same optax loop."""
    problems, start = [], None
    for seed in (3, 4):
        problem, start, moments = lp.problem("both", seed=seed, fixed=True)
        problems.append(problem)
    optimizer = blpjax.OptaxOptimizer(max_steps=300, gtol=1e-8)
    mc = blpjax.MonteCarlo.from_problems(
        problems, start["sigma"], start["pi"], method="1s", micro_moments=moments, optimizer=optimizer, batch_size=2
    )
    assert list(mc.labels[-2:]) == ["gamma[1]", "gamma[x]"] and mc.micro_labels == [m.name for m in moments]
    for r, problem in enumerate(problems):
        res = problem.solve(**start, method="1s", micro_moments=moments, optimizer=optimizer, throw=False)
        assert mc.converged[r] == res.converged
        np.testing.assert_allclose(mc.estimates.iloc[r], res.parameters["estimate"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(mc.standard_errors.iloc[r], res.parameters["se"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(mc.final.micro_values[r], res.micro_values["estimated"], rtol=1e-6)


_DEVICES = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, os.environ["BLPJAX_TESTS"])
    import jax, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import blpjax
    from test_layouts import at_fixed_theta, estimates
    import layout_problems as lp

    assert jax.device_count() == 8
    out = {}
    for model in json.loads(os.environ["MODELS"]):
        for name, layout in (("devices=8", dict(devices=8)), ("devices=3, batch=2", dict(devices=3, market_batch_size=2))):
            out[f"{model} on {name}"] = {k: v.tolist() for k, v in at_fixed_theta(model, **layout).items()}
    problem, start, moments = lp.problem("both", devices=8)
    results = problem.solve(**start, micro_moments=moments, optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-9))
    out["estimates"] = estimates(results).tolist()
    print("RESULT" + json.dumps(out))
    """
)


def test_devices_equal_padded_in_a_subprocess_with_8_host_devices(padded):
    models = ["both"]  # the model with every piece but nesting (RCNL is checked on buckets and chunks)
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        BLPJAX_TESTS=os.path.dirname(__file__),
        MODELS=json.dumps(models),
    )
    proc = subprocess.run([sys.executable, "-c", _DEVICES], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for model in models:
        for name in ("devices=8", "devices=3, batch=2"):
            got = {k: np.asarray(v) for k, v in out[f"{model} on {name}"].items()}
            assert_same(got, padded(model), f"{model} on {name}")
    problem, start, moments = lp.problem("both")
    reference = problem.solve(**start, micro_moments=moments, optimizer=blpjax.ScipyOptimizer("bfgs", gtol=1e-9))
    np.testing.assert_allclose(out["estimates"], estimates(reference), rtol=1e-6, atol=1e-9)


def test_layout_options_are_checked():
    n = jax.device_count()
    with pytest.raises(blpjax.BLPSpecificationError, match="JAX sees"):
        blpjax.ScaleOut(devices=n + 1)
    with pytest.raises(blpjax.BLPSpecificationError, match="devices and buckets together are not supported"):
        blpjax.ScaleOut(devices=1, buckets=2)
    for bad in (dict(buckets=0), dict(buckets="many"), dict(market_batch_size=0), dict(devices="gpu")):
        with pytest.raises(blpjax.BLPSpecificationError):
            blpjax.ScaleOut(**bad)
    assert blpjax.ScaleOut().plain and blpjax.ScaleOut(devices=jax.devices()[:1]).path() == "sharded"


def _brute_force_work(J_t, I_t, k):
    """Least Σ_b T_b J_b (I_b + J_b) over every split of the sorted size classes into ≤ k groups."""
    sizes, counts = np.unique(np.stack([J_t, I_t], 1), axis=0, return_counts=True)
    C, best = len(sizes), np.inf
    for n_cuts in range(min(k, C)):
        for cuts in itertools.combinations(range(1, C), n_cuts):
            edges = (0, *cuts, C)
            work = sum(
                counts[a:b].sum() * sizes[a:b, 0].max() * (sizes[a:b, 1].max() + sizes[a:b, 0].max())
                for a, b in itertools.pairwise(edges)
            )
            best = min(best, work)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_bucket_plan_is_a_partition_and_optimal(seed):
    rng = np.random.default_rng(seed)
    T = 40
    J_t = rng.integers(2, 60, T) ** (1 + seed % 2)
    I_t = rng.choice([50, 200, 1000], T)
    for k in (1, 2, 3):
        plan = plan_buckets(J_t, I_t, max_buckets=k, tol=0.0)
        members = np.sort(np.concatenate(plan.markets))
        np.testing.assert_array_equal(members, np.arange(T))
        assert len(plan.markets) <= k
        for idx, Jb, Ib in zip(plan.markets, plan.J, plan.I, strict=True):
            assert Jb == J_t[idx].max() and Ib == I_t[idx].max()
        work = sum(len(m) * J * (I + J) for m, J, I in zip(plan.markets, plan.J, plan.I, strict=True))
        if k <= 2 or seed < 2:
            assert work == _brute_force_work(J_t, I_t, k)
        e = plan.elements()
        assert e["real_IJ"] <= e["bucketed_IJ"] <= e["padded_IJ"]
