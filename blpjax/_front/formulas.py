"""Formulas: R-style specifications parsed by formulaic and SymPy, compiled to JAX functions of the data.

``Problem(products, linear="1 + prices + I(prices**2) + log(sugar) + C(brand) + prices:mushy")`` states X1 as
PyBLP's ``Formulation`` does. formulaic splits the formula into terms (``a*b`` expanded where it stands, ``a:b``
interactions, ``0 +``/``- 1`` to drop the intercept, which is otherwise included) and SymPy parses each factor,
which gives every column PyBLP's name (``prices**2``, ``mushy*prices``, ``brand['F2']``) and the same order.
Neither evaluates anything: each column is compiled into a :class:`blpjax.internal.Terms`, an expression over
the data's columns evaluated in ``jax.numpy``, so that ∂column/∂prices (and ∂/∂shares for costs) is exact by
autodiff and a column can be evaluated again at counterfactual prices.

Categorical variables (``C(brand)``) become one 0/1 indicator per level, levels sorted; the first is dropped
(treatment coding) when the term without it is already in the formula (the intercept for a main effect), as
patsy and PyBLP do. Functions: ``log``, ``exp`` (as PyBLP) and ``I()`` to protect arithmetic.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._base.errors import BLPDataError, BLPSpecificationError
from .._model.terms import Terms
from .._post.fitted import CostTerms
from .data import CONSTANT

FUNCTION_NAMES = ("log", "exp")
_CATEGORICAL = re.compile(r"^C\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$")


@dataclass(frozen=True)
class Design:
    """A parsed formula: the columns' names and SymPy expressions, and the indicator symbols it uses."""

    formula: str
    names: tuple[str, ...]
    exprs: tuple  # SymPy expressions
    indicators: dict  # indicator symbol name -> (variable, level)

    def reads(self, name: str) -> tuple[bool, ...]:
        return tuple(any(s.name == name for s in e.free_symbols) for e in self.exprs)


def is_formula(value) -> bool:
    return isinstance(value, str)


def _factor_names(code: str, formula: str) -> set[str]:
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as e:
        raise BLPSpecificationError(f"cannot parse the term {code!r} of the formula {formula!r}: {e.msg}.") from None
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    unknown = called - {"I", *FUNCTION_NAMES}
    if unknown:
        raise BLPSpecificationError(
            f"the formula {formula!r} calls {sorted(unknown)}; the functions a formula may use are "
            f"{['I', 'C', *FUNCTION_NAMES]} (as PyBLP's), with +, -, *, / and ** inside I()."
        )
    for node in ast.walk(tree):
        ok = (ast.Expression, ast.Name, ast.Load, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Call)
        ops = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd)
        if not isinstance(node, ok + ops):
            raise BLPSpecificationError(
                f"the term {code!r} of the formula {formula!r} uses {type(node).__name__}, which formulas do not "
                "support (names, numbers, +, -, *, /, **, log, exp, I())."
            )
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called


def _sympy_factor(code: str, formula: str, available) -> object:
    import sympy

    names = _factor_names(code, formula)
    missing = sorted(n for n in names if n not in available)
    if missing:
        raise BLPDataError(
            f"the formula {formula!r} names column(s) {missing}, which the data do not have. "
            f"Available columns: {sorted(map(str, available))}."
        )
    local = {n: sympy.Symbol(n) for n in names}
    local.update({"I": lambda x: x, "log": sympy.log, "exp": sympy.exp})
    return sympy.parse_expr(code, local_dict=local, global_dict={"Integer": sympy.Integer, "Float": sympy.Float})


