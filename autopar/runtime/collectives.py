"""Autograd-aware collectives on one mesh axis, on plain ``torch.distributed``.

Each Function's backward is the exact adjoint of its forward as a linear map on the tuple of
per-rank local tensors, so autograd of the distributed program computes d(sum over ranks of the
local objectives) / d(each local tensor). With n ranks on the axis and this rank at coordinate c:

    AllGatherFwdReduceScatterBwd   y = cat_i x_i along dim          | gx_c = sum_r chunk_c(g_r)
    ReduceScatterFwdAllGatherBwd   y_c = sum_i chunk_c(x_i)         | gx = cat_r g_r
    AllReduceFwdAllReduceBwd       y = sum_i x_i                    | gx = sum_r g_r
    AllToAllFwdAllToAllBwd         S(dim_from) -> S(dim_to)         | S(dim_to) -> S(dim_from)
    SplitFwdPadBwd                 y_c = chunk_c(x_c), no wire      | gx_c = g_c zero-padded at c
    ScaleFwdScaleBwd               y = x / n, no wire               | gx = g / n

The plain collectives are used on purpose (all_gather_into_tensor and reduce_scatter_tensor,
named all_gather_single and reduce_scatter_single from torch 2.14; all_reduce; all_to_all_single):
the functional ones cost 8-10 s on their first call.
Any dim, non-contiguous inputs, fp32/fp16/bf16 and integer tensors (which carry no grad).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from autopar.runtime.mesh import RuntimeMesh
    from autopar.runtime.shape_consistency import CommStep


# torch >= 2.14 renames the tensor-in/tensor-out gather and scatter (the old names warn). Looked up at each
# call, not bound at import, so a wrapper of torch.distributed's function (a profiler's, a benchmark's
# timer, a test's counter) sees autopar's calls as it sees anyone's.
def _all_gather_tensor(out, x, group=None, async_op: bool = False):
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(out, x, group=group, async_op=async_op)


def _reduce_scatter_tensor(out, x, op=dist.ReduceOp.SUM, group=None, async_op: bool = False):
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return scatter(out, x, op=op, group=group, async_op=async_op)


# ---- raw collectives: tensor in, new tensor out (never modify the input) ------------------
def all_gather(x: torch.Tensor, group, n: int, dim: int) -> torch.Tensor:
    """(.., L, ..) on each of n ranks -> (.., n*L, ..), rank i's piece at [i*L, (i+1)*L)."""
    out = torch.empty((n,) + tuple(x.shape), dtype=x.dtype, device=x.device)  # stacked (n, *x.shape)
    _all_gather_tensor(out.view(-1), x.contiguous().view(-1), group=group)
    return out.movedim(0, dim).flatten(dim, dim + 1)  # (.., n, L, ..) -> (.., n*L, ..)


