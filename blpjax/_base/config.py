"""Floating-point and compiler configuration.

blpjax needs float64: share inversions are solved to 1e-14 and float32 cannot represent that.
Importing :mod:`blpjax` therefore turns on ``jax_enable_x64`` once, at import time, and every
entry point checks that it is still on (a program that turns it off later gets a clear error
rather than silently wrong estimates).

:func:`jit` is ``jax.jit`` with blpjax's XLA options for the backend the program runs on. On CPU
the estimation programs are compiled at LLVM optimisation level 2 instead of XLA's default 3:
measured on the Nevo problem (2 cores), level 2 compiles the value-and-gradient program 25%
faster *and* runs it 20% faster (level 3's aggressive unrolling does not pay on these small
loop bodies); on the Mixtape problem (1,000 agents) it runs at the same speed. Programs that run
once per solve (the statistics of a step, the Hessian) use level 1 and XLA's older loop
emitters (``xla_cpu_use_fusion_emitters=False``): the Nevo statistics program then compiles in
0.40 s instead of 0.70 s and runs as fast (1.4 ms); the same emitters would cost the
value-and-gradient program, which runs ~75 times per solve, 25% of its speed. Other backends get
XLA's defaults. ``BLPJAX_CPU_OPT_LEVEL`` (an integer, or ``default``) overrides both levels, for
experiments.

Three more things shorten the first solve (measured on Nevo, 2 cores, where compilation is most of
it): estimation programs are traced with ``jax.numpy``'s own nested jits inlined
(``jit(inline=True)``, ≈ 40% less tracing of the value-and-gradient program); problems with fewer
than ``settings.quick_elements`` (200,000) market × product × agent elements compile their once-per-solve programs
at level 0 (``.quick``: 0.19 s instead of 0.35 s, milliseconds to run either way); and
``.precompile`` traces a program now and compiles it on a background thread, so the statistics
program compiles while the value-and-gradient program is traced (``BLPJAX_OVERLAP_COMPILE=0``
turns that off).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)


def check_x64() -> None:
    """Raise if float64 has been disabled after blpjax was imported."""
    if not jax.config.read("jax_enable_x64"):
        raise RuntimeError(
            "blpjax needs float64 but jax_enable_x64 is off. blpjax turns it on at import; "
            "something turned it off afterwards. Call jax.config.update('jax_enable_x64', True)."
        )


def enable_compilation_cache(directory: str | None = None, min_compile_seconds: float = 0.1) -> str:
    """Turn on JAX's persistent compilation cache, so a new process reuses compiled programs.

    blpjax never turns this on by itself (it changes JAX's global configuration). Call it once at
    the start of a script; the second process that solves the same problem structure then skips
    most of XLA's compilation.

    On jaxlib 0.9 the CPU backend logs harmless "target machine feature +prefer-no-gather is not
    supported" messages when it loads cached programs (tuning flags, not instruction sets).
    Measured on the Nevo problem: a fresh process's problem + solve went from 4.6 s to 2.5 s.

    Args:
        directory: where compiled programs are stored (default ``~/.cache/blpjax/jax``).
        min_compile_seconds: only programs that took at least this long to compile are stored.

    Returns:
        The cache directory.
    """
    path = directory or os.path.join(os.path.expanduser("~"), ".cache", "blpjax", "jax")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every environment variable and tuning constant of blpjax, read and validated once, at import.

    Attributes:
        cpu_opt_level: ``BLPJAX_CPU_OPT_LEVEL``: an LLVM level for every CPU program, or None
            (``default``) for XLA's choice; unset, blpjax's levels (see the module docstring).
        overlap_compile: ``BLPJAX_OVERLAP_COMPILE`` (default on; ``0`` off): compile a solve's
            statistics program on a background thread while its objective is traced.
        tune_allocator: ``BLPJAX_TUNE_ALLOCATOR`` (default on; ``0`` off): whether
            :func:`blpjax.relaunch_with_tuned_allocator` relaunches.
        quick_elements: problems with fewer market × product × agent elements compile their
            once-per-solve programs at LLVM level 0 (``.quick``).
        jacobian_chunk_elements: above this many tangent × market × product × agent elements, the
            statistics' moment Jacobian is formed a few parameters at a time (bounded memory).
        auto_max_buckets: the most size buckets ``buckets="auto"`` makes.
        weights_tol: agent weights whose sum in a market differs from one by more than this get a
            warning (PyBLP's ``options.weights_tol``).
        precision_decrement: a failed line search is accepted as convergence when the exact Newton
            decrement ½ gᵀH⁻¹g is below this times max(1, |q|) (see :mod:`blpjax._estimation.driver`).
        singular_tol: a matrix inverted with a condition number above this (PyBLP's ``singular_tol``,
            1/eps) gets a :class:`BLPNumericalWarning` naming it (its pseudo-inverse is used, as PyBLP).
    """

    cpu_opt_level: int | None | str = "blpjax"
    overlap_compile: bool = True
    tune_allocator: bool = True
    quick_elements: int = 200_000
    jacobian_chunk_elements: int = 6_000_000
    auto_max_buckets: int = 8
    weights_tol: float = 1e-10
    precision_decrement: float = 1e-11
    singular_tol: float = 1 / np.finfo(np.float64).eps

    @classmethod
    def from_environment(cls, environ=None) -> Settings:
        """The settings of the ``BLPJAX_*`` environment variables (a clear error names a bad value)."""
        environ = os.environ if environ is None else environ

        def switch(name: str) -> bool:
            value = environ.get(name, "1").strip()
            if value not in ("0", "1"):
                raise ValueError(f"{name} must be 0 or 1, not {value!r}.")
            return value == "1"

        level: int | None | str = "blpjax"
        raw = environ.get("BLPJAX_CPU_OPT_LEVEL")
        if raw is not None:
            raw = raw.strip().lower()
            if raw == "default":
                level = None
            elif raw.isdigit() and 0 <= int(raw) <= 3:
                level = int(raw)
            else:
                raise ValueError(f"BLPJAX_CPU_OPT_LEVEL must be 0, 1, 2, 3 or 'default', not {raw!r}.")
        return cls(
            cpu_opt_level=level,
            overlap_compile=switch("BLPJAX_OVERLAP_COMPILE"),
            tune_allocator=switch("BLPJAX_TUNE_ALLOCATOR"),
        )


settings = Settings.from_environment()
"""blpjax's settings (read at import; :func:`override` changes them for a block of code)."""


@contextlib.contextmanager
def override(**changes):
    """Change :data:`settings` inside a ``with`` block (for tests and experiments)."""
    global settings
    previous = settings
    settings = dataclasses.replace(settings, **changes)
    try:
        yield settings
    finally:
        settings = previous


def _cpu_level(default: int) -> int | None:
    level = settings.cpu_opt_level
    return default if level == "blpjax" else level


_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _background() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="blpjax-compile")
    return _executor


