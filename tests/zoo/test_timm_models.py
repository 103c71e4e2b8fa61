"""timm vision models (autopar/zoo/timm_models.py): traced, planned and trained like a single device.

- tier 1: each tiny model's traced forward equals eager; each published size traces on meta and
  plans on 8xH100 with every op covered by a sharding rule (no fallback);
- tier 2: every tiny model on a 2x2 mesh of 4 gloo processes gives the single-device loss, every
  gradient, and every parameter and BatchNorm running statistic after 3 AdamW steps; the same world
  checks the synchronised BatchNorm on its own (batch split over one and two mesh axes).
"""
from __future__ import annotations

import copy
import time

import pytest
import torch

from tests.distributed import run_distributed
from tests.test_autoparallelize import train_and_compare

RTOL, ATOL = 1e-4, 1e-5
MODELS = ["timm:vit_base_patch16_224", "timm:deit_base_patch16_224", "timm:resnet50", "timm:convnext_tiny",
          "timm:swin_tiny_patch4_window7_224", "timm:efficientnet_b0", "timm:regnetx_002"]
# added by issue 11 (their published sizes plan without fallback in tests/zoo/test_no_fallback.py). MobileNetV3
# and HRNet are not trained on 2x2 here: their tiny float32 gradients differ from float64 ones by more than
# atol on a single device already (BatchNorm over a few values per channel: 1.7e-5 and 6e-3).
NEW = ["timm:poolformer_s12", "timm:densenet121", "timm:levit_128", "timm:mobilenetv3_large_100",
       "timm:maxvit_tiny_tf_224", "timm:hrnet_w18_small"]
TRAINED_NEW = ["timm:poolformer_s12", "timm:densenet121", "timm:levit_128", "timm:maxvit_tiny_tf_224"]


def _close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


# ---- tier 1 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS + NEW)
def test_traced_forward_equals_eager(name):
    from autopar import zoo
    from autopar.tracer import trace

    model, inputs = zoo.build(name, "tiny", device="cpu")
    eager = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = trace(model, inputs)
    for k, v in model.state_dict().items():  # tracing runs on meta: no buffer of the model moves
        assert torch.equal(v, before[k]), f"tracing changed {k}"
    _close(f"{name} loss", gm(**inputs), eager(**inputs))
    for k, v in eager.state_dict().items():  # BatchNorm running statistics moved alike
        _close(f"{name} {k} after one forward", model.state_dict()[k], v)


def test_published_sizes_plan_on_8xh100():
    import autopar
    from autopar import zoo

    cluster = autopar.ClusterInfo.preset("8xH100")
    times = {}
    for name in MODELS:
        t0 = time.perf_counter()
        model, inputs = zoo.build(name, device="meta")
        plan = autopar.plan(model, cluster, inputs, time_limit=30)
        times[name] = time.perf_counter() - t0
        assert not plan.fallbacks, f"{name}: ops without a sharding rule: {plan.fallbacks}"
    print("planning seconds at published size:", {k: round(v, 1) for k, v in times.items()})


def _conv_strategies(groups: int, channels: int, mesh: str) -> set[str]:
    import autopar
    from autopar.solver.strategies import strategies_for
    from autopar.tracer import trace

    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)
    gm = trace(conv, (torch.randn(4, channels, 8, 8),))
    node = next(n for n in gm.graph.nodes if n.meta.get("op") == "conv2d")
    return {str(s) for s in strategies_for(node, autopar.ClusterInfo.preset(mesh))}


def test_conv2d_strategies():
    # dense conv, one mesh axis: R, batch, output channels, input channels -> P, x partial -> P
    assert _conv_strategies(1, 8, "cpu:2") == {
        "RRRR = RRRR x RRRR", "S0RRR = S0RRR x RRRR", "RS0RR = RRRR x S0RRR", "RRRR+P0 = RS0RR x RS0RR",
        "RRRR+P0 = RRRR+P0 x RRRR"}
    # depthwise (g = C = 8): the channel split runs g/2 groups per rank; no in/out-only channel split
    assert _conv_strategies(8, 8, "cpu:2") == {
        "RRRR = RRRR x RRRR", "S0RRR = S0RRR x RRRR", "RS0RR = RS0RR x S0RRR", "RRRR+P0 = RRRR+P0 x RRRR"}
    # 2 groups of 4 channels over 4 ranks: 8 channels divide 4 but the groups do not, so no channel split
    assert not any(s.startswith("RS0RR") for s in _conv_strategies(2, 8, "cpu:4"))
    assert any(s.startswith("RS0RR") for s in _conv_strategies(2, 8, "cpu:2"))


