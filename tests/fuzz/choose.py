"""How the fuzzer draws each op of the menu: ``BUILDERS[name] = (weight, builder)``.

A builder picks inputs among the graph's values (``Builder.pick``), draws the op's constants and
calls ``Builder.add``; it returns whether a step was added (``add`` refuses a step that does not
run or grows too large, and the generator simply draws another).
"""
from __future__ import annotations

import torch

from tests.fuzz.graphs import MAX_NUMEL, Builder, Value
from tests.fuzz.menu import ACTIVATIONS, BINARY, TIED_ACTIVATIONS


def _f(ndim_lo: int = 1, ndim_hi: int = 4, ties: bool = True):
    return lambda v: v.kind == "f" and ndim_lo <= len(v.shape) <= ndim_hi and (ties or not v.ties)


def _dim(b: Builder, shape, negative: bool = True) -> int:
    d = b.rng.randrange(len(shape))
    return d - len(shape) if negative and b.rng.random() < 0.25 else d


def draw_inputs(b: Builder) -> None:
    """One or two float inputs, (batch, features) to (batch, channels, h, w), and sometimes integer ids."""
    batch = b.rng.choice([2, 3, 4, 5, 6, 8])
    shape = None
    for _ in range(2 if b.rng.random() < 0.35 else 1):
        if shape is None or b.rng.random() < 0.5:
            while True:
                shape = (batch, *[b.size() for _ in range(b.rng.choice([1, 1, 2, 2, 3]))])
                if torch.Size(shape).numel() <= MAX_NUMEL // 2:
                    break
        b.input(Value(shape, "f"), torch.randn(shape, dtype=torch.float64))
    if b.rng.random() < 0.35:
        vocab = b.size(3)
        ids = (batch,) if b.rng.random() < 0.4 else (batch, b.size())
        b.input(Value(ids, "i", vocab=vocab), torch.randint(0, vocab, ids))


# ---- dense ------------------------------------------------------------------------------------------------
def linear(b):
    i = b.pick(_f(1, 3))
    if i is None:
        return False
    f = b.vals[i].shape[-1]
    reuse = b.find_module(lambda s: s.kind == "Linear" and s.args[0] == f) if b.rng.random() < 0.3 else None
    bias = b.rng.random() < 0.7
    return b.add("module", [i], module=reuse or ("Linear", (f, b.size(), bias)), ties=None if reuse else not bias)


def residual(b):
    i = b.pick(_f(2, 3))
    if i is None:
        return False
    f = b.vals[i].shape[-1]
    return b.add("residual", [i], module=("Linear", (f, f)), ties=False)


def matmul(b):
    i = b.pick(_f(2, 4))
    if i is None:
        return False
    a = b.vals[i].shape
    j = b.pick(lambda v: v.kind == "f" and len(v.shape) >= 2 and v.shape[-2] == a[-1])
    if j is None or b.rng.random() < 0.2:
        return b.add("gram", [i], left=b.rng.random() < 0.5)
    same3 = len(a) == 3 and len(b.vals[j].shape) == 3 and a[0] == b.vals[j].shape[0]
    how = b.rng.choice(["matmul", "at", "bmm", "einsum"] if same3 else ["matmul", "at"])
    return b.add("matmul", [i, j], how=how)


def baddbmm(b):
    i = b.pick(_f(3, 3))
    if i is None:
        return False
    shape = b.vals[i].shape
    j = b.pick(lambda v: v.kind == "f" and v.shape == shape)
    beta, alpha = b.rng.choice([1.0, 0.5]), b.rng.choice([1.0, 0.25])
    return b.add("baddbmm", [i, i, j], module=("Scale", (shape[1], shape[1])), beta=beta, alpha=alpha)


def embedding(b):
    i = b.pick(lambda v: v.kind == "i")
    if i is None:
        return False
    vocab = b.vals[i].vocab
    reuse = b.find_module(lambda s: s.kind == "Embedding" and s.args[0] >= vocab) if b.rng.random() < 0.3 else None
    return b.add("module", [i], module=reuse or ("Embedding", (vocab + b.rng.choice([0, 0, 3]), b.size())))


