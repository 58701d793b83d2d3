"""Printed summaries of a Problem and of Results, laid out as an econometrics package prints them.

Nothing here computes anything expensive: the Hessian's eigenvalues appear once the Hessian has been
computed (``results.hessian``), and a failed estimate prints (NaN entries and all) with the reason it
failed.
"""

from __future__ import annotations

import numpy as np


def _number(v) -> str:
    v = float(v)
    if not np.isfinite(v):
        return str(v)
    return f"{v:+.4g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:+.3e}"


def _matrix(title: str, rows, columns, values, ses, free) -> list[str]:
    """A matrix of estimates with standard errors in parentheses below them (blank where fixed)."""
    width = max(12, *(len(str(c)) + 2 for c in columns))
    head = max(8, *(len(str(r)) + 1 for r in rows))
    lines = [title, " " * head + "".join(f"{str(c):>{width}}" for c in columns)]
    for i, r in enumerate(rows):
        est = "".join(f"{_number(values[i, j]) if free[i, j] else '':>{width}}" for j in range(len(columns)))
        se = "".join(f"{'(' + _number(ses[i, j]) + ')' if free[i, j] else '':>{width}}" for j in range(len(columns)))
        lines += [f"{str(r):<{head}}{est}", " " * head + se]
    return lines


def _vector(title: str, names, values, ses) -> list[str]:
    width = max(12, *(len(str(n)) + 2 for n in names))
    return [
        title,
        "".join(f"{str(n):>{width}}" for n in names),
        "".join(f"{_number(v):>{width}}" for v in values),
        "".join(f"{'(' + _number(s) + ')':>{width}}" for s in ses),
    ]


def format_results(results) -> str:
    """The summary ``print(results)`` shows."""
    f, spec, names = results.final, results.spec, results.specification
    q = float(f.objective)
    gradient = np.asarray(f.gradient)
    lines = [
        f"blpjax results: {len(results.steps)}-step GMM, N={results.index.n_rows} products in "
        f"T={len(results.index.market_ids)} markets",
        "",
        f"  objective           {_number(q)}",
        f"  gradient norm       {_number(np.max(np.abs(gradient), initial=0.0))} (largest absolute entry)",
    ]
    if results._hessian is not None and spec.P:
        eig = np.linalg.eigvalsh(results._hessian)
        lines.append(f"  Hessian eigenvalues {_number(eig[0])} … {_number(eig[-1])}")
    elif spec.P:
        lines.append("  Hessian eigenvalues (not computed: read results.hessian)")
    if f.conditions is not None:
        s_cond, bread_cond = np.asarray(f.conditions)
        lines.append(f"  condition numbers   S {_number(s_cond)}, G'WG {_number(bread_cond)}")
    summary = results.contraction_summary
    lines += [
        f"  optimiser           {f.optimizer_message} ({int(f.optimizer_iterations)} iterations, "
        f"{int(f.objective_evaluations)} objective evaluations, {sum(s.seconds for s in results.steps):.2f} s)",
        f"  contraction         {summary['mean_evaluations']:.1f} evaluations per market on average, "
        f"{summary['max_evaluations']} at most",
        f"  {'converged' if results.converged else 'NOT CONVERGED: ' + results.message}",
        "",
    ]
    se = np.asarray(f.se)
    sigma_free = np.zeros(spec.sigma0.shape, bool)
    for r, c in spec.sigma_free:
        sigma_free[r, c] = True
    if sigma_free.any():
        lines += _matrix(
            "Σ (standard errors in parentheses)",
            names.nonlinear,
            names.nonlinear,
            results.sigma,
            results.sigma_se,
            sigma_free,
        ) + [""]
    pi_free = np.zeros(spec.pi0.shape, bool)
    for r, c in spec.pi_free:
        pi_free[r, c] = True
    if pi_free.any():
        lines += _matrix("Π", names.nonlinear, names.demographics, results.pi, results.pi_se, pi_free) + [""]
    if spec.rho_free:
        labels = [label for label in spec.labels if label.startswith("rho")]
        lines += _vector("ρ", labels, results.rho[np.asarray(spec.rho_free)], results.rho_se) + [""]
    P, K1 = spec.P_theta, len(names.linear)
    if K1:
        lines += _vector("β", names.linear, np.asarray(f.beta), se[P : P + K1]) + [""]
    if names.costs:
        lines += _vector("γ (marginal costs)", names.costs, np.asarray(f.gamma), se[P + K1 :]) + [""]
    if results.micro_labels is not None:
        lines += ["Micro moments", results.micro_values.to_string(float_format=_number), ""]
    return "\n".join(lines).rstrip()


def format_problem(problem) -> str:
    """The summary ``print(problem)`` shows: dimensions and the specification."""
    s = problem.specification
    T, J = problem.setup.mask.shape
    I = problem.setup.market.weights.shape[-1]
    lines = [
        f"blpjax Problem: N={problem.N} products in T={T} markets (up to {J} products and {I} agents per market)",
        f"  X1 (linear)       {', '.join(s.linear) or '—'}",
        f"  X2 (nonlinear)    {', '.join(s.nonlinear) or '—'}",
        f"  demographics      {', '.join(s.demographics) or '—'}",
        f"  absorbed          {', '.join(s.absorb) or '—'}",
        f"  instruments       {problem.setup.Z.shape[-1]} demand ({', '.join(problem.index.z_names)})",
    ]
    if s.costs:
        lines += [
            f"  X3 (costs, {s.costs_type})  {', '.join(s.costs)}",
            f"  supply instruments {len(s.zs_names)} ({', '.join(s.zs_names)})",
        ]
    if problem.nested:
        lines.append(
            f"  nests             {problem.products.n_nests} ({'one ρ per nest' if s.rho_by_nest else 'one ρ'})"
        )
    lines.append(f"  layout            {problem.scale.path()}")
    return "\n".join(lines)
