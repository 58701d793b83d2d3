"""blpjax against PyBLP 1.3.0 (run inside the tests) on plain and nested logit problems.

Every expected number comes from PyBLP solving the same problem in the same test session; nothing
is hard-coded. Closed-form problems (plain logit) must agree to 1e-8 relative. Nested logit needs
an outer optimiser whose stopping rules differ between the two packages, so optimised estimates
are compared to 1e-6 relative, and in addition PyBLP is evaluated (``Optimization('return')``) at
blpjax's own ρ̂, where every statistic must agree to 1e-8 relative.

PyBLP conventions relied on here:
- ``ProblemResults.parameter_covariances`` is the asymptotic covariance *before* division by N
  (``se = sqrt(diag / N)``); blpjax's ``Results.covariances`` is already divided by N.
- Stacked post-estimation arrays are N × J_max in product_data's row order, NaN-padded in PyBLP,
  zero-padded in blpjax; columns follow the order of products within their market.
- Market-level outputs (consumer surplus) follow ``np.unique`` (sorted) market ids in PyBLP and
  first-appearance order in blpjax, so they are aligned by market id.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import blpjax

pyblp = pytest.importorskip("pyblp")
pyblp.options.verbose = False

RTOL = 1e-8  # closed-form problems / PyBLP evaluated at blpjax's estimates
RTOL_OPT = 1e-6  # independently optimised nested-logit estimates
TIGHT = dict(gtol=1e-12)

# Largest relative differences seen, printed at module teardown with ``pytest -s``.
_MAX_REL: dict[str, float] = {}


def _close(actual, desired, what: str, rtol: float = RTOL):
    """assert_allclose with an absolute floor relative to the array's scale (for entries ~0).

    Non-finite entries of ``desired`` (PyBLP's NaN padding) are skipped; ``actual`` must then be
    finite there (blpjax pads with zeros).
    """
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.size == desired.size, f"{what}: size {actual.shape} vs {desired.shape}"
    actual, desired = actual.reshape(desired.shape), desired
    keep = np.isfinite(desired)
    assert np.all(np.isfinite(actual)), f"{what}: blpjax returned non-finite values"
    a, d = actual[keep], desired[keep]
    scale = float(np.max(np.abs(d))) if d.size else 1.0
    atol = 1e-2 * rtol * scale
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=what)
    denom = np.maximum(np.abs(d), 1e-2 * scale)
    rel = float(np.max(np.abs(a - d) / denom)) if d.size else 0.0
    _MAX_REL[what] = max(rel, _MAX_REL.get(what, 0.0))


@pytest.fixture(scope="module", autouse=True)
def _report_differences():
    yield
    if _MAX_REL:
        width = max(map(len, _MAX_REL))
        print("\nlargest relative differences blpjax vs PyBLP (|a-d| / max(|d|, 1e-2 max|d|)):")
        for what, rel in sorted(_MAX_REL.items(), key=lambda kv: -kv[1]):
            print(f"  {what:<{width}}  {rel:.2e}")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nevo() -> pd.DataFrame:
    df = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    df["clustering_ids"] = df["product_ids"]
    return df


def simulate_nested(seed: int = 0, T: int = 40, H: int = 3, rho: float = 0.5) -> pd.DataFrame:
    """An unbalanced nested-logit market (5–12 products per market, 3 nests), numpy only.

    Utility δ_j = β0 + βx x_j + α p_j + ξ_j; prices load on ξ (endogenous) and on cost shifters
    w0..w2, which with the count of products in the own nest (in total and per nest, to identify
    a ρ per nest) are the excluded instruments.
    """
    rng = np.random.default_rng(seed)
    beta0, beta_x, alpha = 1.0, 1.0, -2.0
    frames = []
    for t in range(T):
        J = int(rng.integers(5, 13))
        nest = rng.integers(0, H, J)
        x = rng.normal(size=J)
        w = rng.normal(size=(J, 3))
        xi = 0.5 * rng.normal(size=J)
        prices = 2.0 + 0.6 * w[:, 0] + 0.4 * w[:, 1] + 0.2 * w[:, 2] + 0.5 * xi + 0.2 * rng.normal(size=J)
        delta = beta0 + beta_x * x + alpha * prices + xi
        v = delta / (1 - rho)
        iv = np.full(H, -np.inf)
        for h in np.unique(nest):
            iv[h] = np.log(np.exp(v[nest == h]).sum())
        nest_util = np.where(np.isfinite(iv), (1 - rho) * iv, -np.inf)
        denom = 1 + np.exp(nest_util[np.isfinite(nest_util)]).sum()
        shares = np.exp(nest_util[nest]) / denom * np.exp(v - iv[nest])
        counts = np.bincount(nest, minlength=H)[nest]
        frames.append(
            pd.DataFrame(
                {
                    "market_ids": f"m{t:02d}",
                    "product_ids": [f"p{j:02d}" for j in range(J)],
                    "firm_ids": np.arange(J),
                    "nesting_ids": [f"n{h}" for h in nest],
                    "shares": shares,
                    "prices": prices,
                    "x": x,
                    "demand_instruments0": w[:, 0],
                    "demand_instruments1": w[:, 1],
                    "demand_instruments2": w[:, 2],
                    "demand_instruments3": counts.astype(float),
                    **{f"demand_instruments{4 + h}": np.where(nest == h, counts, 0.0) for h in range(H - 1)},
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    outside = 1 - df.groupby("market_ids")["shares"].sum()
    assert outside.between(0.01, 0.99).all()
    return df


@pytest.fixture(scope="module")
def nested_df() -> pd.DataFrame:
    return simulate_nested()


# ----------------------------------------------------------------------------------------------
# shared comparisons
# ----------------------------------------------------------------------------------------------
def compare_post_estimation(res, pr, df: pd.DataFrame, tag: str, rtol: float = RTOL, markets=None):
    """Elasticities, diversion ratios, counterfactual shares and consumer surplus."""
    _close(
        res.compute_elasticities("prices", layout="stacked"),
        pr.compute_elasticities("prices"),
        f"{tag} elasticities",
        rtol,
    )
    _close(
        res.compute_diversion_ratios("prices", layout="stacked"),
        pr.compute_diversion_ratios("prices"),
        f"{tag} diversion ratios",
        rtol,
    )

    new_prices = df["prices"].to_numpy() * 0.9
    ours = res.compute_shares("prices", new_prices)
    _close(ours, pr.compute_shares(new_prices).ravel(), f"{tag} counterfactual shares (all markets)", rtol)
    markets = list(pd.unique(df["market_ids"]))[:3] if markets is None else markets
    for m in markets:
        rows = (df["market_ids"] == m).to_numpy()
        _close(
            ours[rows],
            pr.compute_shares(new_prices[rows], market_id=m).ravel(),
            f"{tag} counterfactual shares (one market)",
            rtol,
        )
    # unchanged prices reproduce the observed shares
    _close(res.compute_shares("prices"), df["shares"].to_numpy(), f"{tag} shares at observed prices", 1e-10)

    theirs = pd.Series(pr.compute_consumer_surpluses().ravel(), index=pr.problem.unique_market_ids)
    cs = res.compute_consumer_surplus()
    _close(cs.to_numpy(), theirs.loc[cs.index].to_numpy(), f"{tag} consumer surplus", rtol)
    cs_new = res.compute_consumer_surplus(prices=new_prices)
    theirs_new = pd.Series(pr.compute_consumer_surpluses(prices=new_prices).ravel(), index=pr.problem.unique_market_ids)
    _close(cs_new.to_numpy(), theirs_new.loc[cs_new.index].to_numpy(), f"{tag} consumer surplus at 0.9 p", rtol)


def pyblp_instrument_order(res) -> np.ndarray:
    """Positions in PyBLP's Z of blpjax's instruments.

    blpjax orders Z as [exogenous X1 columns, demand_instruments0..]; PyBLP builds
    ``ZD = [demand_instruments0.., exogenous X1 columns]``. Same set, different order.
    """
    z_names = list(res.problem.index.z_names)
    exogenous = [n for n in z_names if not n.startswith("demand_instruments")]
    excluded = [n for n in z_names if n.startswith("demand_instruments")]
    assert z_names == exogenous + excluded
    pyblp_names = excluded + exogenous
    return np.array([pyblp_names.index(n) for n in z_names])


def compare_linear(res, pr, tag: str, rtol: float = RTOL, N: int | None = None):
    """β, its SEs, objective, ξ, weighting matrices and covariances."""
    assert list(res.beta.index) == [str(label) for label in pr.beta_labels], (list(res.beta.index), pr.beta_labels)
    _close(res.beta.to_numpy(), pr.beta.ravel(), f"{tag} beta", rtol)
    _close(res.beta_se.to_numpy(), pr.beta_se.ravel(), f"{tag} beta_se", rtol)
    _close(res.objective, float(np.squeeze(pr.objective)), f"{tag} objective", rtol)
    _close(res.xi, pr.xi.ravel(), f"{tag} xi", rtol)
    perm = pyblp_instrument_order(res)
    _close(res.W, pr.W[np.ix_(perm, perm)], f"{tag} W", rtol)
    _close(res.updated_W, pr.updated_W[np.ix_(perm, perm)], f"{tag} updated_W", rtol)
    N = N or pr.problem.N
    _close(res.covariances.to_numpy(), pr.parameter_covariances / N, f"{tag} covariances", rtol)


# ----------------------------------------------------------------------------------------------
# 1. Nevo data, plain logit, product fixed effects absorbed
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nevo_fe_problems(nevo):
    ours = blpjax.Problem(nevo, linear=("prices",), absorb=("product_ids",))
    theirs = pyblp.Problem(pyblp.Formulation("prices", absorb="C(product_ids)"), nevo)
    return ours, theirs


def test_nevo_fe_labels(nevo_fe_problems):
    """PyBLP drops the formulation's implicit constant under absorption: X1 is just prices."""
    _, theirs = nevo_fe_problems
    assert theirs.K1 == 1
    res = theirs.solve(method="1s")
    assert [str(label) for label in res.beta_labels] == ["prices"]


@pytest.mark.parametrize("method", ["1s", "2s"])
@pytest.mark.parametrize("se_type", ["robust", "unadjusted", "clustered"])
def test_nevo_logit_product_fe(nevo_fe_problems, method, se_type):
    ours, theirs = nevo_fe_problems
    res = ours.solve(method=method, se_type=se_type)
    pr = theirs.solve(method=method, se_type=se_type)
    compare_linear(res, pr, f"nevo FE {method} {se_type}")
    assert len(res.steps) == (1 if method == "1s" else 2)


@pytest.mark.parametrize("W_type", ["unadjusted", "clustered"])
def test_nevo_logit_product_fe_W_type(nevo_fe_problems, W_type):
    """Two-step GMM whose second-step weighting matrix is not the robust one."""
    ours, theirs = nevo_fe_problems
    res = ours.solve(method="2s", W_type=W_type, se_type=W_type)
    pr = theirs.solve(method="2s", W_type=W_type, se_type=W_type)
    compare_linear(res, pr, f"nevo FE 2s W_type={W_type}")


@pytest.mark.parametrize("method", ["1s", "2s"])
def test_nevo_logit_product_fe_post_estimation(nevo, nevo_fe_problems, method):
    ours, theirs = nevo_fe_problems
    res = ours.solve(method=method)
    pr = theirs.solve(method=method)
    compare_post_estimation(res, pr, nevo, f"nevo FE {method}", markets=["C01Q1", "C65Q2"])


def test_nevo_logit_unbalanced(nevo):
    """Dropping one product from one market (padding becomes active) still matches PyBLP."""
    df = nevo.drop(index=nevo.index[(nevo["market_ids"] == "C03Q1")][5]).reset_index(drop=True)
    assert df.groupby("market_ids").size().nunique() == 2
    res = blpjax.Problem(df, linear=("prices",), absorb=("product_ids",)).solve(method="2s", se_type="clustered")
    pr = pyblp.Problem(pyblp.Formulation("prices", absorb="C(product_ids)"), df).solve(method="2s", se_type="clustered")
    compare_linear(res, pr, "nevo unbalanced 2s clustered")
    compare_post_estimation(res, pr, df, "nevo unbalanced 2s", markets=["C03Q1", "C01Q2"])


# ----------------------------------------------------------------------------------------------
# 2. two-way fixed effects
# ----------------------------------------------------------------------------------------------
def test_nevo_logit_two_way_fe(nevo):
    res = blpjax.Problem(nevo, linear=("prices",), absorb=("market_ids", "product_ids")).solve(method="1s")
    formulation = pyblp.Formulation("prices", absorb="C(market_ids) + C(product_ids)", absorb_method="dummy")
    pr = pyblp.Problem(formulation, nevo).solve(method="1s")
    compare_linear(res, pr, "nevo two-way FE 1s")


# ----------------------------------------------------------------------------------------------
# 3. constant + characteristics, no fixed effects
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["1s", "2s"])
def test_nevo_logit_constant_sugar(nevo, method):
    res = blpjax.Problem(nevo, linear=("1", "prices", "sugar")).solve(method=method, se_type="robust")
    pr = pyblp.Problem(pyblp.Formulation("1 + prices + sugar"), nevo).solve(method=method, se_type="robust")
    assert [str(label) for label in pr.beta_labels] == ["1", "prices", "sugar"]
    assert pr.problem.MD == len(res.problem.index.z_names) == 22
    compare_linear(res, pr, f"nevo 1+prices+sugar {method}")
    compare_post_estimation(res, pr, nevo, f"nevo 1+prices+sugar {method}")