def parse(formula: str, data: pd.DataFrame, frame: str, *, intercept: bool = True) -> Design:
    """Parse ``formula`` against ``data``'s columns. ``intercept=False`` drops an intercept (absorbed fixed effects
    take its place, as in PyBLP)."""
    import sympy
    from formulaic import Formula

    if not isinstance(formula, str) or not formula.strip():
        raise BLPSpecificationError(f"a formula must be a non-empty string, not {formula!r}.")
    try:
        parsed = Formula(formula, _ordering="none")
    except Exception as e:  # formulaic's own parse errors
        raise BLPSpecificationError(f"cannot parse the formula {formula!r}: {e}") from None
    if not hasattr(parsed, "__iter__") or hasattr(parsed, "lhs"):
        raise BLPSpecificationError(f"the formula {formula!r} has a left-hand side; give only the right-hand side.")
    names, exprs, indicators, seen = [], [], {}, []
    for term in parsed:
        factors = list(term.factors)
        if len(factors) == 1 and factors[0].expr == "1":
            if intercept:
                names.append(CONSTANT)
                exprs.append(sympy.Integer(1))
            seen.append(frozenset())
            continue
        numeric, categorical = [], []
        for factor in factors:
            match = _CATEGORICAL.match(factor.expr)
            if match:
                categorical.append(match.group(1))
            elif factor.expr.startswith("C("):
                raise BLPSpecificationError(
                    f"the categorical {factor.expr!r} in {formula!r}: only C(column) is supported (treatment coding "
                    "with the first level as the reference), not contrasts or other arguments."
                )
            else:
                numeric.append(factor.expr)
        if len(categorical) > 1:
            raise BLPSpecificationError(
                f"the term {str(term)!r} of {formula!r} interacts {len(categorical)} categorical variables; "
                "interact them in absorb=, or build the combined category as one column and use C(column)."
            )
        value = sympy.Integer(1)
        for code in numeric:
            value = value * _sympy_factor(code, formula, data.columns)
        key = frozenset(numeric)
        if not categorical:
            names.append(str(value))
            exprs.append(value)
            seen.append(key)
            continue
        variable = categorical[0]
        if variable not in data.columns:
            raise BLPDataError(
                f"the formula {formula!r} names column '{variable}' in C(), which {frame} does not have. "
                f"Available columns: {sorted(map(str, data.columns))}."
            )
        if data[variable].isna().any():
            raise BLPDataError(f"{frame} column '{variable}' (categorical in {formula!r}) has missing values.")
        levels = sorted(pd.unique(data[variable]).tolist(), key=lambda v: (str(type(v)), v))
        reduced = key in seen or (not numeric and not intercept and frozenset() in seen)
        # patsy's rule: a categorical is coded with one indicator fewer when the term without it is spanned already
        for level in levels[1:] if reduced else levels:
            symbol = sympy.Symbol(f"{variable}[{level!r}]")
            indicators[symbol.name] = (variable, level)
            column = value * symbol
            names.append(str(column))
            exprs.append(column)
        seen.append(key | {f"C({variable})"})
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise BLPSpecificationError(f"the formula {formula!r} gives the column(s) {duplicated} more than once.")
    return Design(formula, tuple(names), tuple(exprs), indicators)


def _node(expr, index: dict):
    import sympy

    if isinstance(expr, sympy.Symbol):
        return ("sym", index[expr.name])
    if isinstance(expr, sympy.Number):
        return ("num", float(expr))
    if isinstance(expr, sympy.Add):
        return ("add", tuple(_node(a, index) for a in expr.args))
    if isinstance(expr, sympy.Mul):
        return ("mul", tuple(_node(a, index) for a in expr.args))
    if isinstance(expr, sympy.Pow):
        return ("pow", _node(expr.base, index), _node(expr.exp, index))
    if isinstance(expr, sympy.log) and len(expr.args) == 1:
        return ("call", "log", _node(expr.args[0], index))
    if isinstance(expr, sympy.exp):
        return ("call", "exp", _node(expr.args[0], index))
    raise BLPSpecificationError(f"cannot compile {expr} (a {type(expr).__name__}) in a formula.")


