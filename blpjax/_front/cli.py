"""``blpjax demo``: simulate markets with known truth, estimate, and show what blpjax does."""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import pandas as pd

from .._base.allocator import relaunch_with_tuned_allocator
from .._model.integration import Integration
from .micro_data import MicroDataset, MicroMoment, MicroPart
from .problem import Problem
from .scores import results_at
from .simulate import SimulationConfig, simulate
from .simulation import Simulation


def demo(
    markets: int = 200, agents: int = 200, seed: int = 0, survey_markets: int = 10, buyers: int = 1000, draws: int = 50
) -> None:
    print(f"blpjax demo on {jax.devices()[0].platform.upper()} ({jax.devices()[0].device_kind}), float64\n")
    cfg = SimulationConfig(markets=markets, agents=agents, seed=seed)
    t0 = time.perf_counter()
    product_data, agent_data, truth = equilibrium_design(cfg)
    print(
        f"Simulated {markets} markets, {len(product_data)} products ({cfg.products[0]}-{cfg.products[1]} per market, 5 "
        f"firms), {agents} agents per market; utility = 1 + x + prices + random coefficients on (1, prices) and "
        f"prices × income; marginal costs 0.5 + w + ω; Bertrand–Nash prices and shares by blpjax.Simulation "
        f"({time.perf_counter() - t0:.1f}s).\n"
    )

    print("1) Plain logit (IV-GMM, prices instrumented): biased, it ignores taste heterogeneity")
    t0 = time.perf_counter()
    logit = Problem(product_data, linear=("1", "x", "prices")).solve(method="1s")
    print(
        f"   beta[prices] = {logit.beta['prices']:.3f} (se {logit.beta_se['prices']:.3f}), "
        f"truth {truth['beta']['prices']}; {time.perf_counter() - t0:.2f}s\n"
    )

    print("2) BLP random coefficients with demographics, 2-step GMM from half the truth")
    problem = Problem(
        product_data,
        linear=("1", "x", "prices"),
        nonlinear=("1", "prices"),
        agent_data=agent_data,
        demographics=("income",),
    )
    sigma0 = truth["sigma"] / 2
    pi0 = np.array([[0.5], [truth["pi"][1, 0] / 2]])  # π on 1 × income (truth 0) is weakly identified by shares
    t0 = time.perf_counter()
    results = problem.solve(sigma0, pi0, method="2s")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = problem.solve(sigma0, pi0, method="2s")
    warm = time.perf_counter() - t0
    table = results.parameters.copy()
    true = {"sigma[1, 1]": cfg.sigma[0], "sigma[prices, prices]": cfg.sigma[1]}
    true.update({"pi[1, income]": cfg.pi[0], "pi[prices, income]": cfg.pi[1]})
    true.update({f"beta[{k}]": v for k, v in truth["beta"].items()})
    table["truth"] = [true.get(label, np.nan) for label in table.index]
    with pd.option_context("display.float_format", "{: .4f}".format):
        print(table.to_string())
    summary = results.contraction_summary
    print(
        f"   objective {results.objective:.6g}, converged {results.converged}, contraction evaluations per market "
        f"mean {summary['mean_evaluations']:.1f} / max {summary['max_evaluations']}"
    )
    print(f"   time: {first:.2f}s including compilation, {warm:.2f}s warm\n")

    print("3) Counterfactual: product 0 of market 0 raises its price by 10% (ξ held fixed)")
    prices = product_data["prices"].to_numpy().copy()
    rows = np.flatnonzero(product_data["market_ids"].to_numpy() == 0)
    prices[rows[0]] *= 1.10
    cf = results.counterfactual(prices)
    cf = cf[cf["market_ids"] == 0][["product_ids", "shares", "new_shares", "pct_change"]]
    with pd.option_context("display.float_format", "{: .4f}".format):
        print(cf.head(8).to_string(index=False))
    E = results.elasticity_matrix(0)
    print(
        f"\n   own-price elasticities in market 0: mean {np.diag(E.to_numpy()).mean():.3f}; "
        f"consumer surplus per capita {results.compute_consumer_surplus().iloc[0]:.4f}"
    )
    t0 = time.perf_counter()
    merged = product_data["firm_ids"].replace(1, 0)  # firm 1's products join firm 0
    new_prices = results.compute_prices(firm_ids=merged)
    change = 100 * (new_prices / product_data["prices"] - 1)
    insiders = product_data["firm_ids"].isin([0, 1])
    surplus = results.compute_consumer_surpluses(new_prices) - results.compute_consumer_surpluses()
    print(
        f"   merger of firms 0 and 1 (Bertrand–Nash prices in every market, costs from the first-order conditions): "
        f"prices +{change[insiders].mean():.2f}% for the merging firms' products, +{change[~insiders].mean():.2f}% "
        f"for rivals'; consumer surplus {surplus.mean():+.4f} per capita per market; "
        f"{time.perf_counter() - t0:.2f}s\n"
    )
    _micro_steps(problem, cfg, survey_markets, buyers, draws)


def equilibrium_design(cfg: SimulationConfig):
    """The demo's markets: characteristics, agents, ξ and instruments from :func:`simulate`, then Bertrand–Nash prices
    and shares at the true parameters by :class:`Simulation` (costs 0.5 + w + ω, w the cost shifter
    ``demand_instruments0``, ω ~ N(0, 0.1²))."""
    product_data, agent_data, truth = simulate(cfg)
    omega = np.random.default_rng(cfg.seed + 7).normal(0, 0.1, len(product_data))
    simulation = Simulation(
        product_data.drop(columns=["prices", "shares"]),
        linear=("1", "x", "prices"),
        nonlinear=("1", "prices"),
        costs=("1", "demand_instruments0"),
        beta=list(cfg.beta),
        sigma=np.diag(cfg.sigma),
        pi=np.reshape(cfg.pi, (2, 1)),
        gamma=[0.5, 1.0],
        agent_data=agent_data,
        demographics=("income",),
        xi=truth["xi"],
        omega=omega,
    )
    simulated = simulation.replace_endogenous()
    return simulated.product_data, agent_data, truth


