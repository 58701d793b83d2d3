"""Scores of micro data, agent scores, simulated micro data and optimal micro moments.

Against PyBLP run in the test on its bundled Nevo data at the same θ (explicit micro_ids, weights
and nodes rows so integration is identical), for a first-choice dataset without and with the
outside good and a second-choice dataset, in the random-coefficients logit and RCNL; then exact
identities (agent scores of sampled agents are their observed scores; the optimal moments' model
value at θ̂ is zero) and statistical checks of simulated micro data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import blpjax
from blpjax.internal import Concentration, StatisticsOptions, choice_probabilities, results_at

pyblp = pytest.importorskip("pyblp")
pyblp.options.verbose = False

MARKETS = ["C01Q1", "C01Q2"]
X2 = ("1", "mushy", "prices")
SIGMA, PI = np.diag([0.5, 0.8, 2.0]), np.array([[1.0], [0.1], [-2.0]])
J_NEVO = 24  # products in every Nevo market


@pytest.fixture(scope="module")
def data():
    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.NEVO_AGENTS_LOCATION)
    keep = ["market_ids", "product_ids", "firm_ids", "shares", "prices", "mushy", "sugar"]
    products = products[keep + [f"demand_instruments{k}" for k in range(20)]].copy()
    agents = agents[["market_ids", "weights", "nodes0", "nodes1", "nodes2", "income"]].copy()
    return products, agents


def _both(data, nested):
    """blpjax Results and PyBLP ProblemResults at the same θ (no optimisation)."""
    products, agents = data
    rho = None
    if nested:
        products = products.assign(nesting_ids=products["mushy"].astype(int))
        rho = 0.3
    ours = blpjax.Problem(
        products, linear=("prices",), nonlinear=X2, absorb=("product_ids",), agent_data=agents, demographics=("income",)
    )
    formulations = (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation("1 + mushy + prices"))
    theirs = pyblp.Problem(formulations, products, pyblp.Formulation("0 + income"), agents)
    their_results = theirs.solve(
        SIGMA,
        PI,
        rho=rho,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
    )
    return results_at(ours, SIGMA, PI, rho), their_results


@pytest.fixture(scope="module")
def blp(data):
    return _both(data, False)


@pytest.fixture(scope="module")
def rcnl(data):
    return _both(data, True)


def _datasets(name):
    """The same micro dataset for blpjax (jnp on a MicroMarket) and PyBLP (numpy on t, p, a)."""
    if name == "first":  # (I, J), survey weights depend on the respondent's income
        ours = blpjax.MicroDataset(
            "first", 100, lambda m: jnp.outer(1 + m.agents["income"] ** 2, jnp.ones(m.J)), MARKETS
        )
        theirs = pyblp.MicroDataset(
            "first", 100, lambda t, p, a: np.outer(1 + a.demographics[:, 0] ** 2, np.ones(p.size)), market_ids=MARKETS
        )
    elif name == "outside":  # (I, 1+J), the outside good under-sampled
        ours = blpjax.MicroDataset(
            "outside", 100, lambda m: jnp.outer(jnp.exp(m.demographics[:, 0]), jnp.r_[0.5, jnp.ones(m.J)]), MARKETS
        )
        theirs = pyblp.MicroDataset(
            "outside",
            100,
            lambda t, p, a: np.outer(np.exp(a.demographics[:, 0]), np.r_[0.5, np.ones(p.size)]),
            market_ids=MARKETS,
        )
    else:  # (I, J, 1+J): inside first choices, second choices including the outside good
        ours = blpjax.MicroDataset("second", 100, lambda m: jnp.ones((m.I, m.J, 1 + m.J)).at[:, :, 0].set(2.0), MARKETS)

        def w(t, p, a):
            out = np.ones((a.size, p.size, 1 + p.size))
            out[:, :, 0] = 2.0
            return out

        theirs = pyblp.MicroDataset("second", 100, w, market_ids=MARKETS)
    return ours, theirs


def _micro_data(name, seed, N=24):
    """Random observations, 1 to 4 rows each (padded rows must be inert), explicit nodes and weights."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in range(N):
        t = MARKETS[n % 2]
        j = int(rng.integers(0, J_NEVO + (name == "outside")))
        obs = {"micro_ids": n, "market_ids": t, "choice_indices": j, "income": rng.normal()}
        if name == "second":
            # k is on the 1+J axis: k = j + 1 is the first choice itself (probability 0, NaN score); keep one
            k = j + 1 if n == 5 else int(rng.choice([k for k in range(J_NEVO + 1) if k != j + 1]))
            obs["second_choice_indices"] = k
        for _ in range(1 + n % 4):
            nodes = rng.normal(size=3)
            rows.append(
                {**obs, "weights": rng.uniform(0.2, 1.0), "nodes0": nodes[0], "nodes1": nodes[1], "nodes2": nodes[2]}
            )
    df = pd.DataFrame(rows)
    return df.assign(weights=df.weights / df.groupby("micro_ids").weights.transform("sum"))  # PyBLP warns otherwise


