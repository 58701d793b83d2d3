"""Optimal micro moments (Conlon & Gortmaker 2025), the pandas front: scores of micro data, agent
scores, simulated micro data, and :func:`results_at` (a :class:`Results` at given parameters).

The numerics are :mod:`blpjax._engine.scores`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from .._base.errors import BLPDataError, BLPSpecificationError
from .._engine.scores import (
    Context,
    Observations,
    _ddelta,
    _view,
    _weighted_probabilities,
    score_terms,
    scores_from_terms,
)
from .._estimation.optimize import OptaxOptimizer
from .._model.integration import Integration
from .agent_data import padded_agent_columns
from .micro_data import MicroDataset, MicroMoment, MicroPart, _evaluate, _shape_error


class _Dataset(NamedTuple):
    markets: np.ndarray  # positions of the dataset's markets
    survey: np.ndarray  # weights on the problem's agents, (T_d, I, A[, B])
    flags: tuple[bool, bool, bool]


def _resolve(problem, dataset: MicroDataset) -> _Dataset:
    if not isinstance(dataset, MicroDataset):
        raise BLPSpecificationError("dataset must be a blpjax.MicroDataset.")
    position = {m: t for t, m in enumerate(problem.index.market_ids.tolist())}
    if dataset.market_ids is None:
        markets = np.arange(len(position))
    else:
        ids = [dataset.market_ids] if isinstance(dataset.market_ids, str) else list(dataset.market_ids)
        unknown = [m for m in ids if m not in position]
        if unknown:
            raise BLPSpecificationError(f"micro dataset '{dataset.name}' names unknown market(s) {unknown[:5]}.")
        markets = np.asarray([position[m] for m in ids])
    views = problem.micro_market_views()
    sub = jax.tree_util.tree_map(lambda a: a[markets], views)
    survey = _evaluate(dataset.weights, sub, f"weights of micro dataset '{dataset.name}'")
    if np.any(survey < 0):
        raise BLPSpecificationError(f"weights of micro dataset '{dataset.name}' must be non-negative.")
    J = views.J
    flags = (survey.shape[2] == J + 1, survey.ndim == 4, survey.ndim == 4 and survey.shape[3] == J + 1)
    return _Dataset(markets, survey, flags)


def _context(results) -> Context:
    problem, spec = results.problem, results.spec
    setup = problem.setup
    if setup.market.product_demographics is not None or setup.market.availability is not None:
        raise BLPSpecificationError(
            "micro-data scores (optimal micro moments) with product-specific demographics or agent-specific "
            "availability are not supported yet: each observed consumer would need them per product."
        )
    x = jnp.asarray(results.final.theta, jnp.float64)
    delta = results.final.delta
    T, J = delta.shape
    ddelta = _ddelta(spec, setup, x, delta) if spec.P else jnp.zeros((T, J, 0))
    views = problem.micro_market_views()
    return Context(x, delta, ddelta, setup.market, views.products, views.X1)


def _nodes_columns(K2: int) -> list[str]:
    return [f"nodes{k}" for k in range(K2)]


def _check_choices(values: np.ndarray, t: np.ndarray, J_t: np.ndarray, outside: bool, column: str, frame: str):
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise BLPDataError(f"{frame} column '{column}' must hold integer choice indices.")
    upper = J_t[t] + int(outside)
    bad = (values < 0) | (values >= upper)
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        what = "0 (outside good) to J_t" if outside else "0 to J_t − 1 (inside goods only)"
        raise BLPDataError(
            f"{frame} column '{column}' has index {int(values[k])} in a market with J_t={int(J_t[t[k]])} products; "
            f"this dataset's weights {'include' if outside else 'exclude'} the outside good, so indices run {what}."
        )


def _numeric_columns(df: pd.DataFrame, skip=("market_ids",)) -> dict[str, np.ndarray]:
    return {
        str(c): df[c].to_numpy(np.float64)
        for c in df.columns
        if c not in skip and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
    }


def _observed(problem, ds: _Dataset, dataset: MicroDataset, micro_data: pd.DataFrame, integration):
    """Group micro_data rows into padded :class:`Observations` (and the observations' labels)."""
    frame = "micro_data"
    if not isinstance(micro_data, pd.DataFrame):
        micro_data = pd.DataFrame(micro_data)
    df = micro_data.reset_index(drop=True)
    K2 = problem.products.X2.shape[-1]
    required = ["market_ids", "choice_indices", *problem.demographics]
    if ds.flags[1]:
        required.append("second_choice_indices")
    if integration is None:
        required += ["micro_ids", "weights", *_nodes_columns(K2)]
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = " (or pass integration= to build weights and nodes for each row)" if integration is None else ""
        raise BLPDataError(f"{frame} is missing column(s) {missing}{hint}.")
    if df.empty:
        raise BLPDataError(f"{frame} has no rows.")
    position = {m: t for t, m in enumerate(problem.index.market_ids.tolist())}
    t_rows = df["market_ids"].map(position)
    if t_rows.isna().any():
        raise BLPDataError(
            f"{frame} has market_ids not in product_data: {list(df.loc[t_rows.isna(), 'market_ids'])[:5]}."
        )
    t_rows = t_rows.to_numpy(int)
    outside_markets = sorted(set(t_rows.tolist()) - set(ds.markets.tolist()))
    if outside_markets:
        labels = [problem.index.market_ids[t] for t in outside_markets[:5]]
        raise BLPDataError(f"{frame} has market_ids {labels} that micro dataset '{dataset.name}' does not cover.")
    J_t = (problem.index.rows >= 0).sum(axis=1)
    first = df["choice_indices"].to_numpy(np.float64)
    _check_choices(first, t_rows, J_t, ds.flags[0], "choice_indices", frame)
    second = np.zeros_like(first)
    if ds.flags[1]:
        second = df["second_choice_indices"].to_numpy(np.float64)
        _check_choices(second, t_rows, J_t, ds.flags[2], "second_choice_indices", frame)
    demographics = df[list(problem.demographics)].to_numpy(np.float64).reshape(len(df), -1)
    columns = _numeric_columns(df)
    if integration is None:
        codes, labels = pd.factorize(df["micro_ids"], sort=False)
        N = len(labels)
        r = pd.Series(codes).groupby(codes).cumcount().to_numpy()
        R = int(r.max()) + 1
        keys = pd.DataFrame({"n": codes, "t": t_rows, "j": first, "k": second})
        varying = keys.groupby("n")[["t", "j", "k"]].nunique().max(axis=1) > 1
        if varying.any():
            bad = labels[int(np.flatnonzero(varying.to_numpy())[0])]
            raise BLPDataError(f"{frame}: micro id {bad!r} has rows with different market_ids or choices.")
        w_rows = df["weights"].to_numpy(np.float64)
        if np.any(~np.isfinite(w_rows)) or np.any(w_rows < 0):
            raise BLPDataError(f"{frame} column 'weights' must be finite and non-negative.")
        n_rows = df[_nodes_columns(K2)].to_numpy(np.float64).reshape(len(df), K2)

        def pad(v):
            out = np.zeros((N, R) + v.shape[1:])
            out[codes, r] = v
            return out

        first_n = np.zeros(N, int)
        first_n[codes] = first
        second_n = np.zeros(N, int)
        second_n[codes] = second
        t_n = np.zeros(N, int)
        t_n[codes] = t_rows
        obs = Observations(
            jnp.asarray(t_n),
            jnp.asarray(pad(w_rows)),
            jnp.asarray(pad(n_rows)),
            jnp.asarray(pad(demographics)),
            {k: jnp.asarray(pad(v)) for k, v in columns.items()},
            jnp.asarray(first_n),
            jnp.asarray(second_n),
        )
        return obs, pd.Index(labels, name="micro_ids")
    built = [integration.build(K2, market=n) for n in range(len(df))]
    obs = _integrated(t_rows, np.ones(len(df)), demographics, columns, built, first.astype(int), second.astype(int))
    return obs, micro_data.index


def _integrated(t, real, demographics, columns, built, first, second) -> Observations:
    """Observations whose R rows repeat one agent's demographics over built integration nodes."""
    N, R = len(t), max(w.shape[0] for _, w in built)
    K2 = built[0][0].shape[1]
    nodes = np.zeros((N, R, K2))
    weights = np.zeros((N, R))
    for n, (v, w) in enumerate(built):
        nodes[n, : len(w)] = v
        weights[n, : len(w)] = w * real[n]
    cols = {k: np.repeat(v[:, None], R, axis=1) for k, v in columns.items()}
    cols["weights"] = weights
    for k in range(K2):
        cols[f"nodes{k}"] = nodes[..., k]
    return Observations(
        jnp.asarray(t),
        jnp.asarray(weights),
        jnp.asarray(nodes),
        jnp.asarray(np.repeat(demographics[:, None, :], R, axis=1)),
        {k: jnp.asarray(v) for k, v in cols.items()},
        jnp.asarray(first),
        jnp.asarray(second),
    )


def _agents_as_observations(problem, ds: _Dataset, integration) -> Observations:
    """Every agent of the problem in the dataset's markets as an observation (padded agents inert)."""
    agents = problem.agents
    I = agents.I
    Td = len(ds.markets)
    w = np.asarray(agents.weights)[ds.markets].reshape(Td * I)
    real = (w > 0).astype(np.float64)
    nodes = np.asarray(agents.nodes)[ds.markets].reshape(Td * I, -1)
    demographics = np.asarray(agents.demographics)[ds.markets].reshape(Td * I, -1)
    columns = {}
    if problem.agent_data is not None:
        padded = padded_agent_columns(problem.agent_data, problem.index, I)
        columns = {k: v[ds.markets].reshape(Td * I) for k, v in padded.items()}
    t = np.repeat(ds.markets, I)
    zeros = np.zeros(Td * I, int)
    if integration is not None:
        K2 = nodes.shape[1]
        built = [integration.build(K2, market=n) for n in range(Td * I)]
        return _integrated(t, real, demographics, columns, built, zeros, zeros)
    # each agent alone, with unit weight (scores do not depend on a constant scale of the numerator)
    cols = {k: v[:, None] for k, v in columns.items()}
    cols["weights"] = real[:, None]
    return Observations(
        jnp.asarray(t),
        jnp.asarray(real[:, None]),
        jnp.asarray(nodes[:, None, :]),
        jnp.asarray(demographics[:, None, :]),
        {k: jnp.asarray(v) for k, v in cols.items()},
        jnp.asarray(zeros),
        jnp.asarray(zeros),
    )


def _check_observation_weights(dataset: MicroDataset, obs: Observations, ctx: Context, per_market_shape):
    """The weights function on one observation's rows must have the dataset's shape (R rows)."""
    one = jax.tree_util.tree_map(lambda a: a[0], obs)
    try:
        out = jax.eval_shape(lambda o: dataset.weights(_view(o, ctx)), one)
    except Exception as e:  # noqa: BLE001 - re-raised with a teaching message
        raise BLPSpecificationError(
            f"weights of micro dataset '{dataset.name}' failed on an observation's rows ({type(e).__name__}: {e}); "
            "size arrays with m.I and m.J."
        ) from e
    R = one.weights.shape[0]
    expected = (R,) + tuple(per_market_shape)
    if tuple(out.shape) != expected:
        msg = _shape_error(f"weights of micro dataset '{dataset.name}'", out.shape, R, ctx.delta.shape[1])
        raise BLPSpecificationError(
            msg
            or f"weights of micro dataset '{dataset.name}' returned {tuple(out.shape)} for an observation with "
            f"{R} rows; expected {expected}."
        )


def _terms(results, dataset: MicroDataset, obs: Observations, ds: _Dataset, select: bool):
    ctx = _context(results)
    _check_observation_weights(dataset, obs, ctx, ds.survey.shape[2:])
    return score_terms(
        obs,
        ctx,
        jnp.asarray(ds.markets),
        jnp.asarray(ds.survey),
        spec=results.spec,
        weights_fn=dataset.weights,
        flags=ds.flags,
        select=select,
    )


def micro_scores(
    results, dataset: MicroDataset, micro_data: pd.DataFrame, integration: Integration | None = None
) -> pd.DataFrame:
    """Scores S_n = ∂ log P_n/∂θ of observed micro data (total derivatives through δ(θ)).

    Args:
        results: estimates (θ̂, δ̂) at which scores are evaluated.
        dataset: the :class:`MicroDataset` that sampled the observations; its ``weights`` function is
            evaluated on each observation's rows (a :class:`MicroMarket` whose agents are those rows).
        micro_data: ``market_ids``, ``choice_indices`` (0..J_t−1, or 0..J_t with 0 = outside good when
            the dataset's weights have 1+J columns), ``second_choice_indices`` for second-choice
            datasets, the problem's demographic columns, and either ``micro_ids`` + ``weights`` +
            ``nodes0..`` (several rows per observation integrate its unobserved heterogeneity) or
            ``integration``.
        integration: builds nodes and weights for each row (then one observation per row; any
            ``micro_ids``/``weights``/``nodes`` columns are ignored).

    Returns:
        One row per observation (in order of first appearance of ``micro_ids``, or micro_data's
        rows), one column per parameter (``results.spec.labels``). NaN where P_n = 0: such an
        observation cannot have been sampled by ``dataset`` (as PyBLP).

    Raises:
        BLPDataError: missing columns, unknown markets, choice indices out of range.
    """
    ds = _resolve(results.problem, dataset)
    obs, index = _observed(results.problem, ds, dataset, micro_data, integration)
    S = scores_from_terms(*_terms(results, dataset, obs, ds, select=True))
    return pd.DataFrame(S, index=index, columns=list(results.spec.labels))


def agent_scores(results, dataset: MicroDataset, integration: Integration | None = None) -> dict[str, np.ndarray]:
    """Scores of every agent-choice of the problem in the dataset's markets, each treated as an observation.

    Without ``integration`` each agent is its own observation (its nodes and demographics, one
    row); with it, each agent keeps its demographics and its unobserved tastes are integrated
    with the rule's nodes. The weights function sees a :class:`MicroMarket` of the observation's rows.

    Returns:
        ``{parameter label: array}``, each array shaped like the dataset's weights on the problem's
        agents, ``(T_d, I, A[, B])``: axis 0 follows ``dataset.market_ids`` (all markets in the
        problem's order by default), I and the choice axes are padded like :class:`MicroMarket`
        (column 0 = outside good where the weights have one). Entries with P_n = 0 (padded agents
        or products, zero survey weight) are 0, not NaN (PyBLP leaves NaN for the user to replace):
        they get no weight in any micro moment, so the choice is immaterial.
    """
    ds = _resolve(results.problem, dataset)
    obs = _agents_as_observations(results.problem, ds, integration)
    S = scores_from_terms(*_terms(results, dataset, obs, ds, select=False), missing=0.0)
    S = S.reshape(ds.survey.shape + (results.spec.P,))
    return {label: S[..., p] for p, label in enumerate(results.spec.labels)}


def simulate_micro_data(results, dataset: MicroDataset, seed: int = 0) -> pd.DataFrame:
    """Draw ``dataset.observations`` observations with probability ∝ w_it s_ijt w_dijt at θ̂.

    Markets, agents (the problem's) and first choices are drawn jointly; for second-choice
    datasets the pair (j, k) is drawn with the second-choice probabilities s_ik(−j) − s_ik.

    Returns:
        ``micro_ids`` (0..N−1), ``market_ids``, ``agent_indices`` (position within the market, in
        agent_data's order), ``choice_indices`` (0..J_t−1, or 0..J_t with 0 = outside good),
        ``second_choice_indices`` (second-choice datasets), then the agent's ``weights``,
        ``nodes0..``, demographics and other numeric agent_data columns; it can be passed to
        :func:`micro_scores` as it is (each observation integrated over its own agent).
    """
    problem = results.problem
    ds = _resolve(problem, dataset)
    ctx = _context(results)
    omega = np.asarray(
        _weighted_probabilities(results.spec, ctx, jnp.asarray(ds.markets), jnp.asarray(ds.survey), ds.flags)
    )
    total = omega.sum()
    if not total > 0:
        raise BLPSpecificationError(f"micro dataset '{dataset.name}' has zero probability of any observation.")
    rng = np.random.default_rng(seed)
    draws = rng.choice(omega.size, size=int(dataset.observations), p=(omega / total).ravel())
    idx = np.unravel_index(draws, omega.shape)
    td, i = idx[0], idx[1]
    t = ds.markets[td]
    out = {
        "micro_ids": np.arange(len(draws)),
        "market_ids": problem.index.market_ids[t],
        "agent_indices": i,
        "choice_indices": idx[2],
    }
    if ds.flags[1]:
        out["second_choice_indices"] = idx[3]
    agents = problem.agents
    columns = {}
    if problem.agent_data is not None:
        columns = {k: v[t, i] for k, v in padded_agent_columns(problem.agent_data, problem.index, agents.I).items()}
    columns["weights"] = np.asarray(agents.weights)[t, i]
    nodes = np.asarray(agents.nodes)[t, i]
    for k in range(nodes.shape[1]):
        columns[f"nodes{k}"] = nodes[:, k]
    demographics = np.asarray(agents.demographics)[t, i]
    for d, name in enumerate(problem.demographics):
        columns[name] = demographics[:, d]
    for k, v in columns.items():
        if k not in out:
            out[k] = v
    return pd.DataFrame(out)


def optimal_micro_moments(
    results, dataset: MicroDataset, micro_data: pd.DataFrame, integration: Integration | None = None
) -> list[MicroMoment]:
    """One optimal micro moment per parameter (Conlon & Gortmaker 2025): match the mean score.

    Each moment's observed value is the mean observed score of ``micro_data``
    (:func:`micro_scores`); its single part's values are the agent scores at θ̂
    (:func:`agent_scores`, same ``integration``), looked up by the market position ``m.t``. The
    parts are for the problem of ``results`` (its agents). Without ``integration``, their model
    value at θ̂ is exactly zero (Σ w_i w_d ∂s = ∂D), which the mean observed score approaches as
    the micro data grow if they were sampled at θ̂.

    Raises:
        BLPDataError: some observation has P_n = 0 under ``dataset`` (its score is undefined).
    """
    observed = micro_scores(results, dataset, micro_data, integration)
    bad = observed.isna().any(axis=1)
    if bad.any():
        raise BLPDataError(
            f"micro_data observations {list(observed.index[bad])[:5]} have probability 0 under micro dataset "
            f"'{dataset.name}' (zero survey weight or choice probability), so their scores are undefined."
        )
    scores = agent_scores(results, dataset, integration)
    markets = _resolve(results.problem, dataset).markets
    T = results.problem.T
    moments = []
    for label, S in scores.items():
        full = np.zeros((T,) + S.shape[1:])
        full[markets] = S
        table = jnp.asarray(full)
        part = MicroPart(f"score[{label}]", dataset, lambda m, table=table: table[m.t])
        moments.append(MicroMoment(f"score[{label}]", float(observed[label].mean()), part))
    return moments


def results_at(problem, sigma=None, pi=None, rho=None, **solve_options):
    """A :class:`Results` evaluated at given parameters, without optimising.

    Runs :meth:`Problem.solve` (one step) with ``OptaxOptimizer(optax.set_to_zero(), max_steps=0)``,
    whose loop never updates θ: δ, β, the moments and their statistics are evaluated at ``sigma``, ``pi``, ``rho``
    (clipped to their bounds). ``results.converged`` is False (no optimality was checked).
    """
    solve_options.setdefault("throw", False)
    return problem.solve(
        sigma, pi, rho, method="1s", optimizer=OptaxOptimizer(optax.set_to_zero(), max_steps=0), **solve_options
    )