def tied_linear(b):
    emb = b.find_module(lambda s: s.kind == "Embedding")
    if emb is None:
        return False
    dim = b.modules[emb][0].args[1]
    i = b.pick(lambda v: v.kind == "f" and len(v.shape) in (2, 3) and v.shape[-1] == dim)
    return i is not None and b.add("tied_linear", [i], module=emb)


def cross_entropy(b):
    i = b.pick(lambda v: v.kind == "f" and len(v.shape) in (2, 3) and v.shape[-1] >= 2)
    if i is None:
        return False
    shape = b.vals[i].shape
    j = b.pick(lambda v: v.kind == "i" and v.shape == shape[:-1] and v.vocab <= shape[-1])
    return j is not None and b.add("cross_entropy", [i, j])


# ---- pointwise --------------------------------------------------------------------------------------------
def activation(b):
    i = b.pick()
    if i is None:
        return False
    fn = b.rng.choice(list(ACTIVATIONS))
    return b.add("activation", [i], fn=fn, ties=True if fn in TIED_ACTIVATIONS else None)


def scalar(b):
    i = b.pick()
    how = b.rng.choice(["mul", "add", "rsub", "div", "pow", "neg"])
    return i is not None and b.add("scalar", [i], how=how, c=b.rng.choice([0.5, 2.0, -1.5, 3.0]))


def _broadcasts_to(small, big) -> bool:
    if len(small) > len(big):
        return False
    return all(s in (1, g) for s, g in zip(reversed(small), reversed(big)))


def binary(b):
    i = b.pick()
    if i is None:
        return False
    shape = b.vals[i].shape
    j = b.pick(lambda v: v.kind == "f" and _broadcasts_to(v.shape, shape))
    if j is None:
        return False
    return b.add("binary", [i, j], fn=b.rng.choice(list(BINARY)))


def add_mean(b):
    i = b.pick()
    return i is not None and b.add("add_mean", [i], dim=_dim(b, b.vals[i].shape))


def scale(b):
    i = b.pick(_f(2, 4))
    if i is None:
        return False
    shape = b.vals[i].shape
    param = (shape[-1],) if b.rng.random() < 0.6 else (shape[1],) + (1,) * (len(shape) - 2)
    return b.add("scale", [i], module=("Scale", param), how=b.rng.choice(["mul", "add"]))


def like(b):
    i = b.pick()
    how = b.rng.choice(["zeros_plus", "ones_mul", "full_like", "new_ones", "zeros_shape", "arange"])
    return i is not None and b.add("like", [i], how=how)


def masks(b):
    """A bool mask of a value, a mask combined with another, or one applied (where, masked_fill)."""
    roll = b.rng.random()
    if roll < 0.35:
        i = b.pick()
        if i is None:
            return False
        how = b.rng.choice(["gt", "lt_mean", "tril"])
        return b.add("mask", [i], how=how)
    if roll < 0.45:
        i = b.pick(lambda v: v.kind == "b")
        if i is None:
            return False
        j = b.pick(lambda v: v.kind == "b" and v.shape == b.vals[i].shape)
        how = b.rng.choice(["and", "or", "not"])
        return b.add("mask_logic", [i, j if how != "not" else i], how=how)
    if roll < 0.6:
        i = b.pick()
        return i is not None and b.add("where_zeros", [i], how=b.rng.choice(["zeros_like", "scalar"]), ties=True)
    m = b.pick(lambda v: v.kind == "b")
    if m is None:  # no mask yet: make one of a value, to apply (else where and masked_fill were rare)
        i = b.pick()
        if i is None or not b.add("mask", [i], how=b.rng.choice(["gt", "lt_mean"])):
            return False
        m = len(b.vals) - 1
    shape = b.vals[m].shape
    i = b.pick(lambda v: v.kind == "f" and v.shape == shape)
    if i is None:
        return False
    if b.rng.random() < 0.5:
        j = b.pick(lambda v: v.kind == "f" and _broadcasts_to(v.shape, shape))
        return j is not None and b.add("where", [m, i, j], ties=True)
    return b.add("masked_fill", [i, m], value=b.rng.choice([0.0, -1.0]), ties=True)


