"""Scale out: sharded markets, size buckets and chunked markets all equal the padded single-device path."""

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
from blpjax._buckets import (
    bucket_setup,
    bucketed_deltas_at_solution,
    bucketed_value_and_grad,
    market_sizes,
    plan_buckets,
)
from blpjax._chunking import chunked_value_and_grad
from blpjax._contraction import ContractionConfig
from blpjax._estimate import _value_and_grad
from blpjax._gmm import Concentration, symmetric_inverse
from blpjax._objective import deltas_at_solution, objective
from blpjax._params import build_parameters
from blpjax._sharding import pad_setup

CONFIG = ContractionConfig()


def _problem(model: str, seed=0, T=24):
    """A small simulated problem with very unequal markets (J_t from 2 to 25, I_t of 12 or 40)."""
    cfg = blpjax.SimulationConfig(markets=T, agents=40, products=(2, 25), seed=seed)
    product_data, agent_data, _ = blpjax.simulate(cfg)
    few = (agent_data.market_ids % 3 == 0) & (agent_data.groupby("market_ids").cumcount() >= 12)
    agent_data = agent_data[~few].copy()
    agent_data["weights"] = agent_data.groupby("market_ids").weights.transform(lambda w: w / w.sum())
    if model in ("nested", "logit_nested"):
        product_data = product_data.assign(nesting_ids=product_data.product_ids.str[1:].astype(int) % 2)
    rc = model in ("rc", "nested")
    problem = blpjax.Problem(
        product_data,
        ("1", "x", "prices"),
        ("1", "prices") if rc else (),
        agent_data=agent_data if rc else None,
        demographics=("income",) if rc else (),
    )
    rho = 0.3 if model in ("nested", "logit_nested") else None
    sigma, pi = (np.diag([1.0, 0.5]), [[0.0], [0.3]]) if rc else (None, None)
    spec = build_parameters(problem.nonlinear, problem.demographics, problem.products.n_nests, sigma, pi, rho)
    setup = problem.setup
    M = setup.Z.shape[-1]
    Z = setup.Z.reshape(-1, M)
    conc = Concentration.build(setup.ZX, symmetric_inverse(Z.T @ Z / setup.N), setup.N)
    return problem, spec, setup, conc


