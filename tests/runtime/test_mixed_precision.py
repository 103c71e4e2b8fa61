"""Mixed precision (PlanOptions.mixed_precision): bf16 compute, fp32 master parameters, fp32 gradient
reduction; the same numbers as one device under the same policy, and the memory the plan predicts."""
from __future__ import annotations

import copy

import torch

from tests.distributed import run_distributed

RTOL = 2e-2  # bf16 keeps 8 bits of mantissa: elements are compared to 2 % of the tensor's largest


def _close(got, want, what: str, scale: float | None = None) -> None:
    """Within RTOL, elements near zero within RTOL of ``scale`` (default: the tensor's largest element)."""
    scale = float(want.abs().max()) if scale is None else scale
    torch.testing.assert_close(got.float(), want.float(), rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


def _reference(model, inputs):
    """The single-device model under the policy: its trace with every parameter and input read in bf16."""
    from autopar.tracer import trace

    return trace(model, inputs, compute_dtype=torch.bfloat16)


def _joined(gm, pick) -> dict:
    """``pick(param)`` of every parameter the traced ``gm`` reads, fused projections' pieces joined back
    under the original name (as ParallelModule.full_grads does)."""
    out, pieces = {}, {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and "param" in node.meta:
            value = pick(gm.get_parameter(node.target))
            if "param_piece" in node.meta:
                piece = node.meta["param_piece"]
                pieces.setdefault(piece.original, []).append((piece.start, piece.dim, value))
            else:
                for alias in node.meta["param_aliases"]:
                    out[alias] = value
    for name, parts in pieces.items():
        parts.sort(key=lambda p: p[0])
        out[name] = torch.cat([v for _s, _d, v in parts], dim=parts[0][1])
    return out


def check_bf16(rank: int, world_size: int) -> dict:
    import autopar
    from autopar import zoo
    from autopar.runtime.saved_probe import SavedTensorsProbe

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    ref = _reference(copy.deepcopy(model), inputs)
    pm = autopar.autoparallelize(model, cluster, inputs, mixed_precision="bf16")
    assert all(p.dtype == torch.float32 for p in pm.parameters()), "parameters stay fp32 (the master copy)"
    assert ".to(torch.bfloat16)" in pm.code or "torch.bfloat16" in pm.code
    # Adam divides each gradient by its own size: bf16 rounding noise on a near-zero gradient (~1e-3 here)
    # would become a full-size step of either sign; eps=1e-2 keeps noise that small from steering it
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, eps=1e-2)
    opt = torch.optim.AdamW(pm.parameters(), lr=1e-3, eps=1e-2)
    for step in range(3):
        ref_opt.zero_grad()
        opt.zero_grad()
        ref_loss, loss = ref(**inputs).loss, pm(**inputs).loss
        ref_loss.backward()
        loss.backward()
        _close(loss.detach(), ref_loss.detach(), f"loss at step {step}")
        if step == 0:
            grads, want = pm.full_grads(), _joined(ref, lambda p: p.grad)
            assert set(grads) == set(want)
            for name, g in want.items():
                assert grads[name].dtype == torch.float32, f"{name}: gradients reach the master copy in fp32"
                _close(grads[name], g, f"grad {name}")
        ref_opt.step()
        opt.step()
    state, ref_state = pm.full_state_dict(), _joined(ref, lambda p: p.detach())
    for name, value in ref_state.items():
        # parameters that start at zero (biases) are judged on the scale of the model's weights (init std 0.02)
        _close(state[name], value, f"{name} after 3 AdamW steps", scale=max(float(value.abs().max()), 0.02))
    # what the ranks hold at the end of forward: parameters, AdamW state, saved activations (no grads yet)
    opt.zero_grad(set_to_none=True)
    with SavedTensorsProbe(pm) as probe:
        loss = pm(**inputs).loss
    saved = probe.nbytes()
    del loss
    params = sum(p.numel() * p.element_size() for p in pm.parameters())
    moments = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    timeline = pm.plan.timeline
    end = max(i for i, p in enumerate(timeline.phase) if p == "forward")
    predicted = sum(timeline.series[c][end] for c in ("params", "optimizer", "activations"))
    held = params + moments + saved
    return {"held": held, "predicted": predicted, "saved": saved, "kept": timeline.kept()}


def test_bf16_compute_with_fp32_master_on_2x2():
    results = run_distributed(check_bf16, 4, timeout=400)
    for r in results:
        assert abs(r["held"] - r["predicted"]) <= 0.05 * r["held"], r


def check_fp16(rank: int, world_size: int) -> list[float]:
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    import autopar
    from autopar import zoo

    model, inputs = zoo.build("gpt2", "tiny", device="cpu", seed=0)
    from autopar.tracer import trace

    ref = trace(copy.deepcopy(model), inputs, compute_dtype=torch.float16)  # one device, the same policy
    pm = autopar.autoparallelize(model, autopar.ClusterInfo.preset(f"cpu:{world_size}"), inputs,
                                 mixed_precision="fp16")
    runs = []
    for module, scaler in ((pm, ShardedGradScaler(device="cpu", init_scale=2.0**10)),
                           (ref, torch.amp.GradScaler("cpu", init_scale=2.0**10))):
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3, eps=1e-2)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = module(**inputs).loss
            scaler.scale(loss).backward()  # the sharded scaler agrees on inf/nan across ranks
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
        runs.append(losses)
    for got, want in zip(*runs):
        assert abs(got - want) <= RTOL * abs(want), runs
    return runs[0]


def test_fp16_with_a_sharded_grad_scaler():
    losses = run_distributed(check_fp16, 2, timeout=300)
    assert losses[0] == losses[1] and losses[0][-1] < losses[0][0]
