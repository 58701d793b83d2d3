"""Exceptions raised before numerics, and result codes reported from inside jit."""

from __future__ import annotations

import enum


class BLPDataError(ValueError):
    """Bad input data, detected before any numerics run. The message names the column or market."""


class BLPSpecificationError(ValueError):
    """An inconsistent model specification (instruments, parameters, integration)."""


class BLPDataWarning(UserWarning):
    """Data that are allowed but unusual (e.g. integration weights that do not sum to one)."""


class BLPNumericalWarning(RuntimeWarning):
    """A numerically delicate step that blpjax handled (e.g. a near-singular matrix inverted by its
    pseudo-inverse, as PyBLP does): the message names the matrix and its condition number."""


class BLPEstimationError(RuntimeError):
    """An estimation that did not converge, raised by ``Problem.solve(throw=True)`` (the default).

    The message says why (optimiser, failed markets, non-finite objective, gradient, moments or
    statistics); ``results`` holds the flagged :class:`~blpjax.Results` (``solve(throw=False)``
    returns them instead of raising).
    """

    def __init__(self, message: str, results=None):
        super().__init__(message)
        self.results = results


class Status(enum.IntEnum):
    """Result codes of a share inversion, per market (reported, never silently turned into NaN)."""

    CONVERGED = 0
    MAX_EVALUATIONS = 1
    NONFINITE = 2

    def explain(self) -> str:
        return _EXPLANATIONS[self]


_EXPLANATIONS = {
    Status.CONVERGED: "the contraction converged",
    Status.MAX_EVALUATIONS: (
        "the contraction hit its evaluation limit before reaching the tolerance; raise "
        "ContractionConfig.max_evaluations, loosen tol, or start from better parameters"
    ),
    Status.NONFINITE: (
        "the contraction produced non-finite mean utilities (overflow or zero simulated shares); "
        "the parameters are probably extreme: bound them or rescale the characteristics"
    ),
}


class ContractionError(RuntimeError):
    """Raised by front-end calls that ask for a hard failure when some market did not converge."""


class EstimationStatus(enum.IntEnum):
    """Result codes of a GMM step inside traced programs (a Monte Carlo's replications, many starts), most
    basic cause first; ``Results.message`` says the same in words, with names, outside them."""

    CONVERGED = 0
    INVERSION_FAILED = 1
    NONPOSITIVE_COSTS = 2
    NONFINITE_OBJECTIVE = 3
    OPTIMIZER_FAILED = 4
    NONFINITE_STATISTICS = 5

    def explain(self) -> str:
        return _ESTIMATION_EXPLANATIONS[self]


_ESTIMATION_EXPLANATIONS = {
    EstimationStatus.CONVERGED: "converged",
    EstimationStatus.INVERSION_FAILED: "the share inversion failed in some market (see contraction_status)",
    EstimationStatus.NONPOSITIVE_COSTS: "some marginal costs p − η are ≤ 0 under log costs",
    EstimationStatus.NONFINITE_OBJECTIVE: "the objective, its gradient or a moment is not finite at the estimate",
    EstimationStatus.OPTIMIZER_FAILED: "the optimiser stopped before its gradient tolerance (max_steps or a failure)",
    EstimationStatus.NONFINITE_STATISTICS: "an estimate or a standard error is not finite",
}
