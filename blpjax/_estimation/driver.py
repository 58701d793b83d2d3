"""The GMM driver: the initial update, the steps, their statistics and the updated W, written once.

:func:`run_steps` runs one- or two-step GMM on an :class:`._estimate.Engine` with an optimiser
callback. The same function serves every caller: :meth:`Problem.solve` runs it eagerly (SciPy on
the host, or the jitted optax loop), and a Monte Carlo study traces it inside ``jax.vmap`` over
replications (optax only, ``host=False``). Each step is one :class:`StepResult`, built by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jaxtyping import Array, Float

from .._base import config
from .._base.config import jit
from .._base.errors import BLPNumericalWarning
from .._engine.gmm import Concentration
from .._engine.pieces import Reduced
from .._layouts.layouts import Evaluation
from .optimize import (
    OptaxOptimizer,
    ScipyOptimizer,
    _line_search_failed,
    _Progress,
    optax_minimize,
    scipy_minimize,
)
from .programs import Engine, Statistics, StatisticsOptions, gather


class OptimizerReport(eqx.Module):
    """What the optimiser of a step reported (arrays when traced); ``hessian``: the exact Hessian at the
    estimate when a convergence check computed it (kept for ``results.hessian``)."""

    success: Array | bool
    iterations: Array | int
    evaluations: Array | int
    message: str = eqx.field(static=True, default="")
    hessian: Array | None = None


class StepResult(eqx.Module):
    """Everything one GMM step produced (arrays; labels live in the front end).

    ``statistics`` fields (``beta``, ``se``, ``xi``, ...) and ``evaluation`` fields (``delta``,
    ``evaluations``, ``status``) read through as attributes of the step.
    """

    step: int = eqx.field(static=True)
    theta: Float[Array, " P"]
    objective: Array
    gradient: Float[Array, " P"]
    delta0: Float[Array, "T J"]
    W: Float[Array, "MW MW"]
    evaluation: Evaluation
    reduced: Reduced
    statistics: Statistics
    optimizer: OptimizerReport
    seconds: float = eqx.field(static=True, default=float("nan"))

    def __getattr__(self, name: str):
        # only reached when normal lookup fails: the statistics' and the evaluation's fields
        for part in ("statistics", "evaluation"):
            record = object.__getattribute__(self, part)
            if name in {f.name for f in record.__dataclass_fields__.values()}:
                return getattr(record, name)
        raise AttributeError(f"StepResult has no attribute {name!r}")

    @property
    def cost_errors(self):
        """Nonpositive marginal costs under log costs (None without a supply side)."""
        return None if self.statistics.costs is None else jnp.sum(self.evaluation.aux.nonpositive)

    @property
    def clipped_costs(self):
        return None if self.statistics.costs is None else jnp.sum(self.evaluation.aux.clipped)

    @property
    def optimizer_success(self):
        return self.optimizer.success

    @property
    def optimizer_iterations(self):
        return self.optimizer.iterations

    @property
    def objective_evaluations(self):
        return self.optimizer.evaluations

    @property
    def optimizer_message(self) -> str:
        return self.optimizer.message


def _optax_run(engine: Engine, optimizer: OptaxOptimizer, x, delta0, conc, lower, upper):
    """The optax loop on an engine (pure: traced inside a vmapped Monte Carlo, or jitted alone below)."""
    return optax_minimize(
        lambda y, d: engine.value_and_grad(y, d, conc)[:3],
        lambda y, d: engine.value(y, d, conc)[0],
        x,
        delta0,
        lower,
        upper,
        optimizer,
    )


_optax_program = jit(_optax_run, static_argnums=(1,))


def optimize(engine: Engine, optimizer, x, delta0, conc: Concentration, lower, upper, host: bool):
    """Minimise q over x from ``x`` with the step's W: (x̂, :class:`OptimizerReport`)."""
    if isinstance(optimizer, ScipyOptimizer):
        if not host:
            raise TypeError("SciPy optimisers run on the host: use OptaxOptimizer inside a traced program.")
        res = scipy_minimize(
            lambda y, d: engine.value_and_grad(y, d, conc)[:3],
            x,
            delta0,
            np.asarray(lower),
            np.asarray(upper),
            optimizer,
        )
        return res.x, OptimizerReport(res.success, res.iterations, res.evaluations, res.message)
    if host:
        x, delta0, conc = engine._args(jnp.asarray(x), delta0, conc)
        res = _optax_program(engine, optimizer, x, delta0, conc, jnp.asarray(lower), jnp.asarray(upper))
        return np.asarray(res.x), OptimizerReport(bool(res.success), int(res.iterations), int(res.evaluations), "optax")
    res = _optax_run(engine, optimizer, x, delta0, conc, lower, upper)
    return res.x, OptimizerReport(res.success, res.iterations, res.evaluations, "optax")


