"""Micro moments against PyBLP, run in the test on its bundled Nevo data.

Every weight shape PyBLP accepts ((I, J), (I, 1+J), and the four second-choice shapes) is
checked for the model values f(v), their Jacobian through δ(θ) and their covariances, in the
random-coefficients logit and in RCNL; then the GMM objective and gradient after PyBLP's
initial update, and a full one-step estimate (an Exercise 3.1 analogue).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import blpjax
from blpjax.internal import Concentration, StatisticsOptions

pyblp = pytest.importorskip("pyblp")
pyblp.options.verbose = False

MARKETS = ["C01Q1", "C01Q2"]
X2 = ("1", "mushy", "prices")


@pytest.fixture(scope="module")
def nevo():
    products = pd.read_csv(pyblp.data.NEVO_PRODUCTS_LOCATION)
    agents = pd.read_csv(pyblp.data.NEVO_AGENTS_LOCATION)
    keep = ["market_ids", "product_ids", "firm_ids", "shares", "prices", "mushy", "sugar"]
    products = products[keep + [f"demand_instruments{k}" for k in range(20)]].copy()
    agents = agents[["market_ids", "weights", "nodes0", "nodes1", "nodes2", "income"]].copy()
    return products, agents


def _col(products, t, name):
    return products.loc[products.market_ids == t, name].to_numpy()


def _configs(products):
    """The same micro moments for blpjax (jnp, one market view) and PyBLP (numpy, t/p/a)."""
    J1 = lambda m: jnp.ones(m.J)  # noqa: E731
    ours_ds = {
        "inc": blpjax.MicroDataset("inc", 100, lambda m: jnp.ones((m.I, m.J)), MARKETS),
        "inc0": blpjax.MicroDataset("inc0", 150, lambda m: jnp.ones((m.I, 1 + m.J)), MARKETS),
        "div": blpjax.MicroDataset("div", 200, lambda m: jnp.ones((m.I, m.J, 1 + m.J)), MARKETS),
        "div2": blpjax.MicroDataset("div2", 200, lambda m: jnp.ones((m.I, 1 + m.J, 1 + m.J)), MARKETS),
        "div3": blpjax.MicroDataset("div3", 250, lambda m: jnp.ones((m.I, 1 + m.J, m.J)), MARKETS),
        "div4": blpjax.MicroDataset("div4", 300, lambda m: jnp.ones((m.I, m.J, m.J)), MARKETS),
    }

    def out_second(m):
        return jnp.zeros((m.I, m.J, 1 + m.J)).at[:, :, 0].set(1.0)

    mushy = lambda m: m.products["mushy"]  # noqa: E731
    sugar = lambda m: m.products["sugar"]  # noqa: E731
    ours_parts = {
        "inc": blpjax.MicroPart("inc", ours_ds["inc"], lambda m: jnp.outer(m.agents["income"], J1(m))),
        "inc0": blpjax.MicroPart("inc0", ours_ds["inc0"], lambda m: jnp.outer(m.agents["income"], jnp.r_[0.0, J1(m)])),
        "mushy0": blpjax.MicroPart(
            "mushy0", ours_ds["inc0"], lambda m: jnp.outer(jnp.ones(m.I), jnp.r_[0.0, mushy(m)])
        ),
        "out2": blpjax.MicroPart("out2", ours_ds["div"], out_second),
        "mm": blpjax.MicroPart(
            "mm",
            ours_ds["div"],
            lambda m: jnp.broadcast_to(jnp.outer(mushy(m), jnp.r_[0.0, mushy(m)]), (m.I, m.J, 1 + m.J)),
        ),
        "d2": blpjax.MicroPart(
            "d2",
            ours_ds["div2"],
            lambda m: jnp.broadcast_to(
                jnp.outer(jnp.r_[1.0, mushy(m)], jnp.r_[0.5, sugar(m)]), (m.I, 1 + m.J, 1 + m.J)
            ),
        ),
        "d3": blpjax.MicroPart(
            "d3",
            ours_ds["div3"],
            lambda m: jnp.outer(jnp.r_[1.0, sugar(m)], mushy(m))[None] * m.agents["income"][:, None, None],
        ),
        "d4": blpjax.MicroPart(
            "d4", ours_ds["div4"], lambda m: jnp.broadcast_to(jnp.outer(sugar(m), sugar(m)), (m.I, m.J, m.J))
        ),
    }
    P = pyblp
    their_ds = {
        "inc": P.MicroDataset("inc", 100, lambda t, p, a: np.ones((a.size, p.size)), market_ids=MARKETS),
        "inc0": P.MicroDataset("inc0", 150, lambda t, p, a: np.ones((a.size, 1 + p.size)), market_ids=MARKETS),
        "div": P.MicroDataset("div", 200, lambda t, p, a: np.ones((a.size, p.size, 1 + p.size)), market_ids=MARKETS),
        "div2": P.MicroDataset(
            "div2", 200, lambda t, p, a: np.ones((a.size, 1 + p.size, 1 + p.size)), market_ids=MARKETS
        ),
        "div3": P.MicroDataset("div3", 250, lambda t, p, a: np.ones((a.size, 1 + p.size, p.size)), market_ids=MARKETS),
        "div4": P.MicroDataset("div4", 300, lambda t, p, a: np.ones((a.size, p.size, p.size)), market_ids=MARKETS),
    }

    def p_out_second(t, p, a):
        v = np.zeros((a.size, p.size, 1 + p.size))
        v[:, :, 0] = 1
        return v

    mu_ = lambda t: _col(products, t, "mushy")  # noqa: E731
    su_ = lambda t: _col(products, t, "sugar")  # noqa: E731
    income = lambda a: a.demographics[:, 0]  # noqa: E731
    their_parts = {
        "inc": P.MicroPart("inc", their_ds["inc"], lambda t, p, a: np.outer(income(a), np.ones(p.size))),
        "inc0": P.MicroPart("inc0", their_ds["inc0"], lambda t, p, a: np.outer(income(a), np.r_[0, np.ones(p.size)])),
        "mushy0": P.MicroPart("mushy0", their_ds["inc0"], lambda t, p, a: np.outer(np.ones(a.size), np.r_[0, mu_(t)])),
        "out2": P.MicroPart("out2", their_ds["div"], p_out_second),
        "mm": P.MicroPart(
            "mm",
            their_ds["div"],
            lambda t, p, a: np.broadcast_to(np.outer(mu_(t), np.r_[0, mu_(t)]), (a.size, p.size, 1 + p.size)).copy(),
        ),
        "d2": P.MicroPart(
            "d2",
            their_ds["div2"],
            lambda t, p, a: np.broadcast_to(
                np.outer(np.r_[1, mu_(t)], np.r_[0.5, su_(t)]), (a.size, 1 + p.size, 1 + p.size)
            ).copy(),
        ),
        "d3": P.MicroPart(
            "d3", their_ds["div3"], lambda t, p, a: np.outer(np.r_[1, su_(t)], mu_(t))[None] * income(a)[:, None, None]
        ),
        "d4": P.MicroPart(
            "d4",
            their_ds["div4"],
            lambda t, p, a: np.broadcast_to(np.outer(su_(t), su_(t)), (a.size, p.size, p.size)).copy(),
        ),
    }
    values = {"inc": 0.1, "ratio": 0.2, "out2": 0.28, "mm": 0.31, "d2": 0.5, "d3": 0.5, "d4": 50.0}
    ratio = lambda v: v[0] / v[1]  # noqa: E731
    ours = [
        blpjax.MicroMoment("inc", values["inc"], ours_parts["inc"]),
        # a ratio of two parts: nobody writes its gradient
        blpjax.MicroMoment("ratio", values["ratio"], [ours_parts["inc0"], ours_parts["mushy0"]], ratio),
        *[blpjax.MicroMoment(k, values[k], ours_parts[k]) for k in ("out2", "mm", "d2", "d3", "d4")],
    ]
    theirs = [
        P.MicroMoment("inc", values["inc"], their_parts["inc"]),
        P.MicroMoment(
            "ratio",
            values["ratio"],
            [their_parts["inc0"], their_parts["mushy0"]],
            ratio,
            lambda v: [1 / v[1], -v[0] / v[1] ** 2],
        ),
        *[P.MicroMoment(k, values[k], their_parts[k]) for k in ("out2", "mm", "d2", "d3", "d4")],
    ]
    return ours, theirs


def _problems(products, agents, nested):
    if nested:
        products = products.assign(nesting_ids=products["mushy"].astype(int))
    ours = blpjax.Problem(
        products, linear=("prices",), nonlinear=X2, absorb=("product_ids",), agent_data=agents, demographics=("income",)
    )
    formulations = (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation("1 + mushy + prices"))
    theirs = pyblp.Problem(formulations, products, pyblp.Formulation("0 + income"), agents)
    return ours, theirs


@pytest.mark.parametrize("nested", [False, True], ids=["blp", "rcnl"])
def test_micro_values_jacobians_covariances_objective_match_pyblp(nevo, nested):
    products, agents = nevo
    ours_problem, their_problem = _problems(products, agents, nested)
    ours, theirs = _configs(products)
    sigma, pi = np.diag([0.5, 0.8, 2.0]), np.array([[1.0], [0.1], [-2.0]])
    rho = 0.3 if nested else None
    theirs_res = their_problem.solve(
        sigma=sigma,
        pi=pi,
        rho=rho,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
        micro_moments=theirs,
    )
    micro, _ = ours_problem.build_micro(ours)
    spec = ours_problem.parameter_spec(sigma, pi, rho)
    x0 = jnp.asarray(spec.x0)
    setup = ours_problem.setup
    engine = ours_problem.engine(spec, blpjax.ContractionConfig(), micro=micro)
    M = setup.M
    Z = np.asarray(setup.Z).reshape(-1, M)
    W0 = jax.scipy.linalg.block_diag(np.linalg.inv(Z.T @ Z / ours_problem.N), np.zeros((micro.MM, micro.MM)))
    conc = Concentration.build_host(setup.ZX_all(host=True), W0)
    _, _, ev, _ = engine.value_and_grad(x0, ours_problem.logit_delta(), conc)
    stats = engine.statistics(x0, ev.delta, conc, StatisticsOptions())

    np.testing.assert_allclose(stats.micro_values, theirs_res.micro_values.ravel(), rtol=1e-12)
    cov = np.asarray(stats.micro_covariances)
    np.testing.assert_allclose(cov, theirs_res.micro_covariances, rtol=1e-9, atol=1e-12 * np.abs(cov).max())
    G = np.asarray(stats.moments_jacobian)[M:, : spec.P]  # the micro rows' derivatives in θ through δ(θ)
    scale = np.abs(theirs_res.micro_by_theta_jacobian).max()
    np.testing.assert_allclose(G, theirs_res.micro_by_theta_jacobian, rtol=1e-9, atol=1e-11 * scale)

    # PyBLP's initial update then the objective and gradient at the starting values
    updated_W = np.asarray(stats.updated_W)
    np.testing.assert_allclose(updated_W, theirs_res.W, rtol=1e-8, atol=1e-10 * np.abs(theirs_res.W).max())
    q, grad, _, _ = engine.value_and_grad(x0, ev.delta, Concentration.build_host(setup.ZX_all(host=True), updated_W))
    np.testing.assert_allclose(float(q), theirs_res.objective.item(), rtol=1e-9)
    np.testing.assert_allclose(grad, theirs_res.gradient.ravel(), rtol=1e-7, atol=1e-8 * np.abs(grad).max())


def test_micro_gradient_matches_finite_differences(nevo):
    """The total derivative of the micro block through δ(θ) against central differences."""
    products, agents = nevo
    ours_problem, _ = _problems(products, agents, False)
    ours, _ = _configs(products)
    micro, _ = ours_problem.build_micro(ours)
    spec = ours_problem.parameter_spec(np.diag([0.5, 0.8, 2.0]), [[1.0], [0.1], [-2.0]])
    engine = ours_problem.engine(spec, blpjax.ContractionConfig(), micro=micro)
    conc = Concentration.build_host(ours_problem.setup.ZX_all(host=True), np.eye(ours_problem.setup.M + micro.MM))
    d0 = ours_problem.logit_delta()

    def g(x):
        return engine.value(x, d0, conc)[1][1].g_micro  # δ(θ) solved inside, differentiable

    x0 = jnp.asarray(spec.x0)
    G = jax.jacrev(g)(x0)  # reverse mode: the transposed implicit rule
    h = 1e-5
    for p in range(spec.P):
        e = jnp.zeros(spec.P).at[p].set(h)
        fd = (g(x0 + e) - g(x0 - e)) / (2 * h)
        np.testing.assert_allclose(G[:, p], fd, rtol=1e-5, atol=1e-7 * (1 + np.abs(fd).max()))


@pytest.mark.slow
def test_exercise3_analogue_estimate_matches_pyblp(nevo):
    """Exercise 3.1 on the bundled Nevo data: π on 1 × income identified by the buyers' income."""
    products, agents = nevo
    products = products.assign(clustering_ids=products["product_ids"])
    ours_problem = blpjax.Problem(
        products,
        linear=("prices",),
        nonlinear=X2,
        absorb=("market_ids", "product_ids"),
        agent_data=agents,
        demographics=("income",),
    )
    formulations = (
        pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)"),
        pyblp.Formulation("1 + mushy + prices"),
    )
    their_problem = pyblp.Problem(formulations, products, pyblp.Formulation("0 + income"), agents)
    ds = blpjax.MicroDataset("buyers", 100, lambda m: jnp.ones((m.I, m.J)), MARKETS)
    part = blpjax.MicroPart("E[income | inside]", ds, lambda m: jnp.outer(m.agents["income"], jnp.ones(m.J)))
    their_ds = pyblp.MicroDataset("buyers", 100, lambda t, p, a: np.ones((a.size, p.size)), market_ids=MARKETS)
    their_part = pyblp.MicroPart(
        "E[income | inside]", their_ds, lambda t, p, a: np.outer(a.demographics[:, 0], np.ones(p.size))
    )
    observed = 0.25
    sigma, pi = np.diag([0, 0, 2.0]), np.array([[1.0], [0.5], [-1.0]])
    theirs = their_problem.solve(
        sigma=sigma,
        pi=pi,
        method="1s",
        optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-8}),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
        micro_moments=[pyblp.MicroMoment("E[income | inside]", observed, their_part)],
    )
    ours = ours_problem.solve(
        sigma=sigma,
        pi=pi,
        method="1s",
        sigma_bounds=(np.zeros((3, 3)), np.full((3, 3), np.inf)),  # PyBLP's default: diagonal σ ≥ 0
        micro_moments=[blpjax.MicroMoment("E[income | inside]", observed, part)],
    )
    np.testing.assert_allclose(ours.objective, theirs.objective.item(), rtol=1e-6)
    np.testing.assert_allclose(ours.final.theta, np.asarray(theirs.theta).ravel(), rtol=1e-4, atol=1e-5)
    their_se = [np.asarray(theirs.sigma_se)[2, 2], *np.asarray(theirs.pi_se).ravel()]
    P = len(their_se)
    interior = np.asarray(ours.final.theta) != 0  # a parameter at its bound has no meaningful SE
    np.testing.assert_allclose(np.asarray(ours.final.se[:P])[interior], np.asarray(their_se)[interior], rtol=1e-3)
    np.testing.assert_allclose(ours.beta_se, np.asarray(theirs.beta_se).ravel(), rtol=1e-3)
    np.testing.assert_allclose(ours.micro_values["estimated"], theirs.micro_values.ravel(), rtol=1e-6)
    assert ours.converged


def test_compute_micro_values_at_a_demand_only_estimate_match_pyblp(nevo):
    """Micro moments not used in estimation, valued at the estimate (PyBLP's compute_micro_values)."""
    products, agents = nevo
    ours_problem, their_problem = _problems(products, agents, False)
    ours, theirs = _configs(products)
    sigma, pi = np.diag([0.5, 0.8, 2.0]), np.array([[1.0], [0.1], [-2.0]])
    theirs_res = their_problem.solve(
        sigma=sigma,
        pi=pi,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
    )
    ours_res = ours_problem.solve(sigma, pi, method="1s", optimizer=blpjax.ScipyOptimizer("return"))
    values = ours_res.compute_micro_values(ours)
    np.testing.assert_allclose(values.to_numpy(), theirs_res.compute_micro_values(theirs).ravel(), rtol=1e-10)
    assert list(values.index) == [m.name for m in ours]