def compile_terms(designs: list[Design | None], data: pd.DataFrame, frame: str) -> tuple[list[Terms], np.ndarray]:
    """One :class:`Terms` per design (``None`` gives an empty one) over a common set of inputs, and the (N, C)
    inputs array of ``data`` (indicators built from their categorical columns)."""
    from .data import _numeric

    symbols: dict[str, None] = {}
    indicators: dict = {}
    for design in designs:
        if design is None:
            continue
        indicators.update(design.indicators)
        for e in design.exprs:
            for s in sorted(e.free_symbols, key=lambda s: s.name):
                symbols[s.name] = None
    inputs = tuple(symbols)
    index = {n: i for i, n in enumerate(inputs)}
    columns = []
    for name in inputs:
        if name in indicators:
            variable, level = indicators[name]
            columns.append((data[variable] == level).to_numpy(np.float64))
        else:
            columns.append(_numeric(data, name, frame))
    array = np.column_stack(columns) if columns else np.zeros((len(data), 0))
    terms = [
        Terms((), inputs, ())
        if design is None
        else Terms(design.names, inputs, tuple(_node(e, index) for e in design.exprs))
        for design in designs
    ]
    return terms, array


def evaluate(terms: Terms, inputs: np.ndarray, data: pd.DataFrame, formula: str, frame: str) -> np.ndarray:
    """The columns on the host, checked to be finite (naming the column and the first markets where not)."""
    with jax.default_device(jax.devices("cpu")[0]):
        values = np.asarray(jax.jit(terms)(inputs))
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.flatnonzero(bad.any(axis=0))[0])
        rows = np.flatnonzero(bad[:, k])
        where = data["market_ids"].to_numpy()[rows][:3].tolist() if "market_ids" in data.columns else rows[:3].tolist()
        raise BLPDataError(
            f"the column '{terms.names[k]}' of the formula {formula!r} is not finite in {rows.size} row(s) of {frame} "
            f"(first in market(s) {where}): e.g. log of a value ≤ 0. Transform the data or change the formula."
        )
    return values


def derivative(terms: Terms, inputs: np.ndarray, name: str) -> np.ndarray:
    """∂columns/∂``name`` per row on the host (autodiff)."""
    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(jax.jit(terms.derivative, static_argnums=1)(inputs, name))


@dataclass(frozen=True)
class Expanded:
    """A specification with its formulas evaluated: the data with every formula column added (by its name),
    the column-name tuples the rest of blpjax takes, and what prices (and shares) move."""

    product_data: pd.DataFrame
    agent_data: pd.DataFrame | None
    linear: tuple[str, ...]
    nonlinear: tuple[str, ...]
    costs: tuple[str, ...]
    absorb: tuple[str, ...]
    demographics: tuple[str, ...]
    price_derivatives: dict | None
    costs_absorb: tuple[str, ...]
    endogenous: tuple[str, ...]  # X1 columns of formulas that read prices
    price_terms: tuple[Terms, Terms] | None  # X1, X2 as functions of the inputs (None: no formula)
    cost_terms: Terms | None  # X3 as a function of the inputs (None: no formula)
    inputs: np.ndarray | None  # (N, C) in product_data's row order

    def with_endogenous(self, declared) -> tuple[str, ...]:
        """The declared endogenous columns and the formula's X1 columns that read prices."""
        if isinstance(declared, str):
            raise BLPSpecificationError(f"endogenous must be a sequence of column names, not the string {declared!r}.")
        return (*tuple(declared), *self.endogenous)


def _absorb_columns(formula: str, data: pd.DataFrame) -> tuple[tuple[str, ...], pd.DataFrame]:
    """Fixed effects from a formula: each term a column of ids (``C(a):C(b)`` one id per (a, b) pair)."""
    from formulaic import Formula

    try:
        parsed = Formula(formula, _ordering="none")
    except Exception as e:
        raise BLPSpecificationError(f"cannot parse absorb={formula!r}: {e}") from None
    names, added = [], {}
    for term in parsed:
        factors = [f.expr for f in term.factors]
        if factors == ["1"]:
            continue
        variables = []
        for code in factors:
            match = _CATEGORICAL.match(code)
            variable = match.group(1) if match else code
            if variable not in data.columns:
                raise BLPDataError(
                    f"absorb={formula!r} names '{variable}', which product_data does not have (fixed effects are "
                    "columns of ids, e.g. 'C(product_ids)' or 'C(market_ids):C(firm_ids)')."
                )
            variables.append(variable)
        if len(variables) == 1:
            names.append(variables[0])
            continue
        name = ":".join(variables)
        frame = data[variables].astype(str)
        added[name] = frame.agg("\x1f".join, axis=1)
        names.append(name)
    return tuple(names), pd.DataFrame(added, index=data.index)