def _micro_steps(problem: Problem, cfg: SimulationConfig, survey_markets: int, buyers: int, draws: int) -> None:
    """Steps 4 and 5: a survey of buyers identifies π on 1 × income; its micro data give optimal micro moments."""
    import jax.numpy as jnp

    markets = list(range(min(survey_markets, cfg.markets)))
    survey = MicroDataset("buyer survey", buyers, lambda m: jnp.ones((m.I, m.J)), markets)  # w_dij = 1{j ≠ 0}
    income = MicroPart("E[income | j > 0]", survey, lambda m: jnp.outer(m.demographics[:, 0], jnp.ones(m.J)))
    sigma_true, pi_true = np.diag(cfg.sigma), np.reshape(cfg.pi, (2, 1))
    # the survey: buyers drawn from the model at the truth (their income and choice; their tastes ν are unobserved)
    micro_data = results_at(problem, sigma_true, pi_true).simulate_micro_data(survey, seed=cfg.seed + 1)
    observed = float(micro_data["income"].mean())
    truth = {"sigma[1, 1]": cfg.sigma[0], "sigma[prices, prices]": cfg.sigma[1]}
    truth.update({"pi[1, income]": cfg.pi[0], "pi[prices, income]": cfg.pi[1]})
    sigma0, pi0 = sigma_true / 2, np.array([[0.5], [cfg.pi[1] / 2]])  # the starting values of step 2

    print(
        f"4) Micro moment: a survey of {buyers} buyers in markets 0-{markets[-1]} reports mean income "
        f"E[income | j > 0] = {observed:.4f}"
    )
    columns, times = {}, {}
    for name, moments in [
        ("aggregate only", None),
        ("+ E[income | j > 0]", [MicroMoment(income.name, observed, income)]),
    ]:
        t0 = time.perf_counter()
        res = problem.solve(sigma0, pi0, method="1s", micro_moments=moments)
        times[name] = time.perf_counter() - t0
        columns[name] = res
    _compare(columns, truth, times)
    print("   (σ multiplies a symmetric ν, so only its magnitude is identified)")
    if columns["+ E[income | j > 0]"].micro is not None:
        print(columns["+ E[income | j > 0]"].micro_values.to_string(float_format=lambda v: f"{v: .4f}"))

    print(
        f"\n5) Optimal micro moments: the survey's micro data (each buyer's income and choice, tastes integrated with "
        f"{draws} draws), scored at the step-4 estimate; the mean score for π on 1 × income replaces the statistic"
    )
    first = columns["+ E[income | j > 0]"]
    integration = Integration("monte_carlo", draws, seed=cfg.seed)
    t0 = time.perf_counter()
    optimal = first.optimal_micro_moments(survey, micro_data[["market_ids", "choice_indices", "income"]], integration)
    build = time.perf_counter() - t0
    print("   observed mean scores: " + ", ".join(f"{m.name} = {m.value: .4f}" for m in optimal))
    # as in the course: the mean-score moment for π on 1 × income replaces the income statistic (same dataset and
    # shapes as step 4, so the compiled programs are reused); passing all of `optimal` uses every score
    score = [m for m in optimal if m.name == "score[pi[1, income]]"]
    t0 = time.perf_counter()
    columns["optimal micro moment"] = problem.solve(sigma0, pi0, method="1s", micro_moments=score)
    times["optimal micro moment"] = time.perf_counter() - t0
    _compare(columns, truth, times)
    print(f"   scores and agent scores built in {build:.2f}s")


def _compare(columns: dict, truth: dict, times: dict) -> None:
    """Print the nonlinear estimates (standard errors) of several fits side by side with the truth."""
    labels = list(truth)
    table = pd.DataFrame({"truth": [truth[k] for k in labels]}, index=labels)
    for name, res in columns.items():
        p = res.parameters
        table[name] = [f"{p.loc[k, 'estimate']: .3f} ({p.loc[k, 'se']:.3f})" for k in labels]
    print(table.to_string(float_format=lambda v: f"{v: .3f}"))
    print("   time: " + ", ".join(f"{name} {t:.2f}s" for name, t in times.items()))


def _at_least(low: int):
    """An argparse type: an integer of at least ``low`` (a clear message instead of a NumPy traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="blpjax", description="BLP demand estimation in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="simulate markets with known truth, estimate, show a counterfactual")
    d.add_argument("--markets", type=_at_least(10), default=200, help="simulated markets (at least 10)")
    d.add_argument("--agents", type=_at_least(5), default=200, help="agents per market (at least 5)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--survey-markets", type=_at_least(1), default=10, help="markets the buyer survey samples")
    d.add_argument("--buyers", type=_at_least(10), default=1000, help="observations of the buyer survey")
    d.add_argument("--draws", type=_at_least(1), default=50, help="draws integrating each buyer's unobserved tastes")
    d.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="keep glibc's default allocator settings (default: relaunch with blpjax.ALLOCATOR_TUNABLES on Linux)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo" and args.survey_markets > args.markets:
        parser.error(f"--survey-markets ({args.survey_markets}) cannot exceed --markets ({args.markets})")
    if argv is None and not args.no_allocator_tuning:  # the ``blpjax`` command itself: see blpjax._base.allocator
        relaunch_with_tuned_allocator()
    if args.command == "demo":
        demo(args.markets, args.agents, args.seed, args.survey_markets, args.buyers, args.draws)


if __name__ == "__main__":
    main()