def _pyblp_data(df):
    return {c: df[c].to_numpy() for c in df.columns}


def _compare_agent_scores(ours, theirs, labels):
    scale = max(np.nanmax(np.abs(np.asarray(theirs[p][t]))) for p in range(len(labels)) for t in MARKETS)
    for p, label in enumerate(labels):
        for d, t in enumerate(MARKETS):
            expected = np.nan_to_num(np.asarray(theirs[p][t]))  # PyBLP leaves NaN where P_n = 0; we return 0
            got = ours[label][d]
            assert got.shape[:2] == expected.shape[:2]
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11 * scale, err_msg=f"{label} {t}")


CASES = [
    ("blp", "first"),
    ("blp", "outside"),
    ("blp", "second"),
    ("rcnl", "second"),  # second choices under RCNL are recomputed with j removed: the hardest case
    pytest.param("rcnl", "first", marks=pytest.mark.slow),
    pytest.param("rcnl", "outside", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("model", "name"), CASES)
def test_scores_match_pyblp(request, model, name):
    ours_results, their_results = request.getfixturevalue(model)
    ours_ds, their_ds = _datasets(name)
    df = _micro_data(name, seed=len(name) + 10 * (model == "rcnl"))
    got = ours_results.compute_micro_scores(ours_ds, df)
    expected = np.column_stack(their_results.compute_micro_scores(their_ds, _pyblp_data(df)))
    assert list(got.columns) == list(ours_results.spec.labels)
    assert got.shape == expected.shape == (df["micro_ids"].nunique(), ours_results.spec.P)
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-9, atol=1e-11 * np.nanmax(np.abs(expected)))
    if name == "second":
        assert np.isnan(got.loc[5]).all()  # P_n = 0: first and second choice coincide (NaN as PyBLP)
        assert np.isfinite(got.drop(index=5).to_numpy()).all()
    _compare_agent_scores(
        ours_results.compute_agent_scores(ours_ds),
        their_results.compute_agent_scores(their_ds),
        ours_results.spec.labels,
    )


def test_integration_matches_pyblp(blp):
    """Nodes built by a Gauss–Hermite product rule for each observation (the same rule in both)."""
    ours_results, their_results = blp
    ours_ds, their_ds = _datasets("outside")
    df = _micro_data("outside", seed=3).drop_duplicates("micro_ids")[["market_ids", "choice_indices", "income"]]
    got = ours_results.compute_micro_scores(ours_ds, df, integration=blpjax.Integration("product", 3))
    expected = np.column_stack(
        their_results.compute_micro_scores(their_ds, _pyblp_data(df), integration=pyblp.Integration("product", 3))
    )
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-9, atol=1e-11 * np.abs(expected).max())
    _compare_agent_scores(
        ours_results.compute_agent_scores(ours_ds, integration=blpjax.Integration("product", 3)),
        their_results.compute_agent_scores(their_ds, integration=pyblp.Integration("product", 3)),
        ours_results.spec.labels,
    )


def test_simulated_choice_frequencies_match_model_probabilities(blp, data):
    """200,000 draws: (market, choice) frequencies against Σ_i w_i s_ij w_dij / D (chi-square), and the
    agents' columns merged in."""
    ours_results, _ = blp
    _, agents = data
    ds = blpjax.MicroDataset(
        "outside", 200_000, lambda m: jnp.outer(jnp.exp(m.demographics[:, 0]), jnp.r_[0.5, jnp.ones(m.J)]), MARKETS
    )
    sim = ours_results.simulate_micro_data(ds, seed=1)
    assert len(sim) == 200_000
    assert list(sim.columns[:4]) == ["micro_ids", "market_ids", "agent_indices", "choice_indices"]
    # the model's probabilities, from first principles with PyBLP-free arrays of the problem
    problem = ours_results.problem
    theta = ours_results.theta
    positions = [list(problem.index.market_ids).index(t) for t in MARKETS]
    expected = []
    for t in positions:
        market = jax.tree_util.tree_map(lambda a, t=t: a[t], problem.setup.market)
        s = np.asarray(choice_probabilities(ours_results.final.delta[t], theta, market, True, False, False))
        w = np.asarray(market.weights)
        income = agents.loc[agents.market_ids == problem.index.market_ids[t], "income"].to_numpy()
        expected.append((w[:, None] * s * np.outer(np.exp(income), np.r_[0.5, np.ones(J_NEVO)])).sum(axis=0))
    expected = np.concatenate(expected)
    expected /= expected.sum()
    cells = sim.groupby(["market_ids", "choice_indices"]).size()
    observed = np.array([cells.get((t, j), 0) for t in MARKETS for j in range(J_NEVO + 1)], dtype=float)
    N = len(sim)
    chi2 = np.sum((observed - N * expected) ** 2 / (N * expected))
    df = expected.size - 1
    assert chi2 < df + 8 * np.sqrt(2 * df)  # a wrong sampler (no w_d, no w_i, ...) gives chi2 in the thousands
    # each draw carries its agent's columns
    first = sim.iloc[:50]
    for _, row in first.iterrows():
        a = agents[agents.market_ids == row.market_ids].iloc[int(row.agent_indices)]
        assert row.income == a.income and row.nodes2 == a.nodes2 and row.weights == a.weights