def inplace(b):
    i = b.pick()
    if i is None:
        return False
    shape = b.vals[i].shape
    j = b.pick(lambda v: v.kind == "f" and v.shape == shape)
    how = b.rng.choice(["add_", "mul_", "setitem", "setitem_value", "relu_", "view_mul_", "masked_fill_"])
    ties = how in ("setitem", "relu_", "masked_fill_") or None
    return b.add("inplace", [i, j], how=how, k=b.rng.randint(1, max(1, shape[-1] - 1)), ties=ties)


def misc_pointwise(b):
    i = b.pick()
    if i is None:
        return False
    shape = b.vals[i].shape
    op = b.rng.choice(["clamp", "tril", "cumsum", "flip", "roll", "pad"])
    if op == "clamp":
        return b.add("clamp", [i], lo=-0.5, hi=b.rng.choice([0.5, 1.0]), ties=True)
    if op == "tril":
        return len(shape) >= 2 and b.add("tril", [i], ties=True)
    if op == "pad":
        return b.add("pad", [i], left=b.rng.randint(0, 2), right=b.rng.randint(0, 2), ties=True)
    if op == "roll":
        return b.add("roll", [i], shift=b.rng.randint(1, 3), dim=_dim(b, shape))
    return b.add(op, [i], dim=_dim(b, shape))


# ---- normalisation, softmax, attention --------------------------------------------------------------------
def norm(b):
    i = b.pick(_f(2, 4))
    if i is None:
        return False
    shape = b.vals[i].shape
    kind = b.rng.choice(["LayerNorm", "RMSNorm", "BatchNorm", "GroupNorm"])
    if kind in ("LayerNorm", "RMSNorm"):
        reuse = b.find_module(lambda s: s.kind == kind and s.args[0] == shape[-1]) if b.rng.random() < 0.3 else None
        affine = b.rng.random() < 0.8
        return b.add("module", [i], module=reuse or (kind, (shape[-1], 1e-5, affine)), ties=False)
    c = shape[1]
    if kind == "BatchNorm":
        if len(shape) == 4:
            return b.add("module", [i], module=("BatchNorm2d", (c,)))
        return b.add("module", [i], module=("BatchNorm1d", (c,)))
    groups = b.rng.choice([g for g in range(1, c + 1) if c % g == 0])
    return len(shape) >= 3 and b.add("module", [i], module=("GroupNorm", (groups, c)))


def softmax(b):
    i = b.pick()
    return i is not None and b.add("softmax", [i], dim=_dim(b, b.vals[i].shape), log=b.rng.random() < 0.3)


def attention(b):
    if b.rng.random() < 0.5:  # a block: projections, heads, sdpa or its softmax form
        i = b.pick(_f(3, 3))
        if i is None:
            return False
        e = b.vals[i].shape[-1]
        heads = b.rng.choice([h for h in (1, 2, 3, 4) if e % h == 0])
        return b.add("module", [i], module=("Attention", (e, heads, b.rng.random() < 0.5, b.rng.random() < 0.4)),
                     ties=False)
    i = b.pick(_f(3, 4))  # (b, s, e) or (b, h, s, e)
    if i is None:
        return False
    shape = b.vals[i].shape
    k = b.pick(lambda v: v.kind == "f" and v.shape == shape)
    v = b.pick(lambda v: v.kind == "f" and v.shape == shape)
    causal = b.rng.random() < 0.5
    return b.add("sdpa", [i, k, v], causal=causal, masked=not causal and b.rng.random() < 0.5)


