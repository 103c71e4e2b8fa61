"""Comparisons shared by the kernel tests: relative error against float64 references."""
import torch


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| in float64."""
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def tol(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 1e-2


def check_grads(fn, ref, inputs, dtype, **kwargs):
    """fn(*inputs) and every input gradient match ref on float64 copies of the same inputs."""
    out = fn(*inputs, **kwargs)
    grad_out = torch.randn_like(out)
    needs = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    grads = torch.autograd.grad(out, needs, grad_out)
    copies = [x.detach().double().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor)
              and x.is_floating_point() else x for x in inputs]
    want = ref(*copies, **kwargs)
    want_grads = torch.autograd.grad(want, [c for c in copies if isinstance(c, torch.Tensor) and c.requires_grad],
                                     grad_out.double())
    assert out.dtype == inputs[0].dtype and out.shape == want.shape
    limit = tol(dtype)
    assert rel_err(out, want) < limit, f"output: rel err {rel_err(out, want):.2e}"
    for i, (g, w) in enumerate(zip(grads, want_grads)):
        assert rel_err(g, w) < limit, f"grad of input {i}: rel err {rel_err(g, w):.2e}"