# ----------------------------------------------------------------------------------------------
# 4. nested logit (simulated, unbalanced)
# ----------------------------------------------------------------------------------------------
FORMULATION = "1 + prices + x"
LINEAR = ("1", "prices", "x")


def solve_nested(df: pd.DataFrame, rho0, rho_by_nest: bool = False):
    """Both packages from the same start with tight gradient tolerances (one-step GMM)."""
    res = blpjax.Problem(df, linear=LINEAR, rho_by_nest=rho_by_nest).solve(
        rho=rho0, method="1s", optimizer=blpjax.ScipyOptimizer("l-bfgs-b", **TIGHT)
    )
    problem = pyblp.Problem(pyblp.Formulation(FORMULATION), df)
    pr = problem.solve(rho=rho0, method="1s", optimization=pyblp.Optimization("l-bfgs-b", TIGHT))
    return res, pr, problem


def evaluate_pyblp_at(problem, rho, method: str = "1s", se_type: str = "robust"):
    """PyBLP's statistics at a given ρ (no optimisation)."""
    return problem.solve(rho=np.asarray(rho), method=method, se_type=se_type, optimization=pyblp.Optimization("return"))


@pytest.fixture(scope="module")
def nested_common(nested_df):
    return solve_nested(nested_df, 0.3)


