"""The front of micro moments: user configuration, evaluated once into :class:`._micro.MicroSetup`.

Users describe micro data the way Conlon & Gortmaker (2025) and PyBLP do: a
:class:`MicroDataset` (survey weights), :class:`MicroPart` s (values averaged over the survey)
and :class:`MicroMoment` s (an observed statistic and a smooth function of parts). Weights and
values are JAX functions of one market, ``fn(m: MicroMarket) -> array``, vmapped over the
dataset's markets once per problem (they do not depend on θ). Shapes are checked before any
numerics, with messages that name the axis that is wrong. The gradient of a moment's function
comes from autodiff: nobody writes one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array

from .._base.errors import BLPSpecificationError
from .._micro.core import DatasetMarket, DatasetSpec, MicroMarket, MicroSetup
from .._model.containers import Agents, Products
from .agent_data import padded_agent_columns
from .data import ProductIndex


@dataclass(frozen=True, eq=False)
class MicroDataset:
    """A micro dataset d (a survey): its size N_d, survey weights w_dijt and the markets it covers.

    Args:
        name: label.
        observations: N_d, the number of survey observations (scales the moment covariances).
        weights: ``fn(m: MicroMarket) -> array`` of w_dijt for one market, shaped ``(I, J)``,
            ``(I, 1+J)`` (column 0 = outside good), or for second choices ``(I, J, J)``,
            ``(I, 1+J, J)``, ``(I, J, 1+J)``, ``(I, 1+J, 1+J)`` (axis 1 first choice, axis 2 second
            choice, outside good first wherever it appears). Written with ``jax.numpy``.
        market_ids: markets the survey samples from (default: all).

    Example:
        >>> buyers = MicroDataset("income survey", 100, lambda m: jnp.ones((m.I, m.J)), ["C01Q1", "C01Q2"])
    """

    name: str
    observations: int
    weights: Callable[[MicroMarket], Array]
    market_ids: Sequence | None = None


@dataclass(frozen=True, eq=False)
class MicroPart:
    """A part p: values v_pijt (shaped like its dataset's weights) averaged over the survey.

    Example:
        >>> income = MicroPart("E[log income]", buyers, lambda m: jnp.outer(m.agents["log_income"], jnp.ones(m.J)))
    """

    name: str
    dataset: MicroDataset
    values: Callable[[MicroMarket], Array]


@dataclass(frozen=True, eq=False)
class MicroMoment:
    """A micro moment: an observed statistic and its model analogue f(v_1, ..., v_P) of parts.

    Args:
        name: label.
        value: the observed statistic.
        parts: one part, or several for a function of parts (ratio, covariance, ...).
        function: f, taking the array of the parts' values (in ``parts`` order) to a scalar; default
            the identity for a single part. Written with ``jax.numpy``; its gradient comes from autodiff.

    Example:
        >>> MicroMoment("E[age | minivan]", 0.783, [age_x_minivan, minivan], lambda v: v[0] / v[1])
    """

    name: str
    value: float
    parts: MicroPart | Sequence[MicroPart]
    function: Callable[[Array], Array] | None = None

    @property
    def part_list(self) -> tuple[MicroPart, ...]:
        return (self.parts,) if isinstance(self.parts, MicroPart) else tuple(self.parts)


def _identity(v):
    return v[0]


@dataclass(frozen=True)
class MicroLabels:
    moments: tuple[str, ...]
    parts: tuple[str, ...]
    datasets: tuple[str, ...]
    moment_parts: tuple[tuple[str, ...], ...]


def market_views(
    products: Products,
    agents: Agents,
    index: ProductIndex,
    product_data: pd.DataFrame,
    agent_data: pd.DataFrame | None,
) -> MicroMarket:
    """The :class:`MicroMarket` of every market, batched over T."""
    cols = {}
    for c in product_data.columns:
        if c != "market_ids" and pd.api.types.is_numeric_dtype(product_data[c]):
            cols[str(c)] = jnp.asarray(index.padded(product_data[c].to_numpy(np.float64)))
    I = agents.I
    a_cols = {}
    if agent_data is not None:
        a_cols = {k: jnp.asarray(v) for k, v in padded_agent_columns(agent_data, index, I).items()}
    a_cols["weights"] = agents.weights
    return MicroMarket(
        cols,
        a_cols,
        products.X1,
        products.X2,
        agents.demographics,
        agents.nodes,
        agents.weights,
        products.mask,
        jnp.arange(products.T),
        products.J,
        I,
    )


def _shape_error(what: str, shape, I: int, J: int) -> str | None:
    shape = tuple(shape)
    choices = f"J={J} (inside goods only) or 1+J={J + 1} (column 0 is the outside good)"
    if len(shape) not in (2, 3):
        return (
            f"{what} must return, per market, a 2-D array (agents × choices) or a 3-D array (agents × first choices × "
            f"second choices); it returned shape {shape}."
        )
    if shape[0] != I:
        if shape[1] == I and shape[0] in (J, J + 1):
            return (
                f"{what} returned shape {shape}, which looks transposed: axis 0 must be agents (I={I}), axis 1 choices."
            )
        return f"{what} returned shape {shape}: axis 0 must be agents, I={I} (padded; use m.I)."
    if shape[1] not in (J, J + 1):
        return f"{what} returned shape {shape}: axis 1 (first choices) must be {choices}."
    if len(shape) == 3 and shape[2] not in (J, J + 1):
        return f"{what} returned shape {shape}: axis 2 (second choices) must be {choices}."
    return None


@partial(jax.jit, static_argnums=0)
def _vmapped(fn: Callable, views: MicroMarket):
    """``fn`` over markets, compiled once per function (a fresh ``jax.jit(jax.vmap(fn))`` per call
    would compile again at every solve)."""
    return jax.vmap(fn)(views)


def _evaluate(fn: Callable, views: MicroMarket, what: str, expected=None) -> np.ndarray:
    try:
        out = jax.eval_shape(jax.vmap(fn), views)
    except Exception as e:  # noqa: BLE001 - re-raised with a teaching message
        raise BLPSpecificationError(
            f"{what} failed on a market ({type(e).__name__}: {e}). It is vmapped over markets: write it with "
            "jax.numpy (jnp), index products/agents by column name (m.products['mushy'], m.agents['income']) and "
            "use m.I, m.J for shapes."
        ) from e
    shape = out.shape[1:]
    if expected is None:
        msg = _shape_error(what, shape, views.I, views.J)
        if msg:
            raise BLPSpecificationError(msg)
    elif shape != expected:
        raise BLPSpecificationError(
            f"{what} returned shape {shape} per market, but its dataset's weights have shape {expected}: values must "
            "match the weights axis for axis (outside good in position 0 wherever the weights have one)."
        )
    try:
        hash(fn)
    except TypeError:  # an unhashable callable object: compiled for this call only
        arr = np.asarray(jax.jit(jax.vmap(fn))(views), np.float64)
    else:
        arr = np.asarray(_vmapped(fn, views), np.float64)
    if not np.all(np.isfinite(arr)):
        raise BLPSpecificationError(f"{what} returned NaN or infinite entries.")
    return arr


def _outer_factors(values: np.ndarray, rtol: float = 1e-14):
    """(a, b) with values[p, t] == outer(a[p, t], b[p, t]) for every part and market, or None.

    Exact up to rounding: the factorisation is accepted only if it reproduces every value to
    ``rtol`` of the largest, so using it changes nothing but the cost.
    """
    P, T, I, A = values.shape
    flat = values.reshape(P * T, I, A)
    a = np.zeros((P * T, I))
    b = np.zeros((P * T, A))
    for k, M in enumerate(flat):
        i, j = np.unravel_index(np.argmax(np.abs(M)), M.shape)
        if M[i, j] == 0:
            continue
        a[k] = M[:, j]
        b[k] = M[i] / M[i, j]
        if np.max(np.abs(M - np.outer(a[k], b[k]))) > rtol * abs(M[i, j]) * 4:
            return None
    return jnp.asarray(a.reshape(P, T, I)), jnp.asarray(b.reshape(P, T, A))


def build_micro(
    moments: Sequence[MicroMoment],
    views: MicroMarket,
    index: ProductIndex,
) -> tuple[MicroSetup, MicroLabels]:
    """Validate the configuration and evaluate every weights/values function once."""
    if isinstance(moments, MicroMoment):
        moments = [moments]
    moments = list(moments)
    if not moments or not all(isinstance(m, MicroMoment) for m in moments):
        raise BLPSpecificationError("micro_moments must be a non-empty list of MicroMoment.")
    datasets: list[MicroDataset] = []
    parts: list[MicroPart] = []
    for m in moments:
        pl = m.part_list
        if not pl or not all(isinstance(p, MicroPart) for p in pl):
            raise BLPSpecificationError(f"micro moment '{m.name}': parts must be MicroPart objects.")
        if m.function is None and len(pl) > 1:
            raise BLPSpecificationError(
                f"micro moment '{m.name}' has {len(pl)} parts: give function=f(v) combining them (e.g. lambda v: v[0] / v[1])."
            )
        if not np.isfinite(float(m.value)):
            raise BLPSpecificationError(f"micro moment '{m.name}' has a non-finite observed value.")
        for p in pl:
            if p not in parts:
                parts.append(p)
            if p.dataset not in datasets:
                datasets.append(p.dataset)
    position = {m: t for t, m in enumerate(index.market_ids.tolist())}
    arrays, specs = [], []
    for d in datasets:
        n = d.observations
        if isinstance(n, bool) or not isinstance(n, int | np.integer | float | np.floating) or n != int(n) or n <= 0:
            raise BLPSpecificationError(
                f"micro dataset '{d.name}': observations must be a positive whole number (the survey's size N_d, "
                f"which scales the moments' covariances), not {n!r}."
            )
        if d.market_ids is None:
            markets = np.arange(len(position))
        else:
            ids = (
                list(d.market_ids)
                if isinstance(d.market_ids, list | tuple | np.ndarray | pd.Index | pd.Series)
                else [d.market_ids]  # one market id (a string or a number)
            )
            unknown = [m for m in ids if m not in position]
            if unknown:
                raise BLPSpecificationError(f"micro dataset '{d.name}' names unknown market(s) {unknown[:5]}.")
            markets = np.asarray([position[m] for m in ids])
        sub = jax.tree_util.tree_map(lambda a, markets=markets: a[markets], views)
        w = _evaluate(d.weights, sub, f"weights of micro dataset '{d.name}'")
        if np.any(w < 0):
            raise BLPSpecificationError(f"weights of micro dataset '{d.name}' must be non-negative.")
        if not np.any(w > 0):
            raise BLPSpecificationError(
                f"weights of micro dataset '{d.name}' are zero in every market it covers: the survey would observe "
                "no choice, and its parts (Σ ω v / Σ ω) would be 0/0. Check the weights function (which choices "
                "the survey records) and the dataset's market_ids."
            )
        own = [p for p in parts if p.dataset is d]
        vals = np.stack([_evaluate(p.values, sub, f"values of micro part '{p.name}'", w.shape[1:]) for p in own])
        J, T = views.J, len(position)
        factors = _outer_factors(vals) if w.ndim == 3 else None
        weight_factors = None
        if factors is not None:
            wf = _outer_factors(w[None])
            weight_factors = None if wf is None else (wf[0][0], wf[1][0])

        covers_all = bool(np.array_equal(np.sort(markets), np.arange(T)))

        def full(a, axis=0, markets=markets, covers_all=covers_all, T=T):
            """``a`` with its market axis (at ``axis``) first: every market in order when the survey covers them
            all, else just the survey's markets (a compact dataset: no arrays for markets it does not cover)."""
            a = np.moveaxis(np.asarray(a, np.float64), axis, 0)
            if covers_all:
                out = np.zeros((T,) + a.shape[1:])
                out[markets] = a
                a = out
            return jnp.asarray(a)

        spec = DatasetSpec(
            outside_first=w.shape[2] == J + 1,
            second=w.ndim == 4,
            outside_second=w.ndim == 4 and w.shape[3] == J + 1,
            observations=int(d.observations),
            parts=len(own),
            factored_values=factors is not None,
            factored_weights=weight_factors is not None,
            markets=tuple(int(t) for t in markets),
            full=covers_all,
        )
        if weight_factors is not None:
            arrays.append(
                DatasetMarket(
                    a=full(factors[0], 1), b=full(factors[1], 1), c=full(weight_factors[0]), d=full(weight_factors[1])
                )
            )
        elif factors is not None:
            arrays.append(DatasetMarket(weights=full(w), a=full(factors[0], 1), b=full(factors[1], 1)))
        else:
            arrays.append(DatasetMarket(weights=full(w), values=full(vals, 1)))
        specs.append(spec)
    part_pos = []
    for p in parts:
        d = datasets.index(p.dataset)
        part_pos.append((d, [q for q in parts if q.dataset is p.dataset].index(p)))
    setup = MicroSetup(
        tuple(arrays),
        jnp.asarray([float(m.value) for m in moments]),
        tuple(specs),
        tuple(part_pos),
        tuple(tuple(parts.index(p) for p in m.part_list) for m in moments),
        tuple(m.function or _identity for m in moments),
    )
    labels = MicroLabels(
        tuple(m.name for m in moments),
        tuple(p.name for p in parts),
        tuple(d.name for d in datasets),
        tuple(tuple(p.name for p in m.part_list) for m in moments),
    )
    return setup, labels
