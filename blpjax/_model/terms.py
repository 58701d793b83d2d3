"""Characteristics as JAX functions of the data: the compiled form of a formula's columns.

A formula (``"1 + prices + I(prices**2) + log(sugar)"``, parsed in :mod:`blpjax._front.formulas`) becomes a
:class:`Terms`: the names of the input columns it reads (data columns, and one 0/1 column per level of a
categorical) and, per output column, an expression tree over them. Evaluating it is plain ``jax.numpy``, so
every column is an exact, differentiable function of its inputs: ∂X/∂prices by autodiff, not by special
cases per term, and X at counterfactual prices (or costs at new shares) by evaluating it again.

Expression nodes are hashable tuples, so a :class:`Terms` is a static (compile-time) value:

- ``("sym", i)``: input column i;
- ``("num", v)``: the constant v;
- ``("add", (a, b, ...))``, ``("mul", (a, b, ...))``, ``("pow", a, b)``;
- ``("call", name, a)`` with name one of :data:`FUNCTIONS`.

Every function is elementwise, so row j of the output depends on row j of the inputs only: the derivative
of product j's characteristics with respect to its own price is one forward-mode product.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

FUNCTIONS = {"log": jnp.log, "exp": jnp.exp, "Abs": jnp.abs, "sin": jnp.sin, "cos": jnp.cos, "tanh": jnp.tanh}


def evaluate_node(node, inputs: Float[Array, "J C"]) -> Float[Array, " J"]:
    kind = node[0]
    if kind == "sym":
        return inputs[..., node[1]]
    if kind == "num":
        return jnp.full(inputs.shape[:-1], node[1], inputs.dtype)
    if kind == "add":
        out = evaluate_node(node[1][0], inputs)
        for a in node[1][1:]:
            out = out + evaluate_node(a, inputs)
        return out
    if kind == "mul":
        out = evaluate_node(node[1][0], inputs)
        for a in node[1][1:]:
            out = out * evaluate_node(a, inputs)
        return out
    if kind == "pow":
        base, exponent = node[1], node[2]
        if exponent[0] == "num" and float(exponent[1]).is_integer():
            return evaluate_node(base, inputs) ** int(exponent[1])  # exact derivative at 0 too
        return evaluate_node(base, inputs) ** evaluate_node(exponent, inputs)
    if kind == "call":
        return FUNCTIONS[node[1]](evaluate_node(node[2], inputs))
    raise ValueError(f"unknown expression node {node!r}")


def node_inputs(node) -> set[int]:
    """The input columns an expression reads."""
    kind = node[0]
    if kind == "sym":
        return {node[1]}
    if kind == "num":
        return set()
    if kind in ("add", "mul"):
        return set().union(*(node_inputs(a) for a in node[1]))
    if kind == "pow":
        return node_inputs(node[1]) | node_inputs(node[2])
    return node_inputs(node[2])


@dataclasses.dataclass(frozen=True)
class Terms:
    """Columns as functions of input columns (static and hashable).

    Attributes:
        names: the output columns' names (PyBLP's, e.g. ``prices**2``, ``mushy*prices``, ``brand['F2']``).
        inputs: the input columns' names, in the order of the ``inputs`` array's last axis.
        exprs: one expression tree per output column (see the module docstring).
    """

    names: tuple[str, ...]
    inputs: tuple[str, ...]
    exprs: tuple

    def __call__(self, inputs: Float[Array, "*J C"]) -> Float[Array, "*J K"]:
        """The columns at ``inputs`` (one market's rows, or any leading axes)."""
        if not self.exprs:
            return jnp.zeros((*inputs.shape[:-1], 0), inputs.dtype)
        return jnp.stack([evaluate_node(e, inputs) for e in self.exprs], axis=-1)

    def reads(self, name: str) -> tuple[bool, ...]:
        """Per output column: whether it reads input ``name``."""
        if name not in self.inputs:
            return tuple(False for _ in self.exprs)
        i = self.inputs.index(name)
        return tuple(i in node_inputs(e) for e in self.exprs)

    def derivative(self, inputs: Float[Array, "J C"], name: str) -> Float[Array, "J K"]:
        """∂column_jk/∂(input ``name``)_j per row, by one forward-mode product (zeros if no column reads it)."""
        if name not in self.inputs:
            return jnp.zeros((*inputs.shape[:-1], len(self.exprs)), inputs.dtype)
        tangent = jnp.zeros_like(inputs).at[..., self.inputs.index(name)].set(1.0)
        return jax.jvp(self.__call__, (inputs,), (tangent,))[1]

    def with_input(self, inputs: Float[Array, "J C"], name: str, values: Float[Array, " J"]) -> Float[Array, "J C"]:
        """``inputs`` with the column ``name`` replaced by ``values`` (unchanged if no column reads it)."""
        if name not in self.inputs:
            return inputs
        return inputs.at[..., self.inputs.index(name)].set(values)