@pytest.fixture(scope="module")
def nested_by_nest(nested_df):
    H = nested_df["nesting_ids"].nunique()
    return solve_nested(nested_df, np.full(H, 0.3), rho_by_nest=True)


def estimated_rho(res) -> np.ndarray:
    """ρ̂ as PyBLP shapes it: one entry when shared, one per nest with ``rho_by_nest``.

    blpjax's ``Results.rho`` is the per-nest vector θ uses, so a shared ρ appears H times.
    """
    rho = np.asarray(res.rho).ravel()
    if res.problem.rho_by_nest:
        return rho
    assert np.all(rho == rho[0])
    return rho[:1]


def _compare_nested_estimates(res, pr, tag):
    # not ``res.converged``: with gtol=1e-12, SciPy's L-BFGS-B can land on the optimum (|∇q| ~ 1e-11)
    # and then report an ABNORMAL line-search exit. What matters is a vanishing gradient.
    assert np.max(np.abs(res.gradient)) < 1e-6, res.summary()
    _close(estimated_rho(res), pr.rho.ravel(), f"{tag} rho (optimised)", RTOL_OPT)
    _close(res.rho_se.ravel(), pr.rho_se.ravel(), f"{tag} rho_se (optimised)", RTOL_OPT)
    _close(res.beta.to_numpy(), pr.beta.ravel(), f"{tag} beta (optimised)", RTOL_OPT)
    _close(res.beta_se.to_numpy(), pr.beta_se.ravel(), f"{tag} beta_se (optimised)", RTOL_OPT)
    # the objective is flat at the optimum: agreement is second order in the parameter gap
    _close(res.objective, float(np.squeeze(pr.objective)), f"{tag} objective (optimised)", RTOL_OPT)
    _close(
        res.compute_elasticities("prices", layout="stacked"),
        pr.compute_elasticities("prices"),
        f"{tag} elasticities (optimised)",
        RTOL_OPT,
    )


