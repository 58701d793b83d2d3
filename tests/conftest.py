"""Strict JAX for every test: float64 and no implicit rank promotion."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # PyBLP, our oracle, single-threaded
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import jax  # noqa: E402

import blpjax  # noqa: E402,F401  (turns on float64)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """Each test module starts with JAX's compilation caches empty: a full run otherwise holds every
    program compiled by every earlier module (memory grows to gigabytes on a 2-core CI machine)."""
    yield
    jax.clear_caches()


@pytest.fixture
def chunked_tangents():
    """Forward-mode Jacobians (the statistics' moment Jacobian, the Hessian) one tangent at a time, as on large
    problems: the setting is read when a program is traced, so compiled programs are cleared before and after."""
    from blpjax import internal

    jax.clear_caches()
    with internal.override(jacobian_chunk_elements=1):
        yield
    jax.clear_caches()
