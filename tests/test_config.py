"""blpjax.jit: compiler options at the top level, plain jit inside other traces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import blpjax
import blpjax.internal as internal
from blpjax.internal import Settings, inline_nested, jit


def _f(x, k):
    return jnp.sum(jnp.exp(x) * k)


@pytest.mark.parametrize("once", [False, True])
def test_jit_matches_jax_jit_at_top_level_and_inside_traces(once):
    f = jit(_f, once=once, static_argnums=(1,))
    x = jnp.linspace(-1.0, 1.0, 7)
    expected = float(np.sum(np.exp(np.asarray(x)) * 3))
    assert np.isclose(float(f(x, 3)), expected, rtol=1e-14)
    # a traced argument: the options belong to the outer program
    assert np.isclose(float(jax.jit(lambda y: f(y, 3))(x)), expected, rtol=1e-14)
    # constant arguments inside a trace
    assert np.isclose(float(jax.jit(lambda y: f(x, 3) + 0 * y)(1.0)), expected, rtol=1e-14)
    assert np.isclose(float(jax.grad(lambda y: f(y, 3))(x)[0]), 3 * np.exp(-1.0), rtol=1e-14)


def test_settings_are_read_from_the_environment_once_and_validated():
    assert Settings.from_environment({}).cpu_opt_level == "blpjax"  # blpjax's per-program levels
    assert Settings.from_environment({"BLPJAX_CPU_OPT_LEVEL": "3"}).cpu_opt_level == 3
    assert Settings.from_environment({"BLPJAX_CPU_OPT_LEVEL": "default"}).cpu_opt_level is None
    assert not Settings.from_environment({"BLPJAX_OVERLAP_COMPILE": "0"}).overlap_compile
    assert not Settings.from_environment({"BLPJAX_TUNE_ALLOCATOR": "0"}).tune_allocator
    for name, bad in (("BLPJAX_CPU_OPT_LEVEL", "fast"), ("BLPJAX_OVERLAP_COMPILE", "yes")):
        with pytest.raises(ValueError, match=name):
            Settings.from_environment({name: bad})
    before = internal.settings.quick_elements
    with internal.override(quick_elements=7):
        assert internal.settings.quick_elements == 7
    assert internal.settings.quick_elements == before


@pytest.mark.parametrize("rho_by_nest", [False, True])
def test_host_unpack_equals_traced_unpack(rho_by_nest):
    """ParameterSpec.unpack(host=True) (results, set-up) fills exactly what the traced unpack fills."""
    sigma = np.array([[0.5, 0.0], [0.2, 0.3]])
    pi = np.array([[0.0], [0.4]])
    rho = np.array([0.3, 0.5]) if rho_by_nest else np.array([0.3])
    products, agents, _ = blpjax.simulate(blpjax.SimulationConfig(markets=4, agents=5, products=(3, 4)))
    products["nesting_ids"] = products.product_ids.str[1:].astype(int) % 2
    problem = blpjax.Problem(
        products, ("1", "prices"), ("1", "prices"), agent_data=agents, demographics=("income",), rho_by_nest=rho_by_nest
    )
    spec = problem.parameter_spec(sigma, pi, rho)
    x = np.random.default_rng(0).normal(size=spec.P)
    host, traced = spec.unpack(x, host=True), jax.jit(spec.unpack)(x)
    for name in ("sigma", "pi", "rho"):
        np.testing.assert_array_equal(np.asarray(getattr(host, name)), np.asarray(getattr(traced, name)))
    assert np.asarray(host.rho).shape == (2,)


def test_host_logit_delta_equals_the_per_market_inversion():
    from blpjax.internal import logit_delta

    rng = np.random.default_rng(1)
    shares = rng.uniform(0.01, 0.1, size=(4, 6))
    mask = np.ones((4, 6), bool)
    mask[1, 4:] = False
    host = logit_delta(shares, mask, xp=np)
    per_market = jax.vmap(logit_delta)(jnp.asarray(shares), jnp.asarray(mask))
    np.testing.assert_allclose(host, np.asarray(per_market), rtol=1e-14, atol=1e-14)
    outside = 1 - np.where(mask, shares, 0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(host, np.where(mask, np.log(shares / outside), 0.0), rtol=1e-13)


def _nested_jit_eqns(jaxpr) -> int:
    """Number of nested jit equations in a jaxpr, counting inside sub-jaxprs."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("pjit", "jit"):
            count += 1
        for sub in jax.core.jaxprs_in_params(eqn.params):
            count += _nested_jit_eqns(sub)
    return count


