"""linear, addmm, matmul, baddbmm, einsum: rules generated from einsum-style letter strings.

For ``y = einsum(operands)`` on one mesh axis:

- a letter of the output (a "free" dim, e.g. b, m, n) may be split: the output and every
  operand holding that letter are split along it, operands without it are replicated;
- a letter only in the operands (a contraction, k) may be split: every operand holding it is
  split, and the output is a partial sum (``sum_k x[:, k] W[:, k]`` over local k's);
- the product is linear in each operand: one operand partial, the others replicated, gives a
  partial output. Offered for activations (x of linear, both sides of matmul), not weights.

A bias added to the output follows the output: split where it has the letter, R where it is
broadcast, and P when the output is P (the runtime turns a replicated bias into a partial one).

Per axis, linear x (b, k) @ W(n, k)^T has 5 options: R, S(b), S(n), S(k) -> P, P(x) -> P.
baddbmm (b, m, n) = beta * input + alpha * (b, m, k) @ (b, k, n) is the same with input as the bias
(BLOOM's ALiBi scores); einsum reads its letters from the equation (a letter repeated within one
operand, a diagonal, is never split).
"""
from __future__ import annotations

import string
from collections.abc import Sequence

import torch.fx as fx

from autopar.solver.strategies.base import AxisOption, P, R, register, shape

Letters = Sequence[str | None]  # one letter per tensor dim; None for a broadcast dim of size 1


def einsum_options(out: Letters, operands: Sequence[tuple[fx.Node, Letters]], *,
                   linear_in: Sequence[fx.Node] = (), bias: tuple[fx.Node, Letters] | None = None,
                   ) -> list[AxisOption]:
    """The AxisOptions of ``out = einsum(operands) (+ bias)`` on one mesh axis."""
    def place(letters: Letters, letter: str):
        return letters.index(letter) if letter in letters else R

    opts: list[AxisOption] = []
    for d, letter in enumerate(out):  # free dims: split output and operands alike
        if letter is None:
            continue
        ins = [(n, place(ls, letter)) for n, ls in operands]
        if bias is not None:
            ins.append((bias[0], place(bias[1], letter)))
        opts.append(AxisOption(d, tuple(ins)))
    contracted = {ltr for _, ls in operands for ltr in ls if ltr is not None and ltr not in out}
    for letter in sorted(contracted):  # contraction dims: split operands, partial output
        ins = [(n, place(ls, letter)) for n, ls in operands]
        if bias is not None:
            ins.append((bias[0], P))
        opts.append(AxisOption(P, tuple(ins)))
    for node in linear_in:  # multilinear: one partial operand gives a partial output
        ins = [(n, P if n is node else R) for n, _ in operands]
        if bias is not None:
            ins.append((bias[0], P))
        opts.append(AxisOption(P, tuple(ins)))
    return opts


def _aligned(letters: Letters, shp: Sequence[int], out_shape: Sequence[int]) -> list[str | None]:
    """Letters of an operand broadcast against the output: align from the right, size-1 dims are None."""
    offset = len(out_shape) - len(shp)
    return [None if shp[i] == 1 and out_shape[i + offset] != 1 else letters[i + offset] for i in range(len(shp))]


@register("linear")
def linear_rule(node: fx.Node) -> list[AxisOption]:
    """y (..., n) = x (..., k) @ W (n, k)^T + b (n)."""
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    batch = string.ascii_lowercase[: len(shape(x)) - 1].replace("k", "z").replace("n", "y")
    xl, wl, outl = list(batch) + ["k"], ["n", "k"], list(batch) + ["n"]
    bias = (b, _aligned(outl, shape(b), shape(node))) if isinstance(b, fx.Node) else None
    return einsum_options(outl, [(x, xl), (w, wl)], linear_in=[x], bias=bias)


@register("addmm")
def addmm_rule(node: fx.Node) -> list[AxisOption]:
    """y (m, n) = bias + a (m, k) @ b (k, n)."""
    bias, a, b = node.args[:3]
    outl = ["m", "n"]
    bias_l = (bias, _aligned(outl, shape(bias), shape(node))) if isinstance(bias, fx.Node) else None
    return einsum_options(outl, [(a, ["m", "k"]), (b, ["k", "n"])], linear_in=[a], bias=bias_l)


@register("matmul")
def matmul_rule(node: fx.Node) -> list[AxisOption]:
    """torch.matmul: (..., m, k) @ (..., k, n) -> (..., m, n), batch dims broadcast; 1-D sides drop m or n."""
    a, b = node.args[:2]
    sa, sb, so = shape(a), shape(b), shape(node)
    nbatch = len(so) - (len(sa) > 1) - (len(sb) > 1)
    batch = list("abcdefgh"[:nbatch])
    al = ["m", "k"] if len(sa) > 1 else ["k"]
    bl = ["k", "n"] if len(sb) > 1 else ["k"]
    outl = batch + (["m"] if len(sa) > 1 else []) + (["n"] if len(sb) > 1 else [])
    a_batch = len(sa) - len(al)
    b_batch = len(sb) - len(bl)
    a_letters = _aligned(batch, sa[:a_batch], so[:nbatch]) + al
    b_letters = _aligned(batch, sb[:b_batch], so[:nbatch]) + bl
    linear_in = [] if a is b else [a, b]  # x @ x is quadratic in x
    return einsum_options(outl, [(a, a_letters), (b, b_letters)], linear_in=linear_in)


@register("baddbmm")
def baddbmm_rule(node: fx.Node) -> list[AxisOption]:
    """y (b, m, n) = beta * input + alpha * b1 (b, m, k) @ b2 (b, k, n); input broadcasts against y."""
    bias, b1, b2 = node.args[:3]
    outl = ["b", "m", "n"]
    bias_l = (bias, _aligned(outl, shape(bias), shape(node))) if isinstance(bias, fx.Node) else None
    linear_in = [] if b1 is b2 else [b1, b2]
    return einsum_options(outl, [(b1, ["b", "m", "k"]), (b2, ["b", "k", "n"])], linear_in=linear_in, bias=bias_l)


@register("einsum")
def einsum_rule(node: fx.Node) -> list[AxisOption]:
    """y = einsum("ij,jk->ik", a, b) (the canonical, explicit equation): its letters are the dims."""
    lhs, out = node.args[0].split("->")
    operands = list(node.args[1:])
    sizes: dict[str, int] = {}
    for term, op in zip(lhs.split(","), operands):
        for c, n in zip(term, shape(op)):
            sizes[c] = max(sizes.get(c, 1), n)
    diagonal = {c for term in lhs.split(",") for c in term if term.count(c) > 1} | {c for c in out if out.count(c) > 1}

    def letters(term: str, shp) -> list[str | None]:  # broadcast (size-1) and diagonal letters are never split
        return [None if c in diagonal or (n == 1 and sizes[c] != 1) else c for c, n in zip(term, shp)]

    pairs = [(op, letters(term, shape(op))) for term, op in zip(lhs.split(","), operands)]
    nodes = [op for op in operands if isinstance(op, fx.Node)]
    linear_in = [op for op in dict.fromkeys(nodes) if nodes.count(op) == 1] if len(nodes) > 1 else nodes
    return einsum_options(letters(out, shape(node)), pairs, linear_in=linear_in)