def _newton_check(engine, x, delta0, conc, q, gradient, lower, upper, report: OptimizerReport) -> OptimizerReport:
    """Accept a failed line search at a point where no step can lower q beyond its rounding (see
    ``settings.precision_decrement``, 1e-11): the exact Hessian is positive definite on the free parameters and the
    Newton decrement is negligible. Otherwise ``report`` unchanged. The Hessian's program solves δ from the step's
    δ₀, not from the δ solved at x (see :attr:`Results.hessian` for why)."""
    x, g = np.asarray(x, np.float64), np.asarray(gradient, np.float64)
    free = ~(((x <= np.asarray(lower)) & (g > 0)) | ((x >= np.asarray(upper)) & (g < 0)))
    if not np.all(np.isfinite(g)) or not free.any():
        return report
    full = np.asarray(engine.hessian(jnp.asarray(x), delta0, conc))
    report = dataclasses.replace(report, hessian=full)
    H = full[np.ix_(free, free)]
    if not np.all(np.isfinite(H)) or np.linalg.eigvalsh((H + H.T) / 2)[0] <= 0:
        return report
    decrement = 0.5 * float(g[free] @ np.linalg.solve(H, g[free]))
    if decrement > config.settings.precision_decrement * max(1.0, abs(float(q))):
        return report
    return dataclasses.replace(
        report,
        success=True,
        message=(
            f"{report.message} Accepted: the exact Hessian is positive definite and a Newton step would lower the "
            f"objective by {decrement:.2g}, below its numerical precision (the gradient's largest entry "
            f"{np.max(np.abs(g[free])):.2g} reflects curvature, not distance from the optimum)."
        ),
    )


def warn_ill_conditioned(stats: Statistics, step: int) -> None:
    """A :class:`BLPNumericalWarning` for every matrix of the step's statistics inverted near singularity."""
    for name, value in zip(Statistics.CONDITION_NAMES, np.asarray(gather(stats.conditions)), strict=True):
        if value > config.settings.singular_tol:  # NaN (a non-finite matrix) is reported as a failure instead
            warnings.warn(
                f"step {step}: {name} has condition number {value:.3g} > 1/eps: its Moore–Penrose pseudo-inverse is "
                "used (as PyBLP's default). Parameters or moments may not be identified: check for collinear "
                "instruments or parameters the data cannot pin down.",
                BLPNumericalWarning,
                stacklevel=4,
            )


def _concentration(engine: Engine, W, host: bool) -> Concentration:
    return engine.concentration(W, host)


def initial_update(
    engine: Engine, x0, delta0, initial_W, MM: int, se_type: str, W_type: str, host: bool, statistics=None
):
    """The first step's W without a user W: ``initial_W`` (2SLS) with micro moments absent; with ``MM`` micro
    moments (as PyBLP) the inverse of all moments' covariances evaluated at the starting values with ``initial_W``
    on the product block. Returns (W, δ at the starting values, or ``delta0`` without micro moments)."""
    xp = np if host else jnp
    block_diag = scipy.linalg.block_diag if host else jax.scipy.linalg.block_diag
    W = block_diag(xp.asarray(initial_W), xp.zeros((MM, MM)))
    if not MM:
        return W, delta0
    statistics = statistics or (lambda x, delta, conc, options: engine.statistics(xp.asarray(x), delta, conc, options))
    conc = _concentration(engine, W, host)
    _, _, ev, _ = engine.value_and_grad(xp.asarray(x0), delta0, conc)
    stats = statistics(x0, ev.delta, conc, StatisticsOptions(se_type, W_type, False))
    return stats.updated_W, ev.delta