def _assert_same(a, b, what, rtol=1e-9, atol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("model", ["rc", "nested", "logit_nested"])
def test_padded_markets_are_inert(model):
    problem, spec, setup, conc = _problem(model, T=7)
    x = jnp.asarray(spec.x0)
    d0 = problem.logit_delta()

    def f(y, s, d):
        return objective(spec.unpack(y), s, conc, d, CONFIG)

    vg = jax.jit(jax.value_and_grad(f, has_aux=True))
    (q, ev), g = vg(x, setup, d0)
    padded = pad_setup(setup, 12)
    (qp, evp), gp = vg(x, padded, jnp.concatenate([d0, jnp.zeros((5, d0.shape[1]))]))
    assert padded.mask.shape[0] == 12 and not np.any(np.asarray(padded.mask[7:]))
    _assert_same(qp, q, "objective")
    _assert_same(gp, g, "gradient")
    _assert_same(evp.delta[:7], ev.delta, "delta")
    assert np.all(np.asarray(evp.delta[7:]) == 0) and np.all(np.asarray(evp.status[7:]) == blpjax.Status.CONVERGED)
    assert np.all(np.isfinite(np.asarray(gp)))


@pytest.mark.slow
def test_padded_markets_leave_the_hessian_unchanged():
    """Second derivatives (forward over reverse through the implicit δ) are unchanged by padding."""
    problem, spec, setup, conc = _problem("rc", T=7)
    x, d0 = jnp.asarray(spec.x0), problem.logit_delta()
    hessian = jax.jit(jax.hessian(lambda y, s, d: objective(spec.unpack(y), s, conc, d, CONFIG)[0]))
    d0_padded = jnp.concatenate([d0, jnp.zeros((5, d0.shape[1]))])
    _assert_same(hessian(x, pad_setup(setup, 12), d0_padded), hessian(x, setup, d0), "hessian", rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
    "model, variants",
    [
        ("rc", ("bucketed", "bucketed in chunks", "chunked")),
        pytest.param("nested", ("bucketed in chunks",), marks=pytest.mark.slow),
        ("logit_nested", ("bucketed", "bucketed in chunks", "chunked")),
    ],
)
def test_bucketed_and_chunked_equal_padded(model, variants):
    problem, spec, setup, conc = _problem(model)
    x, d0 = jnp.asarray(spec.x0), problem.logit_delta()
    q, g, ev = _value_and_grad(spec, CONFIG, x, d0, conc, setup)
    plan = plan_buckets(*market_sizes(setup.mask, setup.market.weights), max_buckets=2)
    assert len(plan.markets) == 2
    bsetup = bucket_setup(setup, plan)
    runs = {
        "bucketed": (bucketed_value_and_grad, bsetup, None),
        "bucketed in chunks": (bucketed_value_and_grad, bsetup, 5),
        "chunked": (chunked_value_and_grad, setup, 7),
    }
    for name in variants:
        fn, s, batch_size = runs[name]
        qb, gb, evb = jax.jit(fn, static_argnums=(0, 1, 6))(spec.unpack, CONFIG, x, d0, conc, s, batch_size)
        _assert_same(qb, q, f"{name}: objective")
        _assert_same(gb, g, f"{name}: gradient")
        _assert_same(evb.delta, ev.delta, f"{name}: delta", atol=1e-12)
        _assert_same(evb.g_delta, ev.g_delta, f"{name}: moments", atol=1e-12)
        np.testing.assert_array_equal(np.asarray(evb.status), np.asarray(ev.status))
    if model == "rc":  # the post-estimation derivative dδ/dθ at the solution
        Gb = jax.jit(jax.jacfwd(lambda y, s, d: bucketed_deltas_at_solution(spec.unpack(y), s, d)))(x, bsetup, ev.delta)
        G = jax.jit(jax.jacfwd(lambda y, s, d: deltas_at_solution(spec.unpack(y), s, d)))(x, setup, ev.delta)
        _assert_same(Gb, G, "dδ/dθ")


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


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    import blpjax
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from blpjax._contraction import ContractionConfig
    from blpjax._estimate import _value_and_grad, estimate
    from blpjax._gmm import Concentration, symmetric_inverse
    from blpjax._optimize import ScipyOptimizer, scipy_minimize
    from blpjax._params import build_parameters
    from blpjax._sharding import market_mesh, pad_products, shard_markets, shard_setup, sharded_objective

    assert jax.device_count() == 8
    product_data, agent_data, truth = blpjax.simulate(
        blpjax.SimulationConfig(markets=21, agents=30, products=(3, 12), seed=4))
    problem = blpjax.Problem(product_data, ("1", "x", "prices"), ("1", "prices"), agent_data=agent_data,
                             demographics=("income",))
    spec = build_parameters(problem.nonlinear, problem.demographics, 0, np.diag([0.5, 0.15]), [[0.0], [0.2]])
    setup, T = problem.setup, problem.T
    M = setup.Z.shape[-1]
    W = symmetric_inverse(setup.Z.reshape(-1, M).T @ setup.Z.reshape(-1, M) / setup.N)
    conc = Concentration.build(setup.ZX, W, setup.N)
    config, x, d0 = ContractionConfig(), jnp.asarray(spec.x0), problem.logit_delta()
    mesh = market_mesh()
    ssetup, sd0 = shard_setup(setup, mesh), shard_markets(d0, mesh)
    out = {"T_sharded": int(ssetup.mask.shape[0]), "spec": str(ssetup.market.nodes.sharding.spec)}

    q, g, ev = _value_and_grad(spec, config, x, d0, conc, setup)      # one device
    qa, ga, eva = _value_and_grad(spec, config, x, sd0, conc, ssetup)  # same program, sharded inputs

    def f(y, s, d):
        return sharded_objective(spec.unpack(y), s, conc, d, config, mesh)

    vg = jax.jit(jax.value_and_grad(f, has_aux=True))
    (qs, evs), gs = vg(x, ssetup, sd0)
    out["single"] = [float(q), np.asarray(g).tolist(), np.asarray(ev.delta).tolist()]
    out["auto"] = [float(qa), np.asarray(ga).tolist(), np.asarray(eva.delta)[:T].tolist()]
    out["shard_map"] = [float(qs), np.asarray(gs).tolist(), np.asarray(evs.delta)[:T].tolist()]
    out["delta_sharding"] = str(evs.delta.sharding.spec)

    # full two-step estimates: unchanged estimate() on sharded inputs, and SciPy on the shard_map objective
    kw = dict(W=W, steps=2, se_type="robust", W_type="robust", optimizer=ScipyOptimizer(), config=config)
    one = estimate(spec, setup, problem.products, delta0=d0, **kw)
    products_p, _ = pad_products(problem.products, problem.agents, ssetup.mask.shape[0])
    auto = estimate(spec, ssetup, products_p, delta0=sd0, **kw)
    res = scipy_minimize(lambda y, d: (lambda r: (r[0][0], r[1], r[0][1]))(vg(y, ssetup, d)), spec.x0, sd0,
                         spec.lower, spec.upper, ScipyOptimizer())
    out["estimate_single"] = [np.asarray(s.theta).tolist() + np.asarray(s.beta).tolist() + np.asarray(s.se).tolist()
                              + [float(s.objective)] for s in one]
    out["estimate_auto"] = [np.asarray(s.theta).tolist() + np.asarray(s.beta).tolist() + np.asarray(s.se).tolist()
                            + [float(s.objective)] for s in auto]
    out["estimate_shard_map_step1"] = np.asarray(res.x).tolist()
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_over_8_devices_equals_single_device():
    """Subprocess with 8 host devices: objective, gradient, δ and a two-step estimate match one device."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["T_sharded"] == 24 and "markets" in out["spec"] and "markets" in out["delta_sharding"]
    q, g, delta = out["single"]
    for path in ("auto", "shard_map"):
        qs, gs, ds = out[path]
        _assert_same(qs, q, f"{path}: objective")
        _assert_same(gs, g, f"{path}: gradient")
        _assert_same(ds, delta, f"{path}: delta", atol=1e-12)
    for step_single, step_auto in zip(out["estimate_single"], out["estimate_auto"], strict=True):
        _assert_same(step_auto, step_single, "two-step estimate (θ, β, SE, q)", rtol=1e-6, atol=1e-8)
    _assert_same(out["estimate_shard_map_step1"], out["estimate_single"][0][:3], "shard_map 1-step θ", rtol=1e-6)
