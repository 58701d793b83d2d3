"""blpjax.jit: compiler options at the top level, plain jit inside other traces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blpjax._config import _cpu_level, jit


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


def test_cpu_level_override(monkeypatch):
    monkeypatch.delenv("BLPJAX_CPU_OPT_LEVEL", raising=False)
    assert _cpu_level(2) == 2
    monkeypatch.setenv("BLPJAX_CPU_OPT_LEVEL", "3")
    assert _cpu_level(2) == 3
    monkeypatch.setenv("BLPJAX_CPU_OPT_LEVEL", "default")
    assert _cpu_level(2) is None