def run_steps(
    engine: Engine,
    x0,
    delta0,
    *,
    W,
    initial_W,
    steps: int,
    se_type: str,
    W_type: str,
    optimizer: ScipyOptimizer | OptaxOptimizer,
    lower,
    upper,
    host: bool = True,
    MM: int = 0,
) -> list[StepResult]:
    """Run ``steps`` GMM steps from ``x0``; each starts from the last one's estimate, δ and updated W.

    Without ``W`` and with ``MM`` micro moments, an initial update (as PyBLP) evaluates everything at
    the starting values with ``initial_W`` (the 2SLS matrix) on the product block and uses the inverse
    of the resulting moment covariances as the first step's W; without micro moments the first W is
    ``initial_W``.

    ``host=True``: eager, with timing and the optimiser's report as Python values (SciPy or optax);
    ``host=False``: pure and traceable (optax only), for ``jax.vmap`` over replications.
    """
    P = np.shape(x0)[0]
    xp = np if host else jnp
    pending = []
    if host and P and config.settings.overlap_compile and isinstance(optimizer, ScipyOptimizer):
        # the statistics program compiles in the background while this thread traces the value-and-gradient
        # program (tracing is Python on one core; XLA compiles without the GIL)
        first = StatisticsOptions(se_type, W_type, se_type == "unadjusted" and not (W is None and MM))
        MW = engine.products.ZX.shape[0] + MM
        conc0 = engine.concentration(np.eye(MW))
        future = engine.precompile_statistics(np.asarray(x0, np.float64), delta0, conc0, first)
        if future is not None:
            pending.append(future)

    def statistics(x, delta, conc, options):
        while pending:
            pending.pop().result()
        return engine.statistics(xp.asarray(x), delta, conc, options)

    try:
        if W is None:
            W, delta0 = initial_update(engine, x0, delta0, initial_W, MM, se_type, W_type, host, statistics)

        def one_step(step: int, x, delta0, W) -> StepResult:
            t0 = time.perf_counter()
            if host and optimizer.verbose:
                print(f"GMM step {step} of {steps}", flush=True)
                if isinstance(optimizer, OptaxOptimizer) and P:
                    print("  " + _Progress.OPTAX_COLUMNS, flush=True)
            conc = _concentration(engine, W, host)
            if P:
                x_hat, report = optimize(engine, optimizer, x, delta0, conc, lower, upper, host)
            else:
                x_hat = x
                report = OptimizerReport(True, 0, 1, "no nonlinear parameters: closed form")
            # evaluated from the step's δ₀ (not the optimiser's last δ): the contraction statistics are those of a
            # cold start at the estimate, comparable to PyBLP's
            q, gradient, ev, reduced = engine.value_and_grad(xp.asarray(x_hat), delta0, conc)
            restarts = optimizer.restarts if isinstance(optimizer, ScipyOptimizer) and P else 0
            while host and not report.success and _line_search_failed(report.message):
                # a failed line search: converged to numerical precision (exact Newton check), or else restart from
                # the point reached with a fresh quasi-Newton approximation while that lowers the objective
                if optimizer.certify:
                    report = _newton_check(engine, x_hat, delta0, conc, q, gradient, lower, upper, report)
                if report.success or restarts == 0:
                    break
                restarts -= 1
                x_new, again = optimize(engine, optimizer, x_hat, delta0, conc, lower, upper, host)
                q_new, g_new, ev_new, red_new = engine.value_and_grad(xp.asarray(x_new), delta0, conc)
                note = f" (restarted from the point reached: {again.message})"
                report = OptimizerReport(
                    again.success,
                    report.iterations + again.iterations,
                    report.evaluations + again.evaluations,
                    report.message + note if not np.isfinite(q_new) or q_new >= q else again.message + note,
                )
                if not np.isfinite(q_new) or q_new >= q:
                    break
                x_hat, q, gradient, ev, reduced = x_new, q_new, g_new, ev_new, red_new
            options = StatisticsOptions(se_type, W_type, se_type == "unadjusted" and step == 1)
            stats = statistics(x_hat, ev.delta, conc, options)
            if host:
                stats = jax.block_until_ready(stats)
                warn_ill_conditioned(stats, step)
                if optimizer.verbose:
                    print(
                        f"  step {step}: objective {float(q):.10g} after {report.iterations} iterations and "
                        f"{report.evaluations} evaluations, {time.perf_counter() - t0:.2f} s: {report.message}",
                        flush=True,
                    )
            return StepResult(
                step=step,
                theta=jnp.asarray(x_hat),
                objective=q,
                gradient=gradient,
                delta0=delta0,
                W=jnp.asarray(W),
                evaluation=ev,
                reduced=reduced,
                statistics=stats,
                optimizer=report,
                seconds=time.perf_counter() - t0 if host else float("nan"),
            )

        x = x0
        if not host and steps > 1 and se_type != "unadjusted":
            # every step runs the same program: trace it once and scan over the steps
            def body(carry, _):
                x_, d0, W_ = carry
                record = one_step(steps, x_, d0, W_)
                return (record.theta, record.delta, record.updated_W), record

            _, records = jax.lax.scan(body, (x, delta0, W), None, length=steps)
            return [
                dataclasses.replace(jax.tree_util.tree_map(lambda a, k=k: a[k], records), step=k + 1)
                for k in range(steps)
            ]
        out = []
        for step in range(1, steps + 1):
            record = one_step(step, x, delta0, W)
            out.append(record)
            x = np.asarray(record.theta) if host else record.theta
            delta0, W = record.delta, record.updated_W
        return out
    finally:
        # a solve that raised before its statistics leaves no compilation running behind it
        for future in pending:
            with contextlib.suppress(Exception):
                future.result()


