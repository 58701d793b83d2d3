"""Data construction, with PyBLP's names and layouts: ids, ownership, design matrices and instruments.

- :func:`build_id_data`: ``market_ids`` and ``firm_ids`` for T markets of J products split among F firms.
- :func:`build_ownership`: stacked N × max J ownership matrices (NaN beyond a market's products), from firm ids,
  a κ function of two firm ids, ``"monopoly"`` or ``"single"``.
- :func:`build_matrix`: the columns of a formula (see README "Formulas").
- :func:`build_blp_instruments`: BLP's sums of characteristics over the firm's other products and over rivals'.
- :func:`build_differentiation_instruments`: Gandhi and Houde's, ``"local"`` (counts of products within one
  standard deviation of the pairwise differences) or ``"quadratic"`` (sums of squared differences), optionally
  interacted across characteristics.

Each returns NumPy arrays in ``product_data``'s row order, as PyBLP's functions do.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from .._base.errors import BLPDataError, BLPSpecificationError
from .data import _require
from .formulas import compile_terms, evaluate, parse


def build_id_data(T: int, J: int, F: int) -> pd.DataFrame:
    """``market_ids`` 0..T−1 with J products each, and ``firm_ids`` splitting each market's products among F firms
    in contiguous blocks (PyBLP's ``build_id_data``, as a DataFrame)."""
    for name, value in (("T", T), ("J", J), ("F", F)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise BLPSpecificationError(f"{name} must be a positive int, not {value!r}.")
    if J < F:
        raise BLPSpecificationError(f"J ({J}) must be at least F ({F}): every firm needs a product.")
    return pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(T), J),
            "firm_ids": np.floor(np.tile(np.arange(J), T) * F / J).astype(np.int64),
        }
    )


def _frame(product_data, needed, what: str) -> pd.DataFrame:
    if not isinstance(product_data, pd.DataFrame):
        raise BLPDataError(f"{what} needs product_data as a pandas DataFrame.")
    _require(product_data, needed, "product_data")
    return product_data.reset_index(drop=True)


def _market_rows(df: pd.DataFrame) -> list[np.ndarray]:
    codes, _ = pd.factorize(df["market_ids"], sort=True)
    return [np.flatnonzero(codes == t) for t in range(codes.max() + 1)]


def build_ownership(product_data: pd.DataFrame, kappa_specification: str | Callable | None = None) -> np.ndarray:
    """Stacked ownership matrices, N × max J with NaN beyond each market's products (PyBLP's layout, which
    ``compute_prices(ownership=...)`` takes). ``kappa_specification``: ``None`` (1 for the same firm), a function
    κ(f, g) of two firm ids (vectorised over arrays), ``"monopoly"`` or ``"single"`` (single-product firms)."""
    special = kappa_specification in ("monopoly", "single")
    if not (kappa_specification is None or callable(kappa_specification) or special):
        raise BLPSpecificationError("kappa_specification must be None, a function κ(f, g), 'monopoly' or 'single'.")
    df = _frame(product_data, ["market_ids"] + ([] if special else ["firm_ids"]), "build_ownership")
    rows = _market_rows(df)
    out = np.full((len(df), max(len(r) for r in rows)), np.nan)
    for r in rows:
        if kappa_specification == "monopoly":
            block = np.ones((len(r), len(r)))
        elif kappa_specification == "single":
            block = np.eye(len(r))
        else:
            f = df["firm_ids"].to_numpy()[r]
            if kappa_specification is None:
                block = (f[:, None] == f[None, :]).astype(np.float64)
            else:
                block = np.asarray(np.vectorize(kappa_specification, otypes=[np.float64])(f[:, None], f[None, :]))
        out[r, : len(r)] = block
    return out


def build_matrix(formula: str, data: pd.DataFrame) -> np.ndarray:
    """The columns of ``formula`` evaluated on ``data`` (N × K, PyBLP's column order)."""
    if not isinstance(data, pd.DataFrame):
        raise BLPDataError("build_matrix needs data as a pandas DataFrame.")
    design = parse(formula, data, "data")
    (terms,), inputs = compile_terms([design], data, "data")
    return evaluate(terms, inputs, data, formula, "data")


def build_blp_instruments(formula: str, product_data: pd.DataFrame) -> np.ndarray:
    """BLP instruments: for each column x of ``formula``, Σ x over the same firm's other products, then (after all
    of those) Σ x over rival firms' products in the market (PyBLP's order)."""
    df = _frame(product_data, ["market_ids", "firm_ids"], "build_blp_instruments")
    X = build_matrix(formula, df)
    frame = pd.DataFrame(X)
    firm_total = frame.groupby([df["market_ids"], df["firm_ids"]], sort=False).transform("sum").to_numpy()
    market_total = frame.groupby(df["market_ids"], sort=False).transform("sum").to_numpy()
    other = firm_total - X
    rival = market_total - X - other
    return np.ascontiguousarray(np.c_[other, rival])


def build_differentiation_instruments(
    formula: str, product_data: pd.DataFrame, version: str = "local", interact: bool = False
) -> np.ndarray:
    """Gandhi and Houde's differentiation instruments (PyBLP's definition and order): per characteristic (and pair
    with ``interact``), the sum over the firm's other products, then the same over rivals', of

    - ``"local"``: 1{|x_j − x_k| < sd}, sd the standard deviation of all within-market pairwise differences (with
      ``interact``, that indicator times each characteristic's difference);
    - ``"quadratic"``: (x_j − x_k)² (with ``interact``, (x_j − x_k)(y_j − y_k) for every pair).
    """
    if version not in ("local", "quadratic"):
        raise BLPSpecificationError(f"version must be 'local' or 'quadratic', not {version!r}.")
    df = _frame(product_data, ["market_ids", "firm_ids"], "build_differentiation_instruments")
    X = build_matrix(formula, df)
    K = X.shape[1]
    rows = _market_rows(df)
    firms = df["firm_ids"].to_numpy()
    sd = np.zeros(K)
    if version == "local":
        sums = np.zeros((3, K))
        for r in rows:
            d = X[r][:, None, :] - X[r][None, :, :]  # (J, J, K), zero on the diagonal
            sums[0] += d.shape[0] * (d.shape[0] - 1)
            sums[1] += d.sum(axis=(0, 1))
            sums[2] += (d**2).sum(axis=(0, 1))
        count, total, squares = sums
        sd = np.sqrt(squares / count - (total / count) ** 2)
    blocks = []
    for r in rows:
        d = X[r][:, None, :] - X[r][None, :, :]
        J = len(r)
        eye = np.eye(J, dtype=bool)
        terms = []
        for k1 in range(K):
            if version == "quadratic":
                for k2 in range(k1, K if interact else k1 + 1):
                    terms.append(d[:, :, k1] * d[:, :, k2])
            else:
                close = np.where(eye, 0.0, (np.abs(d[:, :, k1]) < sd[k1]).astype(np.float64))
                if not interact:
                    terms.append(close)
                else:
                    terms.extend(close * d[:, :, k2] for k2 in range(K))
        own = firms[r][:, None] == firms[r][None, :]
        other = [np.sum(np.where(own, t, 0.0), axis=1) for t in terms]
        rival = [np.sum(np.where(own, 0.0, t), axis=1) for t in terms]
        blocks.append((r, np.column_stack(other + rival)))
    out = np.zeros((len(df), blocks[0][1].shape[1]))
    for r, block in blocks:
        out[r] = block
    return out