def _compare_nested_at_our_estimate(res, problem, df, tag):
    pr = evaluate_pyblp_at(problem, estimated_rho(res))
    _close(pr.rho.ravel(), estimated_rho(res), f"{tag} rho passed through", 1e-14)
    _close(res.rho_se.ravel(), pr.rho_se.ravel(), f"{tag} rho_se", RTOL)
    compare_linear(res, pr, tag)
    # at an optimum both gradients are optimiser noise (blpjax's L-BFGS-B may stop on its relative
    # reduction of the objective before gtol): only check that both are ~0
    assert np.max(np.abs(res.gradient)) < 1e-6 and np.max(np.abs(pr.gradient)) < 1e-6
    compare_post_estimation(res, pr, df, tag)
    return pr


def test_nested_logit_estimates(nested_common):
    res, pr, _ = nested_common
    assert estimated_rho(res).shape == (1,) and res.rho_se.shape == (1,)
    assert 0.2 < float(estimated_rho(res)[0]) < 0.8  # true ρ = 0.5
    _compare_nested_estimates(res, pr, "nested")


def test_nested_logit_at_blpjax_estimate(nested_df, nested_common):
    res, _, problem = nested_common
    _compare_nested_at_our_estimate(res, problem, nested_df, "nested @ blpjax rho")


