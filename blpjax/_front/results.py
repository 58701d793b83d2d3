"""Estimation results and post-estimation as tidy, labelled DataFrames (pandas front)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._base.errors import BLPNumericalWarning, BLPSpecificationError, Status
from .._engine.gmm import condition_number, symmetric_inverse_host
from .._estimation.diagnosis import diagnose
from .._estimation.programs import Engine
from .._layouts.layouts import Padded
from .counterfactuals import Counterfactuals
from .data import Specification
from .optimal_iv import compute_optimal_instruments
from .scores import agent_scores, micro_scores, optimal_micro_moments, results_at, simulate_micro_data
from .summary import format_results

if TYPE_CHECKING:
    from .._estimation.driver import StepResult
    from .._inversion.contraction import ContractionConfig
    from .._micro.core import MicroSetup
    from .._model.params import ParameterSpec
    from .micro_data import MicroLabels


class Results(Counterfactuals):
    """What :meth:`Problem.solve` returns: estimates, inference and post-estimation.

    Attributes:
        steps: one :class:`StepResult` per GMM step (``final`` is the last).
        objective: q = N ḡ'Wḡ at the estimate.
    """

    def __init__(
        self,
        problem,
        spec: ParameterSpec,
        steps: list[StepResult],
        config: ContractionConfig,
        micro: MicroSetup | None = None,
        micro_labels: MicroLabels | None = None,
        setup=None,
        engine=None,
    ):
        self.problem, self.spec, self.steps, self.config = problem, spec, steps, config
        self.engine = engine
        # what the results read (all picklable): names, row labels, the padded arrays of post-estimation
        self.specification: Specification = problem.specification
        self.index = problem.index
        self.products = problem.products
        self.setup = problem.setup if setup is None else setup
        self.micro, self.micro_labels = micro, micro_labels
        self.price_derivatives, self.has_firm_ids = problem.price_derivatives, problem.has_firm_ids
        self.price_terms = problem.price_terms
        self.cost_terms = problem.cost_terms
        self.firm_labels = problem.firm_labels
        self.starts = None  # a StartsReport when solve(..., starts=...) ran many starting points
        self._fitted = None  # the fitted model as a JAX value (post-estimation), built on first use
        self.micro_observed = None if micro is None else np.asarray(micro.observed)
        self.final = steps[-1]
        self.theta = spec.unpack(self.final.theta, host=True)
        # a convergence check may have computed the Hessian at the estimate already
        certified = getattr(self.final.optimizer, "hessian", None)
        self._hessian: np.ndarray | None = None if certified is None else np.asarray(certified)

    def __getstate__(self):
        """Pickling keeps estimates, statistics, labels and the arrays post-estimation needs; not the Problem
        (its DataFrames and caches), the compiled engine or the micro moments' functions (lambdas do not
        pickle). A loaded result answers post-estimation questions (elasticities, diversion, shares,
        consumer surplus; the Hessian without micro moments); scores and optimal instruments need the Problem."""
        state = self.__dict__.copy()
        state.update(problem=None, engine=None, micro=None, _fitted=None)
        return state

    def _needs_problem(self, what: str):
        if self.problem is None:
            raise BLPSpecificationError(
                f"{what} needs the Problem, which a pickled result does not carry: compute it before pickling, or "
                "solve the Problem again."
            )
        return self.problem

    # --- estimates -------------------------------------------------------------------------
    @property
    def objective(self) -> float:
        return float(self.final.objective)

    @property
    def labels(self) -> list[str]:
        return (
            list(self.spec.labels[: self.spec.P_theta])
            + [f"beta[{n}]" for n in self.specification.linear]
            + [f"gamma[{n}]" for n in self.specification.costs]
        )

    @property
    def beta(self) -> pd.Series:
        return pd.Series(np.asarray(self.final.beta), index=list(self.specification.linear), name="beta")

    @property
    def beta_se(self) -> pd.Series:
        P, K1 = self.spec.P_theta, len(self.specification.linear)
        return pd.Series(np.asarray(self.final.se[P : P + K1]), index=list(self.specification.linear), name="beta_se")

    @property
    def gamma(self) -> pd.Series:
        """Marginal-cost parameters γ (empty without a supply side)."""
        values = np.zeros(0) if self.final.gamma is None else np.asarray(self.final.gamma)
        return pd.Series(values, index=list(self.specification.costs), name="gamma", dtype=np.float64)

    @property
    def gamma_se(self) -> pd.Series:
        start = self.spec.P_theta + len(self.specification.linear)
        return pd.Series(np.asarray(self.final.se[start:]), index=list(self.specification.costs), name="gamma_se")

    def _supply_array(self, name: str) -> np.ndarray:
        value = getattr(self.final, name)
        if value is None:
            raise BLPSpecificationError(f"{name} need a supply side: build the Problem with costs=[...].")
        return self._flat(value)

    @property
    def costs(self) -> np.ndarray:
        """Marginal costs c = p − η (after costs_bounds clipping), in product_data's row order."""
        return self._supply_array("costs")

    @property
    def markups(self) -> np.ndarray:
        """Bertrand–Nash markups η = p − c, in product_data's row order."""
        return self._supply_array("markups")

    @property
    def omega(self) -> np.ndarray:
        """Cost structural errors ω = f(c) − X3γ, in product_data's row order."""
        return self._supply_array("omega")

    @property
    def sigma(self) -> np.ndarray:
        return np.asarray(self.theta.sigma)

    @property
    def pi(self) -> np.ndarray:
        return np.asarray(self.theta.pi)

    @property
    def rho(self) -> np.ndarray:
        """ρ as specified: one shared value, or one per nest with ``rho_by_nest``."""
        return np.asarray(self.theta.rho)[: self.spec.rho0.shape[0]]

    def _theta_matrix(self, kind: str, se: bool) -> np.ndarray:
        shape = {"sigma": self.spec.sigma0.shape, "pi": self.spec.pi0.shape}[kind]
        out = np.zeros(shape) if se else np.asarray(getattr(self.theta, kind))
        if se:
            positions = self.spec.sigma_free if kind == "sigma" else self.spec.pi_free
            offset = 0 if kind == "sigma" else len(self.spec.sigma_free)
            for k, (r, c) in enumerate(positions):
                out[r, c] = float(self.final.se[offset + k])
        return out

    @property
    def sigma_se(self) -> np.ndarray:
        return self._theta_matrix("sigma", True)

    @property
    def pi_se(self) -> np.ndarray:
        return self._theta_matrix("pi", True)

    @property
    def rho_se(self) -> np.ndarray:
        start = len(self.spec.sigma_free) + len(self.spec.pi_free)
        return np.asarray(self.final.se[start : self.spec.P_theta])

    @property
    def parameters(self) -> pd.DataFrame:
        """Tidy table of every estimated parameter: estimate and standard error."""
        est = np.r_[
            np.asarray(self.final.theta)[: self.spec.P_theta], np.asarray(self.final.beta), self.gamma.to_numpy()
        ]
        return pd.DataFrame(
            {"estimate": est, "se": np.asarray(self.final.se)}, index=pd.Index(self.labels, name="parameter")
        )

    @property
    def covariances(self) -> pd.DataFrame:
        cov = np.asarray(self.final.covariances) / self.index.n_rows
        return pd.DataFrame(cov, index=self.labels, columns=self.labels)

    def _flat(self, values) -> np.ndarray:
        return self.index.flat(values)

    @property
    def delta(self) -> np.ndarray:
        """Mean utilities, one per product in product_data's row order."""
        return self._flat(self.final.delta)

    @property
    def xi(self) -> np.ndarray:
        """Structural errors ξ (fixed effects absorbed), in product_data's row order."""
        return self._flat(self.final.xi)

    @property
    def fixed_effects(self) -> np.ndarray:
        """The recovered absorbed fixed effects (their sum per product), in row order."""
        return self._flat(self.final.fixed_effects)

    @property
    def gradient(self) -> np.ndarray:
        return np.asarray(self.final.gradient)

    @property
    def hessian(self) -> np.ndarray:
        """Exact Hessian of the objective at the estimate (autodiff; computed on first use).

        Its program solves δ from the last step's starting δ₀, not from the estimate's δ: on layouts with
        ``market_batch_size`` (markets in ``lax.map`` chunks) JAX's second derivatives follow the contraction's
        iterates there, exact only once many of them converge (from the estimate's own δ, one evaluation, Nevo's
        Hessian came out 36% off; from δ₀ it equals central differences of the gradient)."""
        if self._hessian is None:
            engine = self.engine
            if engine is None:  # a loaded result: the padded engine again, from the arrays it carries
                if self.micro_labels is not None:
                    raise BLPSpecificationError(
                        "the Hessian of a pickled result with micro moments needs their functions, which do not "
                        "pickle: read results.hessian before pickling."
                    )
                engine = Engine.build(Padded(), self.spec, self.config, self.setup, self.products)
            conc = engine.concentration(self.final.W)
            self._hessian = np.asarray(engine.hessian(self.final.theta, self.final.delta0, conc))
        return self._hessian

    @property
    def hessian_eigenvalues(self) -> np.ndarray:
        return np.linalg.eigvalsh(self.hessian) if self.spec.P else np.zeros(0)

    @property
    def micro_values(self) -> pd.DataFrame:
        """Micro moments at the estimate: observed value, model value f(v(θ̂)) and their difference."""
        if self.micro_labels is None:
            return pd.DataFrame(columns=["observed", "estimated", "difference"])
        observed = self.micro_observed
        estimated = np.asarray(self.final.micro_values)
        return pd.DataFrame(
            {"observed": observed, "estimated": estimated, "difference": observed - estimated},
            index=pd.Index(self.micro_labels.moments, name="micro moment"),
        )

    def compute_micro_values(self, micro_moments) -> pd.Series:
        """Model values f(v(θ̂)) of any micro moments at the estimate (PyBLP's ``compute_micro_values``; each
        moment's observed value is ignored), e.g. moments not used in estimation. δ is the estimate's."""
        problem = self._needs_problem("compute_micro_values")
        if not micro_moments:
            raise BLPSpecificationError("compute_micro_values needs a non-empty sequence of blpjax.MicroMoment.")
        theta = self.theta
        at = results_at(
            problem,
            theta.sigma,
            theta.pi,
            theta.rho if self.spec.rho_free else None,
            micro_moments=micro_moments,
            delta=self.delta,
            contraction=self.config,
        )
        return at.micro_values["estimated"].rename("value")

    @property
    def micro_covariances(self) -> np.ndarray:
        """Estimated covariance matrix of the micro moments (the micro block of S is N times this)."""
        return np.zeros((0, 0)) if self.micro_labels is None else np.asarray(self.final.micro_covariances)

    @property
    def W(self) -> np.ndarray:
        return np.asarray(self.final.W)

    @property
    def updated_W(self) -> np.ndarray:
        return np.asarray(self.final.updated_W)

    @property
    def converged(self) -> bool:
        """True when nothing is wrong: the optimiser reported success, every market's share inversion
        converged, every log marginal cost was defined, and the objective, gradient, moments, estimates and
        standard errors are finite. :attr:`reasons` says what is wrong otherwise."""
        return not self.reasons

    @property
    def message(self) -> str:
        """``"converged"``, or every reason the estimate is not trustworthy."""
        return "converged" if self.converged else "; ".join(self.reasons)

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the final step is not a converged estimate (empty when it is), most basic first."""
        return diagnose(self.final, self._moment_labels(), list(self.labels), self.index.market_ids)

    def _moment_labels(self) -> list[str]:
        names = [f"E[xi × {n}]" for n in self.index.z_names] + (
            [f"E[omega × {n}]" for n in self.specification.zs_names] if self.setup.supply is not None else []
        )
        if self.micro_labels is not None:
            names += list(self.micro_labels.moments)
        return names

    @property
    def contraction_summary(self) -> dict:
        ev = np.asarray(self.final.evaluations)
        status = np.asarray(self.final.status)
        failed = {self.index.market_ids[t]: Status(int(s)).explain() for t, s in enumerate(status) if s}
        out = {"mean_evaluations": float(ev.mean()), "max_evaluations": int(ev.max()), "failed_markets": failed}
        if self.final.cost_errors is not None:
            out["nonpositive_costs"] = int(self.final.cost_errors)
            out["clipped_costs"] = int(self.final.clipped_costs)
            if out["nonpositive_costs"]:
                out["costs_message"] = (
                    f"{out['nonpositive_costs']} marginal cost(s) p − η ≤ 0, so log costs (and the supply moments) "
                    "are undefined: pass costs_bounds=(small positive, None) to clip them (as PyBLP), use "
                    "costs_type='linear', or revisit the demand specification (markups above prices mean "
                    "demand is too inelastic)."
                )
        return out

    def summary(self) -> str:
        """The printed summary: objective, gradient norm, Hessian eigenvalues once computed, the Σ, Π, ρ, β, γ
        tables with standard errors, micro values, convergence and timing (never computes the Hessian)."""
        return format_results(self)

    def __repr__(self) -> str:
        return self.summary()

    # --- hypothesis tests (PyBLP's definitions) ---------------------------------------------
    def run_hansen_test(self) -> float:
        """Hansen's J = N ḡ'Wḡ, the objective (valid with an optimal W: after two-step GMM)."""
        return self.objective

    def run_distance_test(self, unrestricted: Results) -> float:
        """The distance (likelihood-ratio-like) statistic J(restricted) − J(unrestricted); ``self`` is the
        restricted model. Both need an optimal W and the same products."""
        if not isinstance(unrestricted, Results):
            raise BLPSpecificationError(
                "run_distance_test: unrestricted must be the Results of the unrestricted model."
            )
        if unrestricted.index.n_rows != self.index.n_rows:
            raise BLPSpecificationError("run_distance_test: the two models must be estimated on the same products.")
        return self.run_hansen_test() - unrestricted.run_hansen_test()

    def run_lm_test(self) -> float:
        """The Lagrange-multiplier statistic N (G'Wḡ)' V (G'Wḡ), V the parameters' (unscaled) covariance."""
        g = np.asarray(self.final.moments_jacobian).T @ np.asarray(self.final.W) @ np.asarray(self.final.moments)
        return float(self.index.n_rows * g @ np.asarray(self.final.covariances) @ g)

    def run_wald_test(self, restrictions, restrictions_jacobian) -> float:
        """The Wald statistic r'(R V̂ R')⁻¹r for restrictions r(θ̂) = 0 with Jacobian R (one column per parameter
        in :attr:`labels` order; V̂ = :attr:`covariances`). A near-singular R V̂ R' is pseudo-inverted with a warning."""
        r = np.asarray(restrictions, dtype=np.float64).reshape(-1)
        R = np.atleast_2d(np.asarray(restrictions_jacobian, dtype=np.float64))
        K = len(self.labels)
        if R.shape != (r.shape[0], K):
            raise BLPSpecificationError(
                f"run_wald_test: restrictions_jacobian must be {r.shape[0]} × {K} (one row per restriction, one column "
                f"per parameter in results.labels order: {self.labels}), not {R.shape}."
            )
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(R))):
            raise BLPSpecificationError("run_wald_test: the restrictions and their Jacobian must be finite.")
        A = R @ self.covariances.to_numpy() @ R.T
        cond = float(condition_number(A, xp=np))
        if not cond < 1 / np.finfo(np.float64).eps:
            warnings.warn(
                f"run_wald_test: R V R' is near singular (condition number {cond:.3g}); its pseudo-inverse is used, as "
                "PyBLP does. Check for redundant restrictions.",
                BLPNumericalWarning,
                stacklevel=2,
            )
        return float(r @ symmetric_inverse_host(A) @ r)

    # --- optimal micro moments (Conlon & Gortmaker 2025; see blpjax._scores) ---------------
    def compute_micro_scores(self, dataset, micro_data, integration=None) -> pd.DataFrame:
        """Scores ∂log P_n/∂θ of observed micro data, one row per observation (:func:`._scores.micro_scores`)."""
        self._needs_problem("micro_scores")
        return micro_scores(self, dataset, micro_data, integration)

    def compute_agent_scores(self, dataset, integration=None) -> dict[str, np.ndarray]:
        """Scores of every agent-choice, ``{label: (T_d, I, A[, B])}`` (:func:`._scores.agent_scores`)."""
        self._needs_problem("agent_scores")
        return agent_scores(self, dataset, integration)

    def simulate_micro_data(self, dataset, seed: int = 0) -> pd.DataFrame:
        """Draw ``dataset.observations`` observations at the estimate (:func:`._scores.simulate_micro_data`)."""
        self._needs_problem("simulate_micro_data")
        return simulate_micro_data(self, dataset, seed)

    def optimal_micro_moments(self, dataset, micro_data, integration=None) -> list:
        """One micro moment per parameter matching the mean score (:func:`._scores.optimal_micro_moments`)."""
        self._needs_problem("optimal_micro_moments")
        return optimal_micro_moments(self, dataset, micro_data, integration)

    # --- approximate optimal instruments (see blpjax._optimal_iv) ----------------------------
    def compute_optimal_instruments(self, method: str = "approximate", expected_prices=None):
        """PyBLP-style approximate optimal demand instruments (:func:`._optimal_iv.compute_optimal_instruments`)."""
        self._needs_problem("compute_optimal_instruments")
        return compute_optimal_instruments(self, method, expected_prices)
