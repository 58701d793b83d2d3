"""Checks of input values that run before any numerics (the data front's helpers)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd

from .._base import config
from .._base.errors import BLPDataError, BLPDataWarning, BLPSpecificationError
from .._engine.gmm import SE_TYPES
from .._inversion.contraction import ContractionConfig


def check_agent_weights(weights: np.ndarray, t_codes: np.ndarray, market_ids: np.ndarray) -> None:
    """Integration weights: finite, a positive sum in every market, non-negative unless they sum to one.

    Negative weights are meaningful only for quadrature rules (sparse grids), whose weights sum to one
    in each market; anywhere else they are a data error. Sums that differ from one are allowed (e.g.
    importance sampling) with a warning, as PyBLP does.

    Raises:
        BLPDataError: non-finite weights, a market whose weights sum to ≤ 0, or negative weights in a
            market whose weights do not sum to one.
    """
    bad = ~np.isfinite(weights)
    if bad.any():
        raise BLPDataError(
            f"agent_data column 'weights' has {bad.sum()} NaN/inf value(s), in market(s) "
            f"{pd.unique(market_ids[t_codes[bad]]).tolist()[:5]}."
        )
    T = len(market_ids)
    totals = np.bincount(t_codes, weights=weights, minlength=T)
    nonpositive = totals <= 0
    if nonpositive.any():
        raise BLPDataError(
            f"agent_data column 'weights' sums to {totals[nonpositive][0]:.6g} (≤ 0) in market(s) "
            f"{market_ids[nonpositive].tolist()[:5]}: every market needs integration weights with a positive sum "
            "(usually 1/I for I agents)."
        )
    tol = config.settings.weights_tol
    off = np.abs(totals - 1.0) > tol
    negative = np.bincount(t_codes, weights=(weights < 0).astype(float), minlength=T) > 0
    if (negative & off).any():
        raise BLPDataError(
            f"agent_data column 'weights' has negative weights in market(s) {market_ids[negative & off].tolist()[:5]}, "
            "where the weights do not sum to one. Negative weights only make sense for quadrature rules such as "
            "sparse grids, whose weights sum to one in each market; check the weights column."
        )
    if off.any():
        where = "all markets" if off.all() else market_ids[off].tolist()[:5]
        warnings.warn(
            f"agent_data weights sum to a value that differs from 1 by more than {tol:g} in {where} "
            f"(e.g. {totals[off][0]:.10g}). This is fine for importance sampling; otherwise it is a data problem "
            "(shares are integrals with these weights).",
            BLPDataWarning,
            stacklevel=4,
        )


def check_solve_options(contraction, se_type: str, W_type: str, has_clusters: bool) -> None:
    """The options of a solve that are checked before any numerics."""
    if contraction is not None and not isinstance(contraction, ContractionConfig):
        raise BLPSpecificationError(
            f"contraction must be a blpjax.ContractionConfig, not {type(contraction).__name__}."
        )
    if se_type not in SE_TYPES or W_type not in SE_TYPES:
        raise BLPSpecificationError(f"se_type and W_type must be one of {SE_TYPES}, not {se_type!r} / {W_type!r}.")
    if "clustered" in (se_type, W_type) and not has_clusters:
        raise BLPSpecificationError("clustered standard errors need a 'clustering_ids' column in product_data.")


def check_epsilon_scale(epsilon_scale, n_nests: int) -> float:
    """The logit error's scale λ: a positive number, 1 with nesting (as PyBLP)."""
    if isinstance(epsilon_scale, bool) or not isinstance(epsilon_scale, numbers.Real) or not epsilon_scale > 0:
        raise BLPSpecificationError(f"epsilon_scale must be a positive number, not {epsilon_scale!r}.")
    if epsilon_scale != 1 and n_nests:
        raise BLPSpecificationError(
            "epsilon_scale must be 1 with nesting_ids (as in PyBLP): the nested logit's scale is ρ."
        )
    return float(epsilon_scale)