@pytest.mark.parametrize("rho_by_nest", [False, True])
def test_nested_logit_away_from_optimum(nested_df, rho_by_nest):
    """Every statistic, the gradient included, at a ρ that is not an optimum (no optimisation).

    blpjax's L-BFGS-B with a huge ``gtol`` stops after evaluating the starting point.
    """
    H = nested_df["nesting_ids"].nunique()
    rho = np.array([0.3, 0.4, 0.2]) if rho_by_nest else np.array([0.3])
    assert rho.size in (1, H)
    res = blpjax.Problem(nested_df, linear=LINEAR, rho_by_nest=rho_by_nest).solve(
        rho=rho, method="1s", optimizer=blpjax.ScipyOptimizer("l-bfgs-b", gtol=1e10)
    )
    _close(estimated_rho(res), rho, "nested away: rho is the start", 1e-15)
    pr = evaluate_pyblp_at(pyblp.Problem(pyblp.Formulation(FORMULATION), nested_df), rho)
    tag = f"nested away from optimum{' by nest' if rho_by_nest else ''}"
    assert np.max(np.abs(pr.gradient)) > 1e-3
    _close(res.gradient, pr.gradient.ravel(), f"{tag} gradient", RTOL)
    _close(res.rho_se, pr.rho_se.ravel(), f"{tag} rho_se", RTOL)
    compare_linear(res, pr, tag)
    compare_post_estimation(res, pr, nested_df, tag)


def test_nested_logit_unadjusted_se_at_estimate(nested_df, nested_common):
    res, _, problem = nested_common
    rho = estimated_rho(res)
    ours = blpjax.Problem(nested_df, linear=LINEAR).solve(
        rho=rho, method="1s", se_type="unadjusted", rho_bounds=(rho, rho)
    )
    # ρ fixed by equal bounds in blpjax ⇒ no SE for it; PyBLP at the same ρ with ρ free gives
    # the SEs of a model in which ρ is estimated, so compare a model with ρ fixed in both.
    pr = problem.solve(
        rho=rho, rho_bounds=(rho, rho), method="1s", se_type="unadjusted", optimization=pyblp.Optimization("return")
    )
    compare_linear(ours, pr, "nested rho fixed unadjusted")


def test_nested_logit_rho_by_nest(nested_df, nested_by_nest):
    res, pr, problem = nested_by_nest
    H = nested_df["nesting_ids"].nunique()
    assert res.rho.shape == (H,) and pr.rho.size == H
    assert list(res.parameters.index[:H]) == [f"rho[n{h}]" for h in range(H)]
    _compare_nested_estimates(res, pr, "nested by nest")
    _compare_nested_at_our_estimate(res, problem, nested_df, "nested by nest @ blpjax rho")


