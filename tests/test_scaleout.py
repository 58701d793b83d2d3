"""Scale-out options reach estimation: bucketed, chunked and sharded estimates equal Problem.solve."""

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
from blpjax._buckets import market_sizes
from blpjax._gmm import Concentration, symmetric_inverse
from blpjax._micro import MicroSetup
from blpjax._params import build_parameters
from blpjax._scaleout import ScaleOut, estimate_scaled, make_value_and_grad

SIGMA, PI = np.diag([0.8, 0.3]), [[0.0], [0.3]]


def skewed_problem(T=20, seed=1):
    """Very unequal markets: J_t from 2 to 20, I_t of 10 in a third of the markets and 30 elsewhere."""
    product_data, agent_data, _ = blpjax.simulate(
        blpjax.SimulationConfig(markets=T, agents=30, products=(2, 20), seed=seed)
    )
    few = (agent_data.market_ids % 3 == 0) & (agent_data.groupby("market_ids").cumcount() >= 10)
    agent_data = agent_data[~few].copy()
    agent_data["weights"] = agent_data.groupby("market_ids").weights.transform(lambda w: w / w.sum())
    return blpjax.Problem(
        product_data, ("1", "x", "prices"), ("1", "prices"), agent_data=agent_data, demographics=("income",)
    )


def estimate_kwargs(problem):
    """What Problem.solve passes to _estimate.estimate (two-step, robust, default optimiser)."""
    spec = build_parameters(problem.nonlinear, problem.demographics, 0, SIGMA, PI)
    M = problem.setup.Z.shape[-1]
    Z = problem.setup.Z.reshape(-1, M)
    W = symmetric_inverse(Z.T @ Z / problem.N)
    kwargs = dict(
        W=W,
        steps=2,
        se_type="robust",
        W_type="robust",
        optimizer=blpjax.ScipyOptimizer(),
        config=blpjax.ContractionConfig(),
        delta0=problem.logit_delta(),
        initial_W=W,
    )
    return spec, kwargs


def summary(steps):
    """Per step: θ, β, SEs, objective."""
    return [
        np.concatenate([np.asarray(s.theta), np.asarray(s.beta), np.asarray(s.se), [float(s.objective)]]) for s in steps
    ]


def assert_same_estimates(a, b, what):
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8, err_msg=f"{what}: step {k + 1} (θ, β, SE, q)")


@pytest.fixture(scope="module")
def plain():
    problem = skewed_problem()
    results = problem.solve(SIGMA, PI, method="2s")
    return problem, summary(results.steps), results


def test_problem_is_skewed(plain):
    problem, _, _ = plain
    J_t, I_t = market_sizes(problem.setup.mask, problem.setup.market.weights)
    assert J_t.min() <= 4 and J_t.max() >= 15 and set(I_t) == {10, 30}


@pytest.mark.parametrize(
    "scale",
    [ScaleOut(buckets=2), ScaleOut(market_batch_size=6), ScaleOut(buckets=2, market_batch_size=4)],
    ids=["buckets", "market_batch_size", "buckets+market_batch_size"],
)
def test_scaled_estimate_equals_plain(plain, scale):
    problem, reference, results = plain
    spec, kwargs = estimate_kwargs(problem)
    steps = estimate_scaled(scale, spec, problem.setup, problem.products, **kwargs)
    assert_same_estimates(summary(steps), reference, scale.path())
    np.testing.assert_allclose(np.asarray(steps[-1].delta), np.asarray(results.final.delta), rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(steps[-1].status), np.asarray(results.final.status))
    if scale.buckets is not None:
        vg = make_value_and_grad(scale, spec, kwargs["config"], problem.setup, problem.products)
        assert vg.plan is not None and len(vg.plan.markets) >= 2


def test_value_and_grad_is_jittable_and_padded_layout(plain):
    """The traceable form runs inside jit (what the optax driver needs) with δ on the (T, J) layout."""
    problem, _, _ = plain
    spec, kwargs = estimate_kwargs(problem)
    conc = Concentration.build(problem.setup.ZX, kwargs["W"])
    x, d0 = jnp.asarray(spec.x0), kwargs["delta0"]
    ref = make_value_and_grad(ScaleOut(), spec, kwargs["config"], problem.setup)(x, d0, conc)
    auto = make_value_and_grad(ScaleOut(buckets="auto"), spec, kwargs["config"], problem.setup)
    assert 2 <= len(auto.plan.markets) <= 8 and auto.path == "bucketed"
    vg = make_value_and_grad(ScaleOut(buckets=2), spec, kwargs["config"], problem.setup)
    q, g, ev = jax.jit(vg.traceable)(x, d0, conc)
    assert ev.delta.shape == d0.shape and ev.evaluations.shape == ev.status.shape == (problem.T,)
    np.testing.assert_allclose(float(q), float(ref[0]), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref[1]), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(ev.g_delta), np.asarray(ref[2].g_delta), rtol=1e-10, atol=1e-12)


def test_bad_options_raise_clear_errors():
    n = jax.device_count()
    with pytest.raises(blpjax.BLPSpecificationError, match="JAX sees"):
        ScaleOut(devices=n + 1)
    with pytest.raises(blpjax.BLPSpecificationError, match="devices and buckets together are not supported"):
        ScaleOut(devices=1, buckets=2)
    for bad in (dict(buckets=0), dict(buckets="many"), dict(market_batch_size=0), dict(devices="gpu")):
        with pytest.raises(blpjax.BLPSpecificationError):
            ScaleOut(**bad)
    assert ScaleOut().plain and ScaleOut(devices=jax.devices()[:1]).path() == "sharded"


def test_micro_moments_with_scale_out_raise(plain):
    problem, _, _ = plain
    spec, kwargs = estimate_kwargs(problem)
    micro = MicroSetup((), jnp.zeros(0), (), (), ())
    with pytest.raises(blpjax.BLPSpecificationError, match="micro moments are not supported with buckets=2"):
        make_value_and_grad(ScaleOut(buckets=2), spec, kwargs["config"], problem.setup, micro=micro)
    with pytest.raises(blpjax.BLPSpecificationError, match="market_batch_size=3"):
        estimate_scaled(ScaleOut(market_batch_size=3), spec, problem.setup, problem.products, micro=micro, **kwargs)


_SHARDED = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, os.environ["BLPJAX_TESTS"])
    import jax, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from test_scaleout import estimate_kwargs, skewed_problem, summary
    from blpjax._scaleout import ScaleOut, estimate_scaled

    assert jax.device_count() == 8
    problem = skewed_problem()
    spec, kwargs = estimate_kwargs(problem)
    out = {}
    for name, scale in (("sharded", ScaleOut(devices=8)), ("sharded+chunked", ScaleOut(devices=3, market_batch_size=2))):
        steps = estimate_scaled(scale, spec, problem.setup, problem.products, **kwargs)
        out[name] = [s.tolist() for s in summary(steps)]
        out[name + " delta"] = float(np.abs(np.asarray(steps[-1].delta) - np.asarray(kwargs["delta0"])).max())
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_estimate_over_8_devices_equals_plain(plain):
    """A subprocess with 8 host devices: sharded (and sharded in chunks over 3 of them) ≡ Problem.solve here."""
    _, reference, _ = plain
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        BLPJAX_TESTS=os.path.dirname(__file__),
    )
    proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name in ("sharded", "sharded+chunked"):
        assert_same_estimates([np.asarray(s) for s in out[name]], reference, name)
        assert out[name + " delta"] > 0  # δ came back on the (T, J) layout, not left at δ₀
