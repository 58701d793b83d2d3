"""Simulated studies: R datasets from known truth, and micro moments observed in surveys simulated from it.

:func:`simulate_replications` / :func:`simulated_problems` draw R datasets of the simulated model
(:mod:`._simulate`). For micro moments, :func:`survey_micro_moments` gives a moment the observed
value of a survey of N_d consumers drawn from the true model in that replication (sampling noise of
size N_d, the size the micro covariance block assumes), and :func:`optimal_micro_moments_at_truth`
builds optimal (score) micro moments with the scores evaluated at the true parameters: an
infeasible, "oracle" simplification of Conlon & Gortmaker (2025), who evaluate them at a first-step
θ̂. See ``notebooks/monte_carlo.ipynb``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from .._base.errors import BLPSpecificationError
from .._engine.pieces import moment_values
from .._estimation.optimize import OptaxOptimizer
from .._model.integration import Integration
from .micro_data import MicroDataset, MicroMoment, MicroPart
from .problem import Problem
from .scores import optimal_micro_moments, simulate_micro_data
from .simulate import SimulationConfig, simulate

SIMULATED_SPECIFICATION = {
    "linear": ("1", "x", "prices"),
    "nonlinear": ("1", "prices"),
    "demographics": ("income",),
}


def _drop_constant_instruments(products: pd.DataFrame) -> pd.DataFrame:
    """Drop excluded instruments that are constant (the product count, with a fixed design) and renumber."""
    columns = [c for c in products.columns if c.startswith("demand_instruments")]
    keep = [c for c in columns if products[c].nunique() > 1]
    out = products.drop(columns=columns)
    for k, c in enumerate(keep):
        out[f"demand_instruments{k}"] = products[c].to_numpy()
    return out


def simulate_replications(
    config: SimulationConfig, replications: int, seed: int = 0
) -> tuple[list[tuple[pd.DataFrame, pd.DataFrame]], dict]:
    """Simulate ``replications`` datasets with seeds ``seed``, ``seed + 1``, ...

    Excluded instruments that are constant (the number of products, in a fixed design) are
    dropped and the rest renumbered, so that the instruments have full rank.

    Returns:
        ``(product_data, agent_data)`` per replication, and the truth: a mapping from parameter
        label (as in ``Results.parameters``) to value, for every Σ, Π entry and β.
    """
    data = []
    for r in range(replications):
        products, agents, _ = simulate(replace(config, seed=seed + r))
        data.append((_drop_constant_instruments(products), agents))
    x2, dem = SIMULATED_SPECIFICATION["nonlinear"], SIMULATED_SPECIFICATION["demographics"]
    sigma, pi = np.diag(config.sigma), np.asarray(config.pi, np.float64).reshape(len(x2), len(dem))
    truth = {f"sigma[{x2[r]}, {x2[c]}]": sigma[r, c] for r, c in zip(*np.tril_indices(len(x2)), strict=True)}
    truth |= {f"pi[{x2[r]}, {dem[c]}]": pi[r, c] for r, c in np.ndindex(pi.shape)}
    truth |= {f"beta[{n}]": b for n, b in zip(SIMULATED_SPECIFICATION["linear"], config.beta, strict=True)}
    return data, truth


def simulated_problems(config: SimulationConfig, replications: int, seed: int = 0) -> tuple[list[Problem], dict]:
    """:func:`simulate_replications`, each dataset made a :class:`Problem` of the simulated specification."""
    data, truth = simulate_replications(config, replications, seed)
    problems = [Problem(products, agent_data=agents, **SIMULATED_SPECIFICATION) for products, agents in data]
    return problems, truth


def income_price_covariance(observations: int) -> MicroMoment:
    """A micro moment of the simulated model: Cov(income, price of the product bought | inside purchase).

    A survey of ``observations`` buyers (weights 1 on every inside good of every market, 0 on the
    outside good) records each buyer's income and the price paid. With π on prices × income,
    richer buyers are less price sensitive and buy dearer products, so the covariance moves with
    π: this is the kind of statistic that identifies Π beyond the cross-market variation of
    incomes. Three parts (E[income·price], E[income], E[price]) combined by f(v) = v₀ − v₁v₂; the
    delta method (autodiff) gives its covariance. The observed value here is a placeholder:
    :func:`survey_micro_moments` replaces it with a simulated survey's.
    """
    buyers = MicroDataset("buyers survey", int(observations), lambda m: jnp.ones((m.I, m.J)))
    parts = [
        MicroPart("E[income × prices | j > 0]", buyers, lambda m: jnp.outer(m.agents["income"], m.products["prices"])),
        MicroPart("E[income | j > 0]", buyers, lambda m: jnp.outer(m.agents["income"], jnp.ones(m.J))),
        MicroPart("E[prices | j > 0]", buyers, lambda m: jnp.outer(jnp.ones(m.I), m.products["prices"])),
    ]
    return MicroMoment("Cov(income, prices | j > 0)", 0.0, parts, _covariance)


def _covariance(v):
    return v[0] - v[1] * v[2]


_NO_STEP: OptaxOptimizer | None = None


def results_at_truth(problem: Problem, sigma=None, pi=None, **solve_options):
    """:func:`._scores.results_at` with one optimiser instance, so every replication reuses its compiled program.

    ``solve_options`` go to :meth:`Problem.solve` (e.g. ``micro_moments``).

    (``results_at`` builds a new ``optax.set_to_zero()`` per call; the optimiser is a static
    argument of the jitted loop, so each call would compile it again, seconds per replication.)
    """
    global _NO_STEP
    if _NO_STEP is None:
        _NO_STEP = OptaxOptimizer(optax.set_to_zero(), max_steps=0)
    solve_options.setdefault("throw", False)
    return problem.solve(sigma, pi, method="1s", optimizer=_NO_STEP, **solve_options)


def _micro_config(moments: Sequence[MicroMoment]):
    """Datasets and parts in the order :func:`._micro_data.build_micro` numbers them."""
    datasets, parts = [], []
    for m in moments:
        for p in m.part_list:
            if p not in parts:
                parts.append(p)
            if p.dataset not in datasets:
                datasets.append(p.dataset)
    return datasets, parts


def survey_micro_moments(
    problem: Problem, moments: Sequence[MicroMoment], sigma=None, pi=None, seed: int = 0, truth_results=None
) -> list[MicroMoment]:
    """``moments`` with observed values from a survey simulated from the true model.

    Each micro dataset d draws N_d = ``observations`` consumers (market, agent, choice) with
    probability ∝ w_it s_ijt(θ₀) w_dijt at the true parameters (:func:`._scores.simulate_micro_data`
    on the problem's own agents, which generated its shares); every part's values are averaged
    over its dataset's draws and each moment's function applied to the averages. The observed
    values therefore carry the sampling noise of a survey of N_d, the size the micro block of the
    moment covariances assumes.

    Args:
        problem: one replication.
        moments: the micro moments (their observed values are ignored).
        sigma, pi: the true parameters.
        seed: seed of the survey draws (dataset k of the moments uses ``seed + k``).
        truth_results: :func:`results_at_truth` if already computed.
    """
    moments = list(moments)
    results = truth_results if truth_results is not None else results_at_truth(problem, sigma, pi)
    setup, _ = problem.build_micro(moments)
    datasets, _ = _micro_config(moments)
    position = {m: t for t, m in enumerate(problem.index.market_ids.tolist())}
    means = []
    for d, (dataset, arrays, spec) in enumerate(zip(datasets, setup.datasets, setup.specs, strict=True)):
        draws = simulate_micro_data(results, dataset, seed=seed + d)
        t = np.asarray([position[m] for m in draws["market_ids"]])
        index = (t, slice(None), draws["agent_indices"].to_numpy(), draws["choice_indices"].to_numpy())
        if spec.second:
            index = index + (draws["second_choice_indices"].to_numpy(),)
        values = np.asarray(arrays.dense_values())  # (T, P_d, I, A[, B])
        means.append(values[index].mean(axis=0))
    v = jnp.asarray([means[d][k] for d, k in setup.parts])
    observed = np.asarray(moment_values(v, setup))
    return [MicroMoment(m.name, float(o), m.parts, m.function) for m, o in zip(moments, observed, strict=True)]


def optimal_micro_moments_at_truth(
    problem: Problem,
    dataset: MicroDataset,
    sigma=None,
    pi=None,
    seed: int = 0,
    integration: Integration | None = None,
    truth_results=None,
) -> list[MicroMoment]:
    """Optimal micro moments (one per parameter) with scores evaluated at the true parameters.

    A survey of ``dataset.observations`` consumers is simulated from the true model
    (:func:`._scores.simulate_micro_data`); each moment's observed value is the survey's mean score
    ∂ log P_n/∂θ and its model analogue averages the agent scores with the dataset's weights
    (:func:`._scores.optimal_micro_moments`).

    Simplification: Conlon & Gortmaker (2025) evaluate the scores at a first-step estimate θ̂
    (feasible); here they are evaluated at the truth θ₀ (infeasible, the moment an oracle would
    choose), which is what a first step converges to and avoids a preliminary estimation per
    replication. The scores are then fixed values of the parts: the estimation treats them as data.

    Args:
        problem: one replication.
        dataset: the micro dataset that is surveyed (its ``observations`` is N_d).
        sigma, pi: the true parameters.
        seed: seed of the survey draws.
        integration: integrates each surveyed consumer's unobserved tastes ν (the survey records
            market, demographics and choice, not ν); default None treats the drawn agent's own ν
            as observed, as :func:`._scores.simulate_micro_data`'s output does.
        truth_results: :func:`results_at_truth` if already computed.
    """
    results = truth_results if truth_results is not None else results_at_truth(problem, sigma, pi)
    micro_data = simulate_micro_data(results, dataset, seed=seed)
    return optimal_micro_moments(results, dataset, micro_data, integration)


def simulated_micro_moments(
    problems: Sequence[Problem],
    sigma=None,
    pi=None,
    *,
    moments: Sequence[MicroMoment] | None = None,
    optimal: MicroDataset | None = None,
    integration: Integration | None = None,
    seed: int = 0,
) -> list[list[MicroMoment]]:
    """Per replication, micro moments whose observed values come from surveys simulated at the truth.

    ``moments`` get their observed values from :func:`survey_micro_moments`; ``optimal`` adds one
    optimal micro moment per parameter (:func:`optimal_micro_moments_at_truth`) for that dataset.
    Replication r draws its surveys with seeds from ``seed + 1000 r``.
    """
    if moments is None and optimal is None:
        raise BLPSpecificationError("give moments= (micro moments to survey) and/or optimal= (a MicroDataset).")
    out = []
    for r, problem in enumerate(problems):
        truth_results = results_at_truth(problem, sigma, pi)
        these = []
        if moments is not None:
            these += survey_micro_moments(problem, moments, seed=seed + 1000 * r, truth_results=truth_results)
        if optimal is not None:
            these += optimal_micro_moments_at_truth(
                problem, optimal, seed=seed + 1000 * r + 500, integration=integration, truth_results=truth_results
            )
        out.append(these)
    return out