def _solver(x):
    """jnp functions (themselves jitted) and a while_loop, as in estimation programs."""

    def body(carry):
        y, k = carry
        return jnp.where(y > 0, 0.5 * y, y) + 0.1 * jnp.tanh(x), k + 1

    y, _ = jax.lax.while_loop(lambda c: c[1] < 30, body, (jnp.exp(x), 0))
    return jnp.sum(y**2)


def test_inline_traces_no_nested_jits_and_computes_the_same():
    x = jnp.linspace(-1.0, 1.0, 5)

    def fun(x):  # value and forward-mode gradient (reverse mode cannot cross a while_loop)
        return _solver(x), jax.jacfwd(_solver)(x)

    plain_jaxpr, inlined_jaxpr = jax.make_jaxpr(fun)(x), jax.make_jaxpr(inline_nested(fun))(x)
    assert _nested_jit_eqns(plain_jaxpr.jaxpr) > 0  # jnp.where, jnp.exp, ... as nested jits
    assert _nested_jit_eqns(inlined_jaxpr.jaxpr) == 0
    # the while_loop stayed a loop primitive (not run as Python)
    assert any(e.primitive.name == "while" for e in inlined_jaxpr.jaxpr.eqns)
    (v0, g0), (v1, g1) = jax.jit(fun)(x), jit(fun, inline=True)(x)
    np.testing.assert_array_equal(np.asarray(v0), np.asarray(v1))
    np.testing.assert_allclose(np.asarray(g0), np.asarray(g1), rtol=1e-15, atol=0)


def test_precompile_is_reused_by_the_call(caplog):
    """A program compiled in the background from abstract arguments is not compiled again."""
    f = jit(lambda x, y: jnp.sum(jnp.sin(x) * y), once=True, inline=True)
    x, y = jnp.linspace(0.0, 1.0, 11), jnp.float64(2.0)
    spec = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, y)]
    f.precompile(*spec).result()
    with jax.log_compiles(True), caplog.at_level("DEBUG"):
        value = f(x, y)
    compiled = [r for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
    assert not compiled, [r.getMessage() for r in compiled]
    assert np.isclose(float(value), 2.0 * float(np.sum(np.sin(np.asarray(x)))), rtol=1e-14)


def test_quick_twin_of_a_once_program_computes_the_same():
    """Small problems run their once-per-solve programs from the level-0 twin (`.quick`)."""
    f = jit(_f, once=True, inline=True, static_argnums=(1,))
    assert not hasattr(jit(_f, static_argnums=(1,)), "quick")
    x = jnp.linspace(-1.0, 1.0, 7)
    np.testing.assert_allclose(float(f.quick(x, 3)), float(f(x, 3)), rtol=1e-14)
    assert f.quick._cache_size() == 1  # its own program, not f's


def test_chunked_moment_jacobian_equals_jacfwd():
    """Large problems form the statistics' Jacobian a few tangents at a time; same numbers, and
    still one loop (not unrolled) inside a body traced with nested jits inlined."""
    from blpjax.internal import jacobian_with_aux

    elements = 3 * 4 * 5  # markets × products × agents

    def f(x):
        out = jnp.stack([jnp.sum(jnp.sin(x) * jnp.arange(1.0, 8.0)), jnp.prod(jnp.cos(x[:3])), x[4] ** 3])
        return out, jnp.sum(x)

    x = jnp.linspace(0.1, 0.7, 7)  # 7 parameters: 4 chunks of two tangents, the last one padded
    expected = np.asarray(jax.jacfwd(lambda y: f(y)[0])(x))
    with internal.override(jacobian_chunk_elements=2 * elements):
        for program in (jax.jit, lambda g: jit(g, inline=True)):
            got, aux = program(lambda y: jacobian_with_aux(f, y, elements))(x)
            np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(float(aux), float(jnp.sum(x)), rtol=1e-15)
        jaxpr = jax.make_jaxpr(inline_nested(lambda y: jacobian_with_aux(f, y, elements)))(x)
    assert any(e.primitive.name == "scan" for e in jaxpr.jaxpr.eqns)


def test_auto_contraction_method_picks_by_market_size():
    """The default inner solver: SQUAREM for small markets, Anderson from 4,096 product × agent pairs; an explicit
    method is kept."""
    auto = blpjax.ContractionConfig()
    assert auto.method == "auto"
    assert auto.for_market(24, 20).method == "squarem"  # Nevo
    assert auto.for_market(150, 200).method == "anderson"  # BLP autos
    assert auto.for_market(64, 64).method == "anderson"
    assert auto.for_market(64, 63).method == "squarem"
    assert blpjax.ContractionConfig(method="squarem").for_market(150, 200).method == "squarem"