# ---- tier 2 -------------------------------------------------------------------------------------------
def check_sync_batch_norm(rank: int, world_size: int) -> int:
    """ShardedBatchNorm on a 2x2 mesh against nn.BatchNorm2d: y, dx, dw, db, running stats, eval mode."""
    import torch.distributed as dist

    import autopar
    from autopar.runtime.mesh import RuntimeMesh
    from autopar.runtime.shape_consistency import ShapeConsistencyManager
    from autopar.runtime.sync_batchnorm import ShardedBatchNorm
    from autopar.spec import ShardingSpec

    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    mesh, sc = RuntimeMesh(cluster), ShapeConsistencyManager(cluster)
    # (x spec, stored spec of the running stats): batch on both axes; batch on 0 with channels on 1; channels
    # only, stored whole (no statistics to sync: F.batch_norm on a local split of the buffers, which must not be
    # a view of them, since the buffers are written back while batch_norm's backward still reads its copy)
    layouts = [("S01RRR", "S1"), ("S0S1RR", "R"), ("S0S1RR", "S1"), ("RS01RR", "R")]
    for x_text, stored_text in layouts:
        torch.manual_seed(1)
        ref = torch.nn.BatchNorm2d(8)
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-0.5, 0.5)
        x = (torch.randn(8, 8, 3, 3) * 2 + 1).requires_grad_(True)
        dy = torch.randn(8, 8, 3, 3)
        x_spec, stored = ShardingSpec.parse(x_text), ShardingSpec.parse(stored_text)
        channels = ShardingSpec((tuple(x_spec.dims[1]),), ())
        sync = tuple(a for d, axes in enumerate(x_spec.dims) if d != 1 for a in axes)
        bn = ShardedBatchNorm(mesh, sc, 8, sync, channels, (stored, stored))

        def local(t, spec):
            return t.detach()[spec.local_slices(tuple(t.shape), cluster.mesh_shape, mesh.coord)].clone()

        xl = local(x, x_spec).requires_grad_(True)
        w, b = local(ref.weight, channels).requires_grad_(True), local(ref.bias, channels).requires_grad_(True)
        rm, rv = local(ref.running_mean, stored), local(ref.running_var, stored)
        where = f"sync batch norm, x {x_text}, running stats {stored_text}"
        for step in range(2):  # two steps: the running statistics compound
            y = bn(xl, rm, rv, w, b, True, 0.1, 1e-5)
            y_ref = ref(x)
            _close(f"{where} step {step} y", y, local(y_ref, x_spec))
        (y * local(dy, x_spec)).sum().backward()
        (y_ref * dy).sum().backward()
        for t in (w.grad, b.grad):  # the gradient hook's job: sum the contributions over the batch axes
            for axis in sync:
                dist.all_reduce(t, group=mesh.group(axis))
        _close(f"{where} dx", xl.grad, local(x.grad, x_spec))
        _close(f"{where} dw", w.grad, local(ref.weight.grad, channels))
        _close(f"{where} db", b.grad, local(ref.bias.grad, channels))
        _close(f"{where} running_mean", rm, local(ref.running_mean, stored))
        _close(f"{where} running_var", rv, local(ref.running_var, stored))
        ref.eval()
        _close(f"{where} eval", bn(xl, rm, rv, w, b, False, 0.1, 1e-5), local(ref(x), x_spec))
    return len(layouts)


def _build(name: str, batch: int | None):
    from autopar import zoo
    from autopar.zoo import timm_models

    if batch is None:
        return zoo.build(name, "tiny", device="cpu", seed=0)
    torch.manual_seed(0)
    return getattr(timm_models, name.removeprefix("timm:"))("tiny", "cpu", batch=batch)


def check_timm_cases(rank: int, world_size: int, cases, mesh_shape) -> dict:
    """Each ``(model, batch or None, alpha or None)``, tiny, on ``mesh_shape``: loss, grads, params and
    buffers after 3 AdamW steps. ``alpha`` overrides the cluster's per-collective latency."""
    import dataclasses

    import autopar

    report = {"sync_batch_norm_layouts": check_sync_batch_norm(rank, world_size), "models": {}}
    for name, batch, alpha in cases:
        t0 = time.perf_counter()
        cluster = autopar.ClusterInfo.preset("cpu:" + "x".join(map(str, mesh_shape)))
        if alpha is not None:
            cluster = dataclasses.replace(cluster, alpha=(alpha,) * len(mesh_shape))
        model, inputs = _build(name, batch)
        ref = copy.deepcopy(model)
        pm = autopar.autoparallelize(model, cluster, inputs)
        where = f"{name} tiny (batch {batch or 'default'}, alpha {alpha or 'default'}) on mesh {mesh_shape}"
        # Some BatchNorm biases have a true gradient of exactly 0 (ResNet's stem: ~1e-17 in float64) and a
        # float32 rounding-noise one of ~1e-8 that depends on the summation order; Adam's update
        # lr * g / (|g| + eps) turns that noise into ~lr/100 per step with eps=1e-6. eps=1e-4 keeps it
        # below atol, while gradients above 1e-3 still move their parameters by about lr per step.
        train_and_compare(ref, pm, inputs, where, eps=1e-4, buffers=True)
        state = pm.full_state_dict()
        bn = [r for r in pm.plan.rows if r.op == "batch_norm"]
        batch_split = [r for r in bn if any(axes for d, axes in enumerate(r.strategy.inputs[0].dims) if d != 1)]
        report["models"][where] = {
            "batch_split_bn": len(batch_split),
            "bn": len(bn), "sharded_params": sum(not pm.param_spec(n).is_replicated() for n in state),
            "seconds": round(time.perf_counter() - t0, 1)}
    return report


# every model as built by the zoo, and ResNet with batch 8 on a network without latency: the solver then
# splits the batch of most BatchNorms (with alpha = 50 us it prefers channel splits at these sizes)
CASES = [(name, None, None) for name in MODELS + TRAINED_NEW] + [("timm:resnet50", 8, 1e-7)]


def test_tiny_models_train_like_single_device_on_2x2():
    report = run_distributed(check_timm_cases, 4, CASES, (2, 2), timeout=1200)[0]
    print(report)
    assert report["sync_batch_norm_layouts"] == 4
    assert len(report["models"]) == len(CASES)
    resnet_dp = next(v for k, v in report["models"].items() if "batch 8" in k)
    assert resnet_dp["batch_split_bn"] > 0, f"no BatchNorm ran batch-split: {resnet_dp}"
