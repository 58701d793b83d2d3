"""Why an estimate is not converged: in words on the host (:func:`diagnose`), as a code inside traced
programs (:func:`step_status`), checked in the same order (the most basic cause first)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._base.errors import EstimationStatus, Status
from .driver import StepResult


def step_status(step: StepResult) -> jnp.ndarray:
    """The :class:`EstimationStatus` code of a (traced) GMM step: 0 when it converged."""

    def finite(*arrays):
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(jnp.asarray(a))) for a in arrays if a is not None]))

    gamma = () if step.gamma is None else (step.gamma,)
    checks = [
        (jnp.any(step.status != 0), EstimationStatus.INVERSION_FAILED),
        (step.cost_errors is not None and step.cost_errors > 0, EstimationStatus.NONPOSITIVE_COSTS),
        (~finite(step.objective, step.gradient, step.moments), EstimationStatus.NONFINITE_OBJECTIVE),
        (~jnp.asarray(step.optimizer_success), EstimationStatus.OPTIMIZER_FAILED),
        (~finite(step.theta, step.beta, step.se, *gamma), EstimationStatus.NONFINITE_STATISTICS),
    ]
    code = jnp.asarray(EstimationStatus.CONVERGED, jnp.int32)
    for failed, value in reversed(checks):  # the first failing check wins
        code = jnp.where(failed, jnp.int32(value), code)
    return code


def _nonfinite(values, labels, limit: int = 5) -> str:
    values = np.asarray(values, np.float64).ravel()
    bad = [labels[k] if k < len(labels) else str(k) for k in np.flatnonzero(~np.isfinite(values))]
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return ", ".join(map(str, bad[:limit])) + more


def diagnose(step: StepResult, moment_labels, parameter_labels, market_ids) -> tuple[str, ...]:
    """Everything wrong with a GMM step's estimate, in words (empty when it converged).

    Checked in order of cause: failed share inversions (which markets, why), nonpositive marginal
    costs, a non-finite objective, gradient or moments (which), the optimiser's own report, and
    non-finite estimates or standard errors.
    """
    reasons = []
    status = np.asarray(step.status)
    failed = np.flatnonzero(status != 0)
    if failed.size:
        why = sorted({Status(int(s)).explain() for s in status[failed]})
        reasons.append(
            f"the share inversion failed in {failed.size} market(s) {market_ids[failed][:5].tolist()}: "
            + " / ".join(why)
        )
    if step.cost_errors is not None and int(step.cost_errors):
        reasons.append(
            f"{int(step.cost_errors)} marginal cost(s) p − η ≤ 0 under log costs (see contraction_summary['costs_message'])"
        )
    if not np.isfinite(float(step.objective)):
        reasons.append(f"the objective is {float(step.objective)} at the estimate")
    moments = np.asarray(step.moments)
    if not np.all(np.isfinite(moments)):
        reasons.append(f"non-finite moments: {_nonfinite(moments, moment_labels)}")
    gradient = np.asarray(step.gradient)
    if not np.all(np.isfinite(gradient)):
        reasons.append(f"non-finite gradient entries: {_nonfinite(gradient, parameter_labels)}")
    if not step.optimizer_success:
        reasons.append(f"the optimiser did not report convergence: {step.optimizer_message}")
    estimates = np.r_[np.asarray(step.theta), np.asarray(step.beta), np.zeros(0) if step.gamma is None else step.gamma]
    if not np.all(np.isfinite(estimates)):
        reasons.append(f"non-finite estimates: {_nonfinite(estimates, parameter_labels)}")
    elif not np.all(np.isfinite(np.asarray(step.se))):
        reasons.append(f"non-finite standard errors: {_nonfinite(step.se, parameter_labels)}")
    return tuple(reasons)