def symbols_design(columns: tuple[str, ...]) -> Design:
    """A column-name tuple as a design (each column itself; ``"1"`` the constant)."""
    import sympy

    exprs = tuple(sympy.Integer(1) if c == CONSTANT else sympy.Symbol(c) for c in columns)
    return Design(repr(columns), tuple(columns), exprs, {})


def _with_columns(data: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``data`` with the columns of ``new`` (same index) added, replacing those of the same name."""
    return pd.concat([data.drop(columns=[c for c in new.columns if c in data.columns]), new], axis=1)


def check_costs_design(design: Design | None, costs) -> None:
    """Cost characteristics must not involve prices (costs are p − markup)."""
    if design is not None and any(design.reads("prices")):
        raise BLPSpecificationError(
            f"the cost characteristics X3 ({costs!r}) involve prices; costs are p − markup, so prices cannot be a "
            "cost characteristic."
        )


def expand(
    product_data: pd.DataFrame,
    agent_data: pd.DataFrame | None,
    linear,
    nonlinear,
    costs,
    absorb,
    demographics,
    price_derivatives: dict | None,
    costs_absorb=(),
) -> Expanded | None:
    """Evaluate the formulas among the specification's arguments (``None`` when every one is a column tuple)."""
    arguments = {"linear": linear, "nonlinear": nonlinear, "costs": costs, "absorb": absorb}
    if not any(is_formula(v) for v in (*arguments.values(), demographics, costs_absorb)):
        return None
    if not isinstance(product_data, pd.DataFrame):
        raise BLPDataError("product_data must be a pandas DataFrame with PyBLP's column names.")
    data = product_data
    absorbed: tuple[str, ...] = tuple(absorb) if not is_formula(absorb) else ()
    if is_formula(absorb):
        absorbed, extra = _absorb_columns(absorb, data)
        data = _with_columns(data, extra)
    costs_absorbed: tuple[str, ...] = tuple(costs_absorb) if not is_formula(costs_absorb) else ()
    if is_formula(costs_absorb):
        costs_absorbed, extra = _absorb_columns(costs_absorb, data)
        data = _with_columns(data, extra)
    designs: dict[str, Design | None] = {}
    for role, value in (("linear", linear), ("nonlinear", nonlinear), ("costs", costs)):
        if is_formula(value):
            absorbing = absorbed if role == "linear" else costs_absorbed if role == "costs" else ()
            designs[role] = parse(value, data, "product_data", intercept=not absorbing)
        elif value is None or len(tuple(value)) == 0:
            designs[role] = None
        else:
            designs[role] = symbols_design(tuple(value))
    formula_roles = [r for r in ("linear", "nonlinear", "costs") if is_formula(arguments[r])]
    moving = [r for r in formula_roles if any(designs[r].reads("prices"))]  # type: ignore[union-attr]
    if price_derivatives and moving:
        raise BLPSpecificationError(
            f"price_derivatives with formulas: the {moving} formula's columns that involve prices get their "
            "derivatives by autodiff. State every price-dependent column in the formula (e.g. 'I(-prices)', "
            "'prices:sugar') and drop price_derivatives."
        )
    check_costs_design(designs["costs"], costs)
    terms, inputs = compile_terms([designs["linear"], designs["nonlinear"], designs["costs"]], data, "product_data")
    names: dict[str, tuple[str, ...]] = {}
    derivatives = dict(price_derivatives or {})
    endogenous: list[str] = []
    for role, t in zip(("linear", "nonlinear", "costs"), terms, strict=True):
        names[role] = t.names
        if role not in formula_roles:
            continue
        values = evaluate(t, inputs, data, arguments[role], "product_data")
        kept = [k for k, n in enumerate(t.names) if n != CONSTANT]
        data = _with_columns(data, pd.DataFrame(values[:, kept], columns=[t.names[k] for k in kept], index=data.index))
        if role == "costs":
            continue
        d = derivative(t, inputs, "prices")
        for k, (name, reads) in enumerate(zip(t.names, t.reads("prices"), strict=True)):
            if reads and name != "prices":
                derivatives[name] = d[:, k]
                if role == "linear":
                    endogenous.append(name)
    agents, demo = agent_data, tuple(demographics) if not is_formula(demographics) else ()
    if is_formula(demographics):
        if agent_data is None:
            raise BLPSpecificationError("demographics given as a formula need agent_data.")
        # product-specific demographics (columns name0, name1, ...: one per product) enter as themselves
        by_product = {
            c for c in referenced_columns(demographics) if c not in agent_data.columns and _has_indexed(agent_data, c)
        }
        frame = agent_data.assign(**{c: 0.0 for c in by_product})
        design = parse(demographics, frame, "agent_data")
        if any(design.reads("prices")) or any(design.reads("shares")):
            raise BLPSpecificationError(f"demographics={demographics!r} cannot involve prices or shares.")
        for c in by_product:
            if [n for n, r in zip(design.names, design.reads(c), strict=True) if r] != [c]:
                raise BLPSpecificationError(
                    f"the product-specific demographic '{c}' ({c}0, {c}1, ... in agent_data) may enter the "
                    f"demographics formula {demographics!r} only as itself, not transformed or interacted."
                )
        (t,), agent_inputs = compile_terms([design], frame, "agent_data")
        values = evaluate(t, agent_inputs, frame, demographics, "agent_data")
        keep = [k for k, n in enumerate(t.names) if n not in by_product]  # those are read from name0, name1, ...
        new = pd.DataFrame(values[:, keep], columns=[t.names[k] for k in keep], index=agent_data.index)
        agents = _with_columns(agent_data, new)
        demo = t.names
    return Expanded(
        product_data=data,
        agent_data=agents,
        linear=names["linear"],
        nonlinear=names["nonlinear"],
        costs=names["costs"],
        absorb=absorbed,
        demographics=demo,
        price_derivatives=derivatives or None,
        costs_absorb=costs_absorbed,
        endogenous=tuple(endogenous),
        price_terms=(terms[0], terms[1]) if moving else None,
        cost_terms=terms[2] if is_formula(costs) else None,
        inputs=inputs,
    )


def _has_indexed(data: pd.DataFrame, name: str) -> bool:
    return any(re.fullmatch(rf"{re.escape(name)}\d+", str(c)) for c in data.columns)


def padded_terms(expanded: Expanded | None, index, costs_type: str):
    """(price terms, cost terms) for counterfactuals: (X1 Terms, X2 Terms, inputs (T, J, C)) when a formula column
    reads prices, and a :class:`blpjax.internal.CostTerms` when an X3 formula column reads shares; else None."""
    if expanded is None:
        return None, None
    inputs = index.padded(expanded.inputs)
    # padding repeats each market's first product, so that log and 1/x stay finite (and so do their derivatives)
    inputs = jnp.asarray(np.where((index.rows >= 0)[..., None], inputs, inputs[:, :1, :]))
    price_terms = None if expanded.price_terms is None else (*expanded.price_terms, inputs)
    cost_terms = None
    t = expanded.cost_terms
    if t is not None and any(t.reads("shares")):
        moving = tuple(n for n, r in zip(t.names, t.reads("shares"), strict=True) if r)
        cost_terms = CostTerms(inputs, t, costs_type == "log", moving)
    return price_terms, cost_terms


def referenced_terms(formula: str) -> list:
    """formulaic's terms of ``formula`` (intercept included), without reading any data."""
    from formulaic import Formula

    try:
        return list(Formula(formula, _ordering="none"))
    except Exception as e:
        raise BLPSpecificationError(f"cannot parse the formula {formula!r}: {e}") from None


def referenced_columns(formula: str, categorical: bool = True) -> set[str]:
    """The data columns ``formula`` reads (inside functions, and in C() unless ``categorical=False``), without reading
    any data."""
    names: set[str] = set()
    for term in referenced_terms(formula):
        for factor in term.factors:
            if factor.expr == "1":
                continue
            match = _CATEGORICAL.match(factor.expr)
            if match:
                names |= {match.group(1)} if categorical else set()
            else:
                names |= _factor_names(factor.expr, formula)
    return names