def reduce_scatter(x: torch.Tensor, group, n: int, dim: int) -> torch.Tensor:
    """(.., n*L, ..) on each of n ranks -> (.., L, ..) on rank c: the sum over ranks of chunk c."""
    shape = list(x.shape)
    pieces = x.unflatten(dim, (n, shape[dim] // n)).movedim(dim, 0).contiguous()  # (n, .., L, ..)
    out = torch.empty(pieces.shape[1:], dtype=x.dtype, device=x.device)
    _reduce_scatter_tensor(out.view(-1), pieces.view(-1), op=dist.ReduceOp.SUM, group=group)
    return out


def all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    out = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def all_to_all(x: torch.Tensor, group, n: int, dim_from: int, dim_to: int) -> torch.Tensor:
    """Rank c holds chunk c along dim_from; afterwards it holds chunk c along dim_to.

    (.., L_from, .., T, ..) -> (.., n*L_from, .., T/n, ..): rank c sends chunk j of dim_to to rank j
    and concatenates what it receives along dim_from in rank order.
    """
    t = x.shape[dim_to]
    send = x.unflatten(dim_to, (n, t // n)).movedim(dim_to, 0).contiguous()  # (n, ..., T/n, ...)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: rank i's chunk c of dim_to
    # recv (n, *rest) where rest is x's shape with dim_to -> T/n; put n before dim_from and merge
    return recv.movedim(0, dim_from).flatten(dim_from, dim_from + 1)


def chunk(x: torch.Tensor, n: int, index: int, dim: int) -> torch.Tensor:
    """Piece ``index`` of ``n`` equal pieces along ``dim`` (a fresh contiguous tensor)."""
    size = x.shape[dim] // n
    return x.narrow(dim, index * size, size).contiguous()


def pad(g: torch.Tensor, n: int, index: int, dim: int) -> torch.Tensor:
    """Zeros of n times g's size along ``dim``, with g at piece ``index``: the adjoint of ``chunk``."""
    shape = list(g.shape)
    size = shape[dim]
    shape[dim] = n * size
    out = g.new_zeros(shape)
    out.narrow(dim, index * size, size).copy_(g)
    return out


def local_to_partial(x: torch.Tensor, n: int, coord: int) -> torch.Tensor:
    """R -> P on an axis of n ranks: floats are divided by n; integers kept on coordinate 0, zero elsewhere."""
    if x.is_floating_point() or x.is_complex():
        return x / n
    return x.clone() if coord == 0 else torch.zeros_like(x)


# ---- autograd Functions: the forward and backward named by what crosses the wire ----------
class AllGatherFwdReduceScatterBwd(torch.autograd.Function):
    """All-gather along ``dim`` in forward, reduce-scatter (sum) in backward: S(dim) -> R."""

    @staticmethod
    def forward(ctx, x, group, n, dim):
        ctx.group, ctx.n, ctx.dim = group, n, dim
        return all_gather(x, group, n, dim)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter(g, ctx.group, ctx.n, ctx.dim), None, None, None


class ReduceScatterFwdAllGatherBwd(torch.autograd.Function):
    """Reduce-scatter (sum) along ``dim`` in forward, all-gather in backward: P -> S(dim)."""

    @staticmethod
    def forward(ctx, x, group, n, dim):
        ctx.group, ctx.n, ctx.dim = group, n, dim
        return reduce_scatter(x, group, n, dim)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, ctx.group, ctx.n, ctx.dim), None, None, None


class AllReduceFwdAllReduceBwd(torch.autograd.Function):
    """All-reduce (sum) in forward, all-reduce (sum) in backward: P -> R."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return all_reduce(g, ctx.group), None


class AllReduceFwdScaleBwd(torch.autograd.Function):
    """All-reduce (sum) in forward; in backward, the gradient times n, locally: P -> R where every rank of
    the axis receives the same gradient (all computation after it is replicated on the axis), so the sum
    of the n identical contributions is n times this rank's, no collective needed."""

    @staticmethod
    def forward(ctx, x, group, n):
        ctx.n = n
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.n, None, None


class PendingSum(torch.Tensor):
    """A value an asynchronous all-reduce is still writing: any use of it waits for the reduction first.

    Autograd's seed for ``backward()`` (``ones_like``) and the other ``*_like`` factories read only its
    shape, so ``loss.backward()`` starts at once while the loss's sum is on the wire; ``loss.item()``,
    printing, arithmetic, ``detach()`` see the reduced value. Views share the pending reduction.
    """

    _METADATA_ONLY = (torch.ops.aten.ones_like.default, torch.ops.aten.zeros_like.default,
                      torch.ops.aten.empty_like.default)

    @staticmethod
    def __new__(cls, elem: torch.Tensor, work):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                layout=elem.layout, device=elem.device,
                                                requires_grad=elem.requires_grad)
        r.elem, r.work = elem, work
        return r

    def value(self) -> torch.Tensor:
        """The reduced tensor (waits for the reduction the first time)."""
        if self.work is not None:
            self.work.wait()
            self.work = None
        return self.elem

    def __repr__(self) -> str:  # type: ignore[override]
        return repr(self.value())

    def tolist(self):
        return self.value().tolist()

    def numpy(self, *args, **kwargs):  # type: ignore[override]
        return self.value().numpy(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map_only

        kwargs = kwargs or {}
        if func in cls._METADATA_ONLY:
            return func(*tree_map_only(PendingSum, lambda p: p.elem, args), **kwargs)
        if func.is_view:  # an alias of the buffer being written: pending too
            pending = [a for a in args if isinstance(a, PendingSum)][0]
            out = func(*tree_map_only(PendingSum, lambda p: p.elem, args), **kwargs)
            return tree_map_only(torch.Tensor, lambda t: PendingSum(t, pending.work), out)
        return func(*tree_map_only(PendingSum, PendingSum.value, args),
                    **tree_map_only(PendingSum, PendingSum.value, kwargs))


class AllReduceLaterFwdScaleBwd(AllReduceFwdScaleBwd):
    """AllReduceFwdScaleBwd (its backward) whose forward does not wait: it returns a ``PendingSum``. For a
    scalar the module returns (a loss), so that no rank waits for the others between forward and backward."""

    @staticmethod
    def forward(ctx, x, group, n):
        ctx.n = n
        out = x.detach().clone(memory_format=torch.contiguous_format)
        return PendingSum(out, dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group, async_op=True))


class SumLater(torch.nn.Module):
    """``AllReduceLaterFwdScaleBwd`` over ``group`` (``n`` ranks), as a module of the per-rank graph."""

    def __init__(self, group, n: int) -> None:
        super().__init__()
        self.group, self.n = group, n

    def forward(self, x):
        return AllReduceLaterFwdScaleBwd.apply(x, self.group, self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class AllToAllFwdAllToAllBwd(torch.autograd.Function):
    """All-to-all S(dim_from) -> S(dim_to) in forward, all-to-all back S(dim_to) -> S(dim_from) in backward."""

    @staticmethod
    def forward(ctx, x, group, n, dim_from, dim_to):
        ctx.group, ctx.n, ctx.dims = group, n, (dim_from, dim_to)
        return all_to_all(x, group, n, dim_from, dim_to)

    @staticmethod
    def backward(ctx, g):
        dim_from, dim_to = ctx.dims
        return all_to_all(g, ctx.group, ctx.n, dim_to, dim_from), None, None, None, None


class SplitFwdPadBwd(torch.autograd.Function):
    """Keep this rank's chunk in forward, zero-pad the gradient back in backward; no communication: R -> S(dim)."""

    @staticmethod
    def forward(ctx, x, n, index, dim):
        ctx.n, ctx.index, ctx.dim = n, index, dim
        return chunk(x, n, index, dim)

    @staticmethod
    def backward(ctx, g):
        return pad(g, ctx.n, ctx.index, ctx.dim), None, None, None


class ScaleFwdScaleBwd(torch.autograd.Function):
    """Divide by n in forward and the gradient by n in backward; no communication: R -> P.

    Integer tensors (no grad) are kept on coordinate 0 and zeroed elsewhere, so the sum stays exact.
    """

    @staticmethod
    def forward(ctx, x, n, coord):
        ctx.n = n
        return local_to_partial(x, n, coord)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.n, None, None


def run_step(x: torch.Tensor, step: CommStep, mesh: RuntimeMesh, uniform: frozenset = frozenset()) -> torch.Tensor:
    """Run one planned CommStep on this rank's local tensor. A step on a size-1 axis issues nothing.
    ``uniform``: mesh axes on which the result's gradient is the same on every rank (an all-reduce there
    scales its gradient instead of reducing it)."""
    n = mesh.size(step.axis)
    if n == 1:
        return x
    group, c = mesh.group(step.axis), mesh.coord[step.axis]
    if step.kind == "all_gather":
        return AllGatherFwdReduceScatterBwd.apply(x, group, n, step.dim)
    if step.kind == "reduce_scatter":
        return ReduceScatterFwdAllGatherBwd.apply(x, group, n, step.dim)
    if step.kind == "all_reduce":
        if step.axis in uniform:
            return AllReduceFwdScaleBwd.apply(x, group, n)
        return AllReduceFwdAllReduceBwd.apply(x, group)
    if step.kind == "all_to_all":
        return AllToAllFwdAllToAllBwd.apply(x, group, n, step.dim, step.dim_to)
    if step.kind == "split":
        return SplitFwdPadBwd.apply(x, n, c, step.dim)
    if step.kind == "to_partial":
        return ScaleFwdScaleBwd.apply(x, n, c)
    raise ValueError(f"unknown CommStep kind {step.kind!r} in {step}")
