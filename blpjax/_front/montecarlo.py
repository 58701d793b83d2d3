"""Monte Carlo studies: R replications estimated by one jitted, vmapped GMM run, and their summaries.

The numerical core is :mod:`._replications` (the GMM driver of :mod:`._driver`, vmapped over
replications). Here is the pandas front: :func:`monte_carlo` (simulate R datasets from a
:class:`SimulationConfig` and estimate them) and :class:`MonteCarlo` (estimates, standard errors
and diagnostics as DataFrames labelled like ``Results.parameters``, ``summary()`` of bias, RMSE and
coverage, and ``plot()`` of the sampling distributions). Supply sides and micro moments (see
:mod:`._studies` for surveys simulated from the truth) run in the same program.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np
import pandas as pd
from scipy.stats import norm

from .._base.config import check_x64
from .._base.errors import BLPSpecificationError, EstimationStatus
from .._estimation.optimize import OptaxOptimizer
from .._estimation.replications import ReplicationStep, estimate_replications, stack_problems
from .._inversion.contraction import ContractionConfig
from .._model.integration import Integration
from .._model.params import ParameterSpec
from .micro_data import MicroDataset, MicroMoment
from .problem import Problem
from .simulate import SimulationConfig
from .studies import SIMULATED_SPECIFICATION, simulated_micro_moments, simulated_problems


class MonteCarlo:
    """Per-replication estimates of a Monte Carlo study, with summaries against the truth.

    Attributes:
        labels: parameter labels, as in ``Results.parameters`` (free Σ, Π, ρ, then β).
        steps: one :class:`ReplicationStep` per GMM step; ``final`` is the last.
        truth: true parameter values in ``labels`` order (or None).
        seconds: wall time of the estimation (compilation included on the first run of a structure).
        micro_labels: names of the micro moments (empty without).
        micro_observed: R × MM observed values of the micro moments (None without).
    """

    def __init__(
        self,
        spec: ParameterSpec,
        linear: Sequence[str],  # X1 names, then "gamma[...]" labels with a supply side
        steps,
        truth=None,
        seconds: float = float("nan"),
        micro_labels: Sequence[str] = (),
        micro_observed=None,
    ):
        self.spec, self.steps, self.seconds = spec, tuple(steps), seconds
        self.final: ReplicationStep = self.steps[-1]
        self.labels = list(spec.labels) + [n if n.startswith("gamma[") else f"beta[{n}]" for n in linear]
        self.truth = None if truth is None else self._truth_series(truth)
        self.micro_labels = list(micro_labels)
        self.micro_observed = None if micro_observed is None else np.asarray(micro_observed)

    @classmethod
    def from_problems(
        cls,
        problems: Sequence[Problem],
        sigma=None,
        pi=None,
        rho=None,
        *,
        method: str = "2s",
        W=None,
        se_type: str = "robust",
        W_type: str = "robust",
        optimizer: OptaxOptimizer | None = None,
        contraction: ContractionConfig | None = None,
        sigma_bounds=None,
        pi_bounds=None,
        rho_bounds=None,
        truth=None,
        batch_size: int | None = None,
        micro_moments: Sequence[Sequence[MicroMoment]] | Sequence[MicroMoment] | None = None,
    ) -> MonteCarlo:
        """Estimate R problems of identical shapes and specification in one vmapped program.

        Arguments are those of :meth:`Problem.solve` (starting values shared by every
        replication), plus ``truth`` (a mapping label → value, or values in ``labels`` order) and
        ``batch_size`` (see :func:`estimate_replications`). ``micro_moments`` is one list of
        :class:`MicroMoment` for every replication, or one list per replication (the same moments
        and survey sizes, e.g. with observed values from each replication's own survey); without
        ``W`` each replication starts with the initial update that :meth:`Problem.solve` runs.
        """
        check_x64()
        if method not in ("1s", "2s"):
            raise BLPSpecificationError("method must be '1s' or '2s'.")
        p0 = problems[0]
        for p in problems[1:]:
            if (p.linear, p.nonlinear, p.absorb, p.demographics, p.rho_by_nest, p.costs, p.costs_type) != (
                p0.linear,
                p0.nonlinear,
                p0.absorb,
                p0.demographics,
                p0.rho_by_nest,
                p0.costs,
                p0.costs_type,
            ):
                raise BLPSpecificationError("every replication must have the same specification.")
        spec = p0.parameter_spec(sigma, pi, rho, sigma_bounds, pi_bounds, rho_bounds)
        micro = micro_labels = None
        if micro_moments is not None:
            per = list(micro_moments)
            if per and all(isinstance(m, MicroMoment) for m in per):
                per = [per] * len(problems)
            if len(per) != len(problems):
                raise BLPSpecificationError(
                    f"micro_moments needs one list of MicroMoment for all replications or one per replication "
                    f"({len(problems)}), got {len(per)}."
                )
            built = [p.build_micro(m) for p, m in zip(problems, per, strict=True)]
            micro = [b[0] for b in built]
            micro_labels = built[0][1].moments
        M = p0.setup.M + (0 if micro is None else micro[0].MM)
        K = len(p0.linear) + len(p0.costs) + spec.P
        if M < K:
            raise BLPSpecificationError(f"too few moments: {M} moments for {K} parameters.")
        data = stack_problems(problems, spec, W=W, micro=micro)
        t0 = time.perf_counter()
        steps = estimate_replications(
            spec,
            data,
            steps=1 if method == "1s" else 2,
            se_type=se_type,
            W_type=W_type,
            optimizer=optimizer,
            config=contraction,
            batch_size=batch_size,
        )
        steps = jax.block_until_ready(steps)
        seconds = time.perf_counter() - t0
        linear = tuple(p0.linear) + tuple(f"gamma[{n}]" for n in p0.costs)
        if micro is None:
            return cls(spec, linear, steps, truth, seconds)
        return cls(spec, linear, steps, truth, seconds, micro_labels, np.asarray(data.micro.observed))

    # --- tables ------------------------------------------------------------------------------------------
    def _truth_series(self, truth) -> pd.Series:
        if isinstance(truth, dict):
            missing = [k for k in self.labels if k not in truth]
            if missing:
                raise BLPSpecificationError(f"truth has no value for {missing}.")
            values = [float(truth[k]) for k in self.labels]
        else:
            values = np.asarray(truth, np.float64).ravel()
            if values.shape != (len(self.labels),):
                raise BLPSpecificationError(f"truth needs {len(self.labels)} values, in the order {self.labels}.")
        return pd.Series(values, index=pd.Index(self.labels, name="parameter"), name="truth")

    def _frame(self, values) -> pd.DataFrame:
        return pd.DataFrame(
            np.asarray(values),
            index=pd.RangeIndex(len(values), name="replication"),
            columns=pd.Index(self.labels, name="parameter"),
        )

    @property
    def R(self) -> int:
        return int(self.final.theta.shape[0])

    @property
    def estimates(self) -> pd.DataFrame:
        """R × (P + K1 [+ K3]) estimates (free nonlinear parameters, then β, then γ with a supply side)."""
        parts = [np.asarray(self.final.theta), np.asarray(self.final.beta)]
        if self.final.gamma is not None:
            parts.append(np.asarray(self.final.gamma))
        return self._frame(np.concatenate(parts, axis=1))

    @property
    def standard_errors(self) -> pd.DataFrame:
        return self._frame(np.asarray(self.final.se))

    @property
    def converged(self) -> np.ndarray:
        return np.asarray(self.final.converged)

    @property
    def diagnostics(self) -> pd.DataFrame:
        """Per replication: objective, projected gradient norm, optimiser and contraction statistics."""
        f = self.final
        status = np.asarray(f.contraction_status)
        ev = np.asarray(f.contraction_evaluations)
        return pd.DataFrame(
            {
                "objective": np.asarray(f.objective),
                "gradient_norm": np.asarray(f.gradient_norm),
                "optimizer_success": np.asarray(f.optimizer_success),
                "iterations": np.asarray(f.iterations),
                "evaluations": np.asarray(f.evaluations),
                "failed_markets": (status != 0).sum(axis=1),
                "max_contraction_evaluations": ev.max(axis=1),
                "converged": self.converged,
                "status": [EstimationStatus(int(c)).explain() for c in np.asarray(f.status)],
            },
            index=pd.RangeIndex(self.R, name="replication"),
        )

    def summary(self, truth=None, level: float = 0.95, converged_only: bool = True) -> pd.DataFrame:
        """Bias, RMSE, standard deviation, mean SE and CI coverage of every parameter.

        Args:
            truth: true values (mapping label → value or values in ``labels`` order); default
                the truth given when the study was run.
            level: confidence level of the normal intervals estimate ± z·SE.
            converged_only: summarise converged replications only (``n`` says how many).
        """
        truth = self.truth if truth is None else self._truth_series(truth)
        if truth is None:
            raise BLPSpecificationError("summary() needs the true parameter values: pass truth=.")
        keep = self.converged if converged_only else np.ones(self.R, bool)
        est = self.estimates.to_numpy()[keep]
        se = self.standard_errors.to_numpy()[keep]
        t = truth.to_numpy()
        z = norm.ppf(0.5 + level / 2)
        err = est - t
        with np.errstate(invalid="ignore"):
            table = pd.DataFrame(
                {
                    "truth": t,
                    "mean": est.mean(axis=0),
                    "median": np.median(est, axis=0),
                    "bias": err.mean(axis=0),
                    "rmse": np.sqrt((err**2).mean(axis=0)),
                    "sd": est.std(axis=0, ddof=1) if len(est) > 1 else np.full(t.shape, np.nan),
                    "mean_se": se.mean(axis=0),
                    f"coverage_{round(100 * level)}": (np.abs(err) <= z * se).mean(axis=0),
                    "n": np.full(t.shape, len(est)),
                },
                index=pd.Index(self.labels, name="parameter"),
            )
        return table

    def plot(self, truth=None, bins: int = 30, converged_only: bool = True):
        """Histograms of the sampling distribution of every parameter (needs matplotlib).

        Returns:
            The matplotlib ``Figure``; the truth is drawn as a vertical line when known.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("MonteCarlo.plot needs matplotlib: pip install matplotlib") from e
        truth = self.truth if truth is None else self._truth_series(truth)
        keep = self.converged if converged_only else np.ones(self.R, bool)
        est = self.estimates[keep]
        n = len(self.labels)
        cols = min(n, 3)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, label in zip(axes.ravel(), self.labels, strict=False):
            ax.hist(est[label], bins=bins, color="0.6")
            if truth is not None:
                ax.axvline(truth[label], color="C3", label="truth")
            ax.axvline(est[label].mean(), color="C0", linestyle="--", label="mean")
            ax.set_title(label)
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        axes.ravel()[0].legend()
        fig.suptitle(f"Monte Carlo sampling distributions ({int(keep.sum())} of {self.R} replications)")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        f = self.final
        return (
            f"MonteCarlo: {self.R} replications, {len(self.steps)}-step GMM, "
            f"{int(self.converged.sum())} converged, {self.seconds:.2f}s; mean optimizer iterations "
            f"{float(np.mean(np.asarray(f.iterations))):.1f}"
        )


def monte_carlo(
    config: SimulationConfig,
    replications: int,
    seed: int = 0,
    *,
    sigma=None,
    pi=None,
    method: str = "2s",
    se_type: str = "robust",
    W_type: str = "robust",
    optimizer: OptaxOptimizer | None = None,
    contraction: ContractionConfig | None = None,
    sigma_bounds=None,
    pi_bounds=None,
    batch_size: int | None = None,
    micro_moments: Sequence[MicroMoment] | None = None,
    optimal_micro: MicroDataset | None = None,
    micro_integration: Integration | None = None,
    micro_seed: int | None = None,
) -> MonteCarlo:
    """Simulate R datasets from known truth and estimate all of them in one vmapped program.

    Every replication is :func:`simulate` with ``config`` and seed ``seed + r``, estimated with
    X1 = (1, x, prices), X2 = (1, prices) and demographic ``income`` (the simulated model),
    starting from the truth unless ``sigma`` / ``pi`` are given (zeros are fixed at zero, as in
    :meth:`Problem.solve`, so a zero true Π entry is not estimated).

    Args:
        config: the simulation design. Replications must have identical shapes, so give a fixed
            number of products per market: ``products=(J, J)``.
        replications: R.
        seed: seed of the first replication.
        method, se_type, W_type, optimizer, contraction, sigma_bounds, pi_bounds: as in
            :meth:`Problem.solve` (the optimiser must be an :class:`OptaxOptimizer`).
        batch_size: see :func:`estimate_replications`.
        micro_moments: micro moments stacked with the product moments in every replication, their
            observed values taken from a survey of N_d consumers simulated from the true model in
            that replication (:func:`survey_micro_moments`; e.g. :func:`income_price_covariance`).
        optimal_micro: a :class:`MicroDataset` whose optimal micro moments (one per parameter, scores
            at the truth: see :func:`optimal_micro_moments_at_truth`) are added in every replication.
        micro_integration: integration of the surveyed consumers' unobserved tastes in the optimal
            moments' scores (default: their own ν treated as observed).
        micro_seed: seed of the surveys (default ``seed``).

    Example:
        >>> mc = blpjax.monte_carlo(blpjax.SimulationConfig(markets=20, products=(5, 5), agents=50), 100)
        >>> mc.summary()      # bias, RMSE, mean SE and 95% coverage per parameter
        >>> mc.plot()         # sampling distributions (matplotlib)
    """
    if config.products[0] != config.products[1]:
        raise BLPSpecificationError(
            f"SimulationConfig.products={config.products} draws a different number of products per market in each "
            "replication; a vmapped Monte Carlo needs identical shapes: use products=(J, J)."
        )
    if replications < 1:
        raise BLPSpecificationError("replications must be at least 1.")
    problems, truth = simulated_problems(config, replications, seed)
    x2 = SIMULATED_SPECIFICATION["nonlinear"]
    sigma = np.diag(config.sigma) if sigma is None else sigma
    pi = np.asarray(config.pi, np.float64).reshape(len(x2), -1) if pi is None else pi
    micro = None
    if micro_moments is not None or optimal_micro is not None:
        micro = simulated_micro_moments(
            problems,
            np.diag(config.sigma),
            np.asarray(config.pi, np.float64).reshape(len(x2), -1),
            moments=micro_moments,
            optimal=optimal_micro,
            integration=micro_integration,
            seed=seed if micro_seed is None else micro_seed,
        )
    return MonteCarlo.from_problems(
        problems,
        sigma,
        pi,
        method=method,
        se_type=se_type,
        W_type=W_type,
        optimizer=optimizer,
        contraction=contraction,
        sigma_bounds=sigma_bounds,
        pi_bounds=pi_bounds,
        truth=truth,
        batch_size=batch_size,
        micro_moments=micro,
    )