# ----------------------------------------------------------------------------------------------
# 5. padding / ordering invariance
# ----------------------------------------------------------------------------------------------
def _shuffle_markets(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Market blocks in a random order (rows within a market keep their order)."""
    rng = np.random.default_rng(seed)
    markets = pd.unique(df["market_ids"])
    order = rng.permutation(len(markets))
    rows = np.concatenate([np.flatnonzero(df["market_ids"].to_numpy() == markets[k]) for k in order])
    return df.iloc[rows].reset_index(drop=True), rows


def test_nested_market_order_invariance(nested_df, nested_common):
    res, _, _ = nested_common
    shuffled, rows = _shuffle_markets(nested_df, seed=1)
    assert not np.array_equal(rows, np.arange(len(rows)))
    other = blpjax.Problem(shuffled, linear=LINEAR).solve(
        rho=0.3, method="1s", optimizer=blpjax.ScipyOptimizer("l-bfgs-b", **TIGHT)
    )
    # row r of the shuffled frame is row rows[r] of the original one
    _close(estimated_rho(other), estimated_rho(res), "shuffle rho", 1e-9)
    _close(other.beta.to_numpy(), res.beta.to_numpy(), "shuffle beta", 1e-9)
    _close(other.beta_se.to_numpy(), res.beta_se.to_numpy(), "shuffle beta_se", 1e-9)
    _close(other.rho_se, res.rho_se, "shuffle rho_se", 1e-9)
    _close(other.objective, res.objective, "shuffle objective", 1e-9)
    _close(other.xi, res.xi[rows], "shuffle xi", 1e-9)
    _close(
        other.compute_elasticities(layout="stacked"),
        res.compute_elasticities(layout="stacked")[rows],
        "shuffle elasticities",
        1e-9,
    )
    _close(
        other.compute_diversion_ratios(layout="stacked"),
        res.compute_diversion_ratios(layout="stacked")[rows],
        "shuffle diversion ratios",
        1e-9,
    )
    new = nested_df["prices"].to_numpy() * 0.9
    _close(
        other.compute_shares("prices", new[rows]), res.compute_shares("prices", new)[rows], "shuffle cf shares", 1e-9
    )
    cs, cs_other = res.compute_consumer_surplus(), other.compute_consumer_surplus()
    assert list(cs_other.index) != list(cs.index)
    _close(cs_other.to_numpy(), cs.loc[cs_other.index].to_numpy(), "shuffle consumer surplus", 1e-9)


def test_nested_row_shuffle_long_layout(nested_df, nested_common):
    """A full row shuffle (products move within markets too): tidy outputs match by id."""
    res, _, _ = nested_common
    rows = np.random.default_rng(2).permutation(len(nested_df))
    other = blpjax.Problem(nested_df.iloc[rows].reset_index(drop=True), linear=LINEAR).solve(
        rho=0.3, method="1s", optimizer=blpjax.ScipyOptimizer("l-bfgs-b", **TIGHT)
    )
    _close(estimated_rho(other), estimated_rho(res), "row shuffle rho", 1e-9)
    _close(other.beta.to_numpy(), res.beta.to_numpy(), "row shuffle beta", 1e-9)
    _close(other.xi, res.xi[rows], "row shuffle xi", 1e-9)
    keys = ["market_ids", "product_ids", "other_product_ids"]
    a = other.compute_elasticities().sort_values(keys).reset_index(drop=True)
    b = res.compute_elasticities().sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    _close(a["elasticity"].to_numpy(), b["elasticity"].to_numpy(), "row shuffle long elasticities", 1e-9)


def test_nested_unbalanced_drop_product(nested_df):
    """Drop one product, the only one of its nest in its market: that nest becomes empty there
    (an empty nest in a padded market), and the market gets smaller. Still matches PyBLP."""
    counts = nested_df.groupby(["market_ids", "nesting_ids"])["shares"].transform("size")
    nests_in_market = nested_df.groupby("market_ids")["nesting_ids"].transform("nunique")
    drop = nested_df.index[(counts == 1) & (nests_in_market == nested_df["nesting_ids"].nunique())][0]
    market = nested_df.loc[drop, "market_ids"]
    df = nested_df.drop(index=drop).reset_index(drop=True)
    assert df.loc[df["market_ids"] == market, "nesting_ids"].nunique() == nested_df["nesting_ids"].nunique() - 1
    res, pr, problem = solve_nested(df, 0.3)
    _compare_nested_estimates(res, pr, "nested dropped product")
    pr_at = _compare_nested_at_our_estimate(res, problem, df, "nested dropped product @ blpjax rho")
    rows = (df["market_ids"] == market).to_numpy()
    _close(
        res.compute_elasticities(layout="stacked")[rows, : rows.sum()],
        pr_at.compute_elasticities(market_id=market),
        "nested dropped product elasticities (market with an empty nest)",
    )