def test_second_choice_simulation_frequencies(blp):
    """Second choices: the share of draws with the outside good as second choice against the model."""
    ours_results, _ = blp
    ds, _ = _datasets("second")
    ds = blpjax.MicroDataset("second", 100_000, ds.weights, MARKETS)
    sim = ours_results.simulate_micro_data(ds, seed=2)
    assert (sim.choice_indices + 1 != sim.second_choice_indices).all()  # never the first choice again
    problem, theta = ours_results.problem, ours_results.theta
    views = problem.micro_market_views()
    omega = []
    for t in [list(problem.index.market_ids).index(m) for m in MARKETS]:
        market = jax.tree_util.tree_map(lambda a, t=t: a[t], problem.setup.market)
        survey = np.asarray(ds.weights(jax.tree_util.tree_map(lambda a, t=t: a[t], views)))  # (I, J, 1 + J)
        s = choice_probabilities(ours_results.final.delta[t], theta, market, False, True, True)
        omega.append(np.asarray(market.weights)[:, None, None] * survey * np.asarray(s))
    omega = np.stack(omega)
    p = omega[..., 0].sum() / omega.sum()
    f = (sim.second_choice_indices == 0).mean()
    assert abs(f - p) < 5 * np.sqrt(p * (1 - p) / len(sim))


def test_optimal_micro_moments_at_the_estimate(blp):
    """Exact: scores of sampled agents are their agent scores, and the optimal moments' model value at θ̂ is
    Σ w_i w_d ∂s/D − ∂D/D = 0. Statistical: the mean score of micro data simulated at θ̂ is 0 (E[S] = 0)."""
    ours_results, _ = blp
    ds, _ = _datasets("first")
    ds = blpjax.MicroDataset("first", 20_000, ds.weights, MARKETS)
    sim = ours_results.simulate_micro_data(ds, seed=0)  # the Results methods delegate to blpjax._scores
    S = ours_results.compute_micro_scores(ds, sim)  # each observation integrated over its own sampled agent
    A = ours_results.compute_agent_scores(ds)
    d = sim.market_ids.map({t: k for k, t in enumerate(MARKETS)}).to_numpy()
    for label in ours_results.spec.labels:
        np.testing.assert_allclose(
            S[label].to_numpy(), A[label][d, sim.agent_indices, sim.choice_indices], rtol=1e-10, atol=1e-12
        )
    se = S.std(ddof=1) / np.sqrt(len(S))
    assert (S.mean().abs() < 5 * se).all(), (S.mean(), se)

    moments = ours_results.optimal_micro_moments(ds, sim)
    assert [m.name for m in moments] == [f"score[{label}]" for label in ours_results.spec.labels]
    np.testing.assert_allclose([m.value for m in moments], S.mean().to_numpy(), rtol=1e-12)
    micro, _ = ours_results.problem.build_micro(moments)
    v = _part_values(ours_results, micro)
    scale = max(np.abs(a).max() for a in A.values())
    np.testing.assert_allclose(v, 0.0, atol=1e-12 * scale)
    # the same parts at another θ are not zero: the check can fail
    other = results_at(ours_results.problem, SIGMA * 1.5, PI)
    v_other = _part_values(other, micro)
    assert np.abs(np.asarray(v_other)).max() > 1e-3


def _part_values(results, micro):
    """The model values of single-part micro moments (f the identity) at the results' θ and δ."""
    problem = results.problem
    engine = problem.engine(results.spec, blpjax.ContractionConfig(), micro=micro)
    conc = Concentration.build_host(problem.setup.ZX_all(host=True), np.eye(problem.setup.M + micro.MM))
    stats = engine.statistics(jnp.asarray(results.final.theta), results.final.delta, conc, StatisticsOptions())
    return np.asarray(stats.micro_values)


def test_bad_micro_data_is_reported(blp):
    ours_results, _ = blp
    ds, _ = _datasets("first")
    df = _micro_data("first", seed=0)
    with pytest.raises(blpjax.BLPDataError, match="choice_indices"):
        ours_results.compute_micro_scores(
            ds, df.assign(choice_indices=J_NEVO)
        )  # the outside good is not in this dataset
    with pytest.raises(blpjax.BLPDataError, match="nodes2"):
        ours_results.compute_micro_scores(ds, df.drop(columns="nodes2"))
    with pytest.raises(blpjax.BLPDataError, match="does not cover"):
        ours_results.compute_micro_scores(ds, df.assign(market_ids=ours_results.problem.index.market_ids[5]))
    second, _ = _datasets("second")
    with pytest.raises(blpjax.BLPDataError, match="second_choice_indices"):
        ours_results.compute_micro_scores(second, df)