def inline_nested(fun):
    """``fun`` traced with nested ``jax.jit`` calls inlined (for the body of a top-level program).

    Most ``jax.numpy`` functions (``where``, ``add``, ``matmul``, ...) are themselves jitted. Traced
    inside another program each call becomes a nested ``jit`` equation that every transformation
    on the way (``vmap``, ``jvp``, linearisation, transposition) re-traces, and XLA then inlines
    anyway. Tracing the body under ``jax.disable_jit()`` makes those calls plain Python functions
    on the outer tracers: the same program, with ≈ 40% less tracing on the Nevo value-and-gradient
    program (0.34 → 0.20 s). ``lax.while_loop`` falls back to its primitive on traced predicates,
    but ``lax.scan``/``fori_loop``/``lax.map`` would run as unrolled Python loops, so use this only
    on bodies without them.
    """

    @functools.wraps(fun)
    def body(*args, **kwargs):
        with jax.disable_jit():
            return fun(*args, **kwargs)

    return body


def jit(fun=None, *, once: bool = False, inline: bool = False, _quick: bool = False, **jit_kwargs):
    """``jax.jit`` with blpjax's compiler options for the default backend (see the module docstring).

    ``once=True`` marks a program that runs once per solve (compile time matters more than run
    time); its ``.quick`` twin compiles at LLVM level 0, for small problems (``settings.quick_elements``).
    ``inline=True`` traces the body with nested jits inlined (:func:`inline_nested`; only for
    bodies without ``scan``-based loops). The backend is read at the first call, so importing
    blpjax never initialises JAX's backends. Inside another traced function the options are
    irrelevant (the outer program is what gets compiled).
    """
    if fun is None:
        return functools.partial(jit, once=once, inline=inline, _quick=_quick, **jit_kwargs)
    original = fun
    if inline:
        fun = inline_nested(fun)
    jitted: dict[str, object] = {}

    def get():
        backend = jax.default_backend()
        j = jitted.get(backend)
        if j is None:
            options = None
            if backend == "cpu":
                level = _cpu_level(0 if _quick else 1 if once else 2)
                if level is not None:
                    options = {"xla_backend_optimization_level": level}
                    if once:  # XLA's older loop emitters: ~40% less compilation, the same run time here
                        options["xla_cpu_use_fusion_emitters"] = False
            j = jitted[backend] = jax.jit(fun, compiler_options=options, **jit_kwargs)
        return j

    plain = jax.jit(fun, **jit_kwargs)  # inside another trace: options belong to the outer program

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs)))
        if traced:
            return plain(*args, **kwargs)
        try:
            return get()(*args, **kwargs)
        except ValueError as error:  # inside a trace with only constant arguments
            if "compiler_options" not in str(error):
                raise
            return plain(*args, **kwargs)

    def precompile(*args, **kwargs) -> concurrent.futures.Future:
        """Trace and lower for these arguments (arrays or ``jax.ShapeDtypeStruct``) now, and compile in a
        background thread; a later call with matching arguments then reuses the program.

        Wait for the returned future before that call (two threads compiling one program would
        both compile it). XLA compiles without the GIL, so this overlaps with Python work on
        the calling thread (tracing another program).
        """
        lowered = get().lower(*args, **kwargs)  # tracing and lowering are Python: done here, under the GIL
        return _background().submit(lowered.compile)

    wrapper.lower = lambda *args, **kwargs: get().lower(*args, **kwargs)
    wrapper.precompile = precompile
    if once and not _quick:
        wrapper.quick = jit(original, once=True, inline=inline, _quick=True, **jit_kwargs)
    wrapper._cache_size = lambda: get()._cache_size()  # for tests that check nothing retraces
    return wrapper