# ---- views, slices, indexing, split and cat ---------------------------------------------------------------
def reshape(b):
    i = b.pick()
    if i is None:
        return False
    shape = list(b.vals[i].shape)
    roll = b.rng.random()
    if roll < 0.4 and len(shape) >= 2:  # merge two neighbouring dims
        d = b.rng.randrange(len(shape) - 1)
        new = shape[:d] + [shape[d] * shape[d + 1]] + shape[d + 2:]
    elif roll < 0.7:  # split a dim into two
        d = b.rng.randrange(len(shape))
        factors = [f for f in range(2, shape[d]) if shape[d] % f == 0]
        if not factors:
            return False
        f = b.rng.choice(factors)
        new = shape[:d] + [f, shape[d] // f] + shape[d + 1:]
    else:
        op = b.rng.choice(["flatten", "unsqueeze", "squeeze"])
        if op == "flatten":
            return b.add("flatten", [i], start=b.rng.randrange(len(shape)))
        if op == "unsqueeze":
            return len(shape) < 4 and b.add("unsqueeze", [i], dim=b.rng.randint(0, len(shape)))
        ones = [d for d, n in enumerate(shape) if n == 1]
        return bool(ones) and b.add("squeeze", [i], dim=b.rng.choice(ones))
    if len(new) > 4:
        return False
    if b.rng.random() < 0.3:
        new[b.rng.randrange(len(new))] = -1
    return b.add(b.rng.choice(["reshape", "view"]), [i], shape=tuple(new))


def permute(b):
    i = b.pick(_f(2, 4))
    if i is None:
        return False
    n = len(b.vals[i].shape)
    if b.rng.random() < 0.5:
        d0, d1 = b.rng.sample(range(n), 2)
        return b.add("transpose", [i], d0=d0, d1=d1)
    dims = list(range(n))
    b.rng.shuffle(dims)
    return b.add("permute", [i], dims=tuple(dims))


def _value_and_dim(b: Builder):
    """A float value, its shape, one of its dims and that dim's size (None when there is no float value)."""
    i = b.pick()
    if i is None:
        return None
    shape = b.vals[i].shape
    d = b.rng.randrange(len(shape))
    return i, shape, d, shape[d]


def slicing(b):
    if (picked := _value_and_dim(b)) is None:
        return False
    i, shape, d, n = picked
    op = b.rng.choice(["slice", "slice", "select", "narrow"])
    if op == "select":
        return len(shape) >= 2 and b.add("select", [i], dim=d, i=b.rng.randrange(-n, n))
    start = b.rng.randrange(n)
    if op == "narrow":
        return b.add("narrow", [i], dim=d, start=start, length=b.rng.randint(1, n - start))
    stop = b.rng.choice([None, b.rng.randint(start + 1, n), -1])
    return b.add("slice", [i], dim=d, start=start, stop=stop, step=b.rng.choice([1, 1, 2]))


def indexing(b):
    if (picked := _value_and_dim(b)) is None:
        return False
    i, shape, d, n = picked
    op = b.rng.choice(["index_select", "advanced_index", "gather"])
    k = b.rng.randint(1, n + 2)
    if op == "gather":
        ishape = shape[:d] + (k,) + shape[d + 1:]
        count = torch.Size(ishape).numel()
        if count > MAX_NUMEL:
            return False
        values = tuple(b.rng.randrange(n) for _ in range(count))
        return b.add("gather", [i], module=("Const", (values, ishape)), dim=d, ties=True)
    values = tuple(b.rng.randrange(n) for _ in range(k))
    return b.add(op, [i], module=("Const", (values, (k,))), dim=d, ties=len(set(values)) < k or None)


def split_cat(b):
    if (picked := _value_and_dim(b)) is None:
        return False
    i, shape, d, n = picked
    op = b.rng.choice(["split_cat", "chunk", "unbind", "cat", "stack"])
    if op == "split_cat":
        return n >= 2 and b.add("split_cat", [i], size=b.rng.randint(1, n - 1), dim=d)
    if op == "chunk":
        parts = b.rng.randint(2, max(2, n))
        return b.add("chunk", [i], n=parts, dim=d, i=b.rng.randrange(min(parts, n)))
    if op == "unbind":
        return len(shape) >= 2 and n <= 4 and b.add("unbind", [i], dim=d, i=b.rng.randrange(n))
    if op == "stack":
        j = b.pick(lambda v: v.kind == "f" and v.shape == shape)
        return b.add("stack", [i, j], dim=b.rng.randint(0, len(shape)), ties=True if i == j else None)
    j = b.pick(lambda v: v.kind == "f" and len(v.shape) == len(shape)
               and all(a == c for k, (a, c) in enumerate(zip(v.shape, shape)) if k != d))
    return b.add("cat", [i, j], dim=d, ties=True if i == j else None)


def expand_repeat(b):
    i = b.pick(_f(1, 3))
    if i is None:
        return False
    shape = b.vals[i].shape
    op = b.rng.choice(["expand_sum", "repeat", "repeat_interleave"])
    if op == "expand_sum":
        return b.add("expand_sum", [i], dim=b.rng.randint(0, len(shape)), n=b.rng.randint(2, 4))
    if op == "repeat":
        reps = [1] * len(shape)
        reps[b.rng.randrange(len(shape))] = b.rng.randint(2, 3)
        return b.add("repeat", [i], reps=tuple(reps), ties=True)
    return b.add("repeat_interleave", [i], n=b.rng.randint(2, 3), dim=_dim(b, shape), ties=True)


# ---- reductions, selection ------------------------------------------------------------------------------
def reduce(b):
    i = b.pick()
    if i is None:
        return False
    shape = b.vals[i].shape
    roll = b.rng.random()
    if roll < 0.6:
        fn = b.rng.choice(["sum", "mean", "amax", "amin"])
        if fn in ("amax", "amin") and b.vals[i].ties:
            fn = "sum"
        dims = tuple(sorted(b.rng.sample(range(len(shape)), b.rng.randint(1, min(2, len(shape))))))
        if len(dims) == len(shape) and b.rng.random() < 0.7:
            dims = dims[:1]
        keepdim = b.rng.random() < 0.4
        if not keepdim and len(dims) == len(shape):
            return False
        return b.add("reduce", [i], fn=fn, dims=dims, keepdim=keepdim)
    op = b.rng.choice(["max_values", "logsumexp", "var", "norm"])
    if len(shape) < 2 or (op == "max_values" and b.vals[i].ties):
        return False
    d = _dim(b, shape)
    if op == "var" and shape[d] < 2:
        return False
    return b.add(op, [i], dim=d)


def select_topk(b):
    i = b.pick(lambda v: v.kind == "f" and not v.ties)
    if i is None:
        return False
    shape = b.vals[i].shape
    d = _dim(b, shape)
    op = b.rng.choice(["topk", "topk", "sort", "argmax"])
    if op == "topk":
        return b.add("topk", [i], k=b.rng.randint(1, shape[d]), dim=d, largest=b.rng.random() < 0.7)
    if op == "argmax":
        return len(shape) >= 2 and b.add("argmax", [i], dim=d, vocab=shape[d])
    return b.add("sort", [i], dim=d)


# ---- convolution and pooling ----------------------------------------------------------------------------
def conv(b):
    i = b.pick(_f(3, 4))
    if i is None:
        return False
    shape = b.vals[i].shape
    c, out = shape[1], b.size()
    groups = b.rng.choice([g for g in (1, 2, 3) if c % g == 0 and out % g == 0])
    k, stride, pad = b.rng.choice([1, 2, 3]), b.rng.choice([1, 1, 2]), b.rng.choice([0, 1])
    kind = "Conv1d" if len(shape) == 3 else "Conv2d"
    return b.add("module", [i], module=(kind, (c, out, k, stride, pad, 1, groups, b.rng.random() < 0.7)), ties=False)


def pool(b):
    i = b.pick(_f(3, 4))
    if i is None:
        return False
    two = len(b.vals[i].shape) == 4
    names = ["avg_pool", "adaptive_avg_pool"] + ([] if b.vals[i].ties else ["max_pool"])
    fn = b.rng.choice(names) + ("2d" if two else "1d")
    return b.add("pool", [i], fn=fn, k=b.rng.choice([1, 2, 3]))


BUILDERS = {
    "linear": (12, linear), "residual": (4, residual), "matmul": (5, matmul), "baddbmm": (2, baddbmm),
    "embedding": (4, embedding), "tied_linear": (3, tied_linear), "cross_entropy": (2, cross_entropy),
    "activation": (8, activation), "scalar": (3, scalar), "binary": (7, binary), "add_mean": (2, add_mean),
    "scale": (3, scale), "like": (3, like), "masks": (5, masks), "inplace": (3, inplace),
    "misc_pointwise": (3, misc_pointwise), "norm": (6, norm), "softmax": (4, softmax), "attention": (4, attention),
    "reshape": (6, reshape), "permute": (4, permute), "slicing": (4, slicing), "indexing": (3, indexing),
    "split_cat": (4, split_cat), "expand_repeat": (2, expand_repeat), "reduce": (5, reduce),
    "select_topk": (3, select_topk), "conv": (4, conv), "pool": (3, pool),
}
