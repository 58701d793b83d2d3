"""The supply side's data: cost characteristics X3, supply instruments and ∂X2/∂p, validated."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._base.errors import BLPDataError, BLPSpecificationError
from .._supply.bertrand import COSTS_TYPES
from .data import CONSTANT, ENDOGENOUS, ProductIndex, _columns_by_prefix, _numeric, _rank_check, _require


def build_supply_arrays(
    product_data: pd.DataFrame,
    index: ProductIndex,
    x3: tuple[str, ...],
    costs_type: str,
    price_derivatives: dict | None,
) -> dict[str, np.ndarray]:
    """Validate the supply side and build its padded arrays: X3, Z_S and ∂X2/∂p.

    Z_S holds the X3 columns (exogenous cost shifters) followed by ``supply_instruments0``, ...
    ``price_derivatives`` maps X1/X2 column names to ∂column/∂price: a number or the name of a
    column (for an interaction such as prices × sugar, the column ``sugar``). ``prices`` itself
    has derivative 1 unless overridden; every other column 0.
    """
    frame = "product_data"
    df = product_data.reset_index(drop=True)
    if costs_type not in COSTS_TYPES:
        raise BLPSpecificationError(f"costs_type must be one of {COSTS_TYPES}, not {costs_type!r}.")
    _require(df, ["prices", "firm_ids", *[c for c in x3 if c != CONSTANT]], frame)
    if df["firm_ids"].isna().any():
        raise BLPDataError("product_data column 'firm_ids' has missing values: every product needs a firm.")
    if "prices" in x3:
        raise BLPSpecificationError(
            "'prices' cannot be a cost characteristic in X3 (costs are p − markup; prices are endogenous there)."
        )
    dX1, dX2 = price_derivative_arrays(df, index, price_derivatives)
    if np.any(dX1 != 0):
        moved = [c for k, c in enumerate(index.x1_names) if np.any(dX1[:, k] != 0)]
        raise BLPSpecificationError(
            f"with a supply side, markups depend on the mean price coefficient, so it cannot be concentrated out of "
            f"the GMM problem like the other linear parameters; {moved} in the linear characteristics X1 depend on "
            "prices. Put prices among the nonlinear characteristics instead: add a column of ones to agent_data "
            "(e.g. 'one'), name it in demographics, and give pi a nonzero starting value for (prices, one); that "
            "entry of Π is then the mean price coefficient α, estimated with θ (PyBLP does the same with `beta`)."
        )
    if not np.any(dX2 != 0):
        raise BLPSpecificationError(
            "with a supply side, prices must enter utility: no nonlinear characteristic depends on prices. Add "
            "'prices' (or a column holding −prices, with price_derivatives={'neg_prices': -1}) to nonlinear."
        )
    X3 = np.column_stack([np.ones(len(df)) if c == CONSTANT else _numeric(df, c, frame) for c in x3])
    excluded = _columns_by_prefix(df, "supply_instruments")
    Zx = np.column_stack([_numeric(df, c, frame) for c in excluded]) if excluded else np.zeros((len(df), 0))
    ZS = np.column_stack([X3, Zx])
    _rank_check(X3, list(x3), "cost characteristics in X3", ". Drop one of them")
    _rank_check(ZS, list(x3) + excluded, "supply instruments", ". Drop the redundant instrument")
    return {
        "X3": index.padded(X3),
        "ZS": index.padded(ZS),
        "dX2": index.padded(dX2),
        "zs_names": tuple(x3) + tuple(excluded),
    }


def price_derivative_arrays(
    product_data: pd.DataFrame, index: ProductIndex, price_derivatives: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """∂X1/∂p and ∂X2/∂p, one row per product in row order.

    ``price_derivatives`` maps X1/X2 column names to ∂column/∂price: a number or the name of a column
    (for an interaction such as prices × sugar, the column ``sugar``). ``prices`` itself has derivative 1
    unless overridden; every other column 0.
    """
    frame = "product_data"
    df = product_data.reset_index(drop=True)
    derivs = {"prices": 1.0}
    derivs.update(price_derivatives or {})
    x1, x2 = index.x1_names, index.x2_names
    unknown = [k for k in derivs if k not in (*x1, *x2) and k != "prices"]
    if unknown:
        raise BLPSpecificationError(
            f"price_derivatives names column(s) {unknown} that are in neither the linear nor the nonlinear "
            f"characteristics (X1 = {list(x1)}, X2 = {list(x2)})."
        )

    def derivative(name):
        d = derivs.get(name, 0.0)
        if isinstance(d, str):
            _require(df, [d], frame)
            return _numeric(df, d, frame)
        return np.full(len(df), float(d))

    dX1 = np.column_stack([derivative(c) for c in x1]) if x1 else np.zeros((len(df), 0))
    dX2 = np.column_stack([derivative(c) for c in x2]) if x2 else np.zeros((len(df), 0))
    return dX1, dX2


def endogenous_columns(linear: tuple[str, ...], price_derivatives: dict | None, declared) -> tuple[str, ...]:
    """The endogenous X1 columns: ``prices``, every column ``price_derivatives`` says moves with prices (a column name
    or a non-zero number), and the ``declared`` ones (checked to be X1 columns)."""
    if isinstance(declared, str):
        raise BLPSpecificationError(f"endogenous must be a sequence of column names, not the string {declared!r}.")
    declared = tuple(declared)
    unknown = [c for c in declared if c not in linear or c == CONSTANT]
    if unknown:
        raise BLPSpecificationError(
            f"endogenous names {unknown}, which are not columns of the linear characteristics X1 {list(linear)}."
        )
    moving = []
    for name, d in (price_derivatives or {}).items():
        if isinstance(d, str) or (isinstance(d, int | float) and not isinstance(d, bool) and d != 0):
            moving.append(name)
    return tuple(dict.fromkeys((*ENDOGENOUS, *moving, *declared)))