__all__ = ["OptimizerReport", "StepResult", "initial_update", "optimize", "run_steps"]


class StartsOutcome(eqx.Module):
    """Where each of K optimisations ended (arrays with a leading K axis).

    Attributes:
        x: the optimum of each start.
        objective: q there (from the warm δ of the optimisation's last evaluation).
        gradient: ∂q/∂x there.
        success: the optimiser's criterion met (projected gradient ≤ gtol, q finite).
        inversions_ok: every market's share inversion converged at the optimum.
        iterations, evaluations: the optimiser's counts.
    """

    x: Float[Array, "K P"]
    objective: Float[Array, " K"]
    gradient: Float[Array, "K P"]
    success: Array
    inversions_ok: Array
    iterations: Array
    evaluations: Array


def _minimize_starts(engine: Engine, optimizer: OptaxOptimizer, batch_size: int, X0, delta0, conc, lower, upper):
    def one(x0):
        res = _optax_run(engine, optimizer, x0, delta0, conc, lower, upper)
        q, g, ev, _ = engine.value_and_grad(res.x, res.delta, conc)
        ok = jnp.all(ev.status == 0)
        return StartsOutcome(res.x, q, g, res.success & ok & jnp.isfinite(q), ok, res.iterations, res.evaluations)

    if batch_size >= X0.shape[0]:
        return jax.vmap(one)(X0)
    return jax.lax.map(one, X0, batch_size=batch_size)


_starts_program = jit(_minimize_starts, static_argnums=(1, 2))


def minimize_starts(
    engine: Engine, optimizer: OptaxOptimizer, X0, delta0, conc: Concentration, lower, upper, batch_size
):
    """Minimise one step's q from each row of ``X0`` as one jitted program (``vmap`` over batches of starts;
    every member ends where it would alone, see :func:`optax_minimize`)."""
    x, delta0, conc = engine._args(jnp.asarray(X0[0]), delta0, conc)
    return _starts_program(
        engine, optimizer, int(batch_size), jnp.asarray(X0), delta0, conc, jnp.asarray(lower), jnp.asarray(upper)
    )
