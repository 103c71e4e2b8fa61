"""runtime/materialise.py: models start on meta; each rank makes only its shards, with the same values on any mesh.

Pure tests check the seeded initialisation of one full tensor (what every rank computes before it
cuts its block); the gloo worlds (2 ranks: mesh (2,); 4 ranks: (4,) and (2, 2)) check that the
gathered state is bit-identical to it, that a user function fills blocks in global coordinates,
and that a model started on meta trains with the single-device numbers.
"""
from __future__ import annotations

import json

import pytest
import torch

import autopar
from autopar import zoo
from autopar.errors import AutoparError
from autopar.runtime.materialise import ModelInit, UserInit, source_for
from autopar.runtime.parallel_module import ParamLayout
from autopar.spec import ShardingSpec
from autopar.tracer import trace
from tests.distributed import run_distributed
from tests.runtime.sharded_plans import sharded_plan
from tests.test_autoparallelize import train_and_compare


def _seeded(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of zoo model ``name`` (tiny) as the seeded initialisation makes it."""
    model, inputs = zoo.build(name, "tiny", device="meta")
    source = ModelInit(model, trace(model, inputs), seed)
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)] + [n for n, _ in model.named_buffers()]
    return {n: source.full(n) for n in names}


# ---- pure: the full tensor every rank computes ----------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_seeded_init_has_the_distribution_of_the_eager_model(name):
    ours = _seeded(name)
    eager, _ = zoo.build(name, "tiny", device="cpu", seed=1)
    theirs = dict(eager.state_dict(keep_vars=False), **dict(eager.named_buffers()))
    assert set(theirs) <= set(ours)
    for key, want in theirs.items():
        got = ours[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if want.numel() < 1024 or want.std() == 0:  # constants (norms, biases) and computed buffers: exact
            torch.testing.assert_close(got, want, msg=f"{key} differs from the eager model's")
            continue
        # same distribution: std within 5 %, means within 5 % of the std
        assert abs(got.std() / want.std() - 1) < 0.05, f"{key}: std {got.std():.5f} vs eager {want.std():.5f}"
        assert abs(got.mean() - want.mean()) < 0.05 * want.std(), f"{key}: mean {got.mean():.5f} vs {want.mean():.5f}"
    if name == "gpt2":  # the residual projections are re-initialised by their parents (1/sqrt(2 n_layer))
        c_proj, c_attn = ours["transformer.h.0.attn.c_proj.weight"], ours["transformer.h.0.attn.c_attn.weight"]
        assert c_proj.std() < 0.6 * c_attn.std()
        assert torch.equal(ours["lm_head.weight"], ours["transformer.wte.weight"])  # tied: one tensor
    else:
        assert torch.equal(ours["model.rotary_emb.inv_freq"], eager.model.rotary_emb.inv_freq)


def test_seeded_init_depends_on_seed_and_name_only_and_leaves_the_callers_rng_alone():
    model, inputs = zoo.build("gpt2", "tiny", device="meta")
    gm = trace(model, inputs)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ModelInit(model, gm, 0).full("transformer.h.1.mlp.c_fc.weight")
    assert torch.equal(torch.get_rng_state(), before)
    b = ModelInit(model, gm, 0).full("transformer.h.1.mlp.c_fc.weight")  # another order, another instance
    c = ModelInit(model, gm, 1).full("transformer.h.1.mlp.c_fc.weight")
    d = ModelInit(model, gm, 0).full("transformer.h.0.mlp.c_fc.weight")
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert all(p.is_meta for p in model.parameters()), "initialising must not touch the model"


class _Plain(torch.nn.Module):
    """torch modules with reset_parameters / reset_running_stats, and a parameter nothing initialises."""

    def __init__(self, scale: bool = False, mask: bool = False) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        if scale:
            self.scale = torch.nn.Parameter(torch.ones(16))
        if mask:
            self.register_buffer("mask", torch.tril(torch.ones(16, 16, dtype=torch.bool)))

    def forward(self, x):
        y = self.bn(self.fc(x))
        if hasattr(self, "scale"):
            y = y * self.scale
        if hasattr(self, "mask"):
            y = y @ self.mask.float()
        return y.sum()


def test_plain_torch_modules_use_reset_parameters_and_untouched_tensors_are_refused():
    with torch.device("meta"):
        model = _Plain()
    x = torch.empty(4, 8, device="meta")
    source = ModelInit(model, trace(model, (x,)), 0)
    w = source.full("fc.weight")
    assert w.abs().max() <= 8 ** -0.5 and w.std() > 0  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), ...)
    assert torch.equal(source.full("bn.running_var"), torch.ones(16))
    assert source.full("bn.num_batches_tracked").item() == 0  # an integer buffer: not left at the sentinel
    for kwargs, name in (({"scale": True}, "'scale'"), ({"mask": True}, "'mask'")):
        with torch.device("meta"):
            model = _Plain(**kwargs)
        source = ModelInit(model, trace(model, (x,)), 0)
        with pytest.raises(AutoparError, match=rf"(?s){name} .*left uninitialised.*init=fn"):
            source.full(name.strip("'"))


def my_init(name, local, global_shape, local_slices):
    """Each element's value is its flat index in the global tensor (so blocks must land in place)."""
    index = torch.arange(torch.Size(global_shape).numel(), dtype=torch.float64).view(global_shape)
    local.copy_(index[local_slices] / 1000.0 if local.is_floating_point() else index[local_slices])


def test_a_function_that_raises_or_leaves_elements_unset_is_named():
    model, inputs = zoo.build("mlp", "tiny", device="meta")
    gm = trace(model, inputs)
    layout = ParamLayout(ShardingSpec.parse("S0R"), (256, 64), ("fc1.weight",), True)
    block = (slice(128, 256), slice(0, 64))

    def broken(name, local, global_shape, local_slices):
        raise ValueError("nope")

    def lazy(name, local, global_shape, local_slices):
        local[:10] = 0.0

    with pytest.raises(AutoparError, match=r"'broken' raised on 'fc1.weight' \(block \[128:256, 0:64\].*nope"):
        UserInit(broken, gm, ModelInit(model, gm, 0)).local("fc1.weight", layout, None, block, "cpu")
    with pytest.raises(AutoparError, match="'lazy' left 7552 of 8192 elements of 'fc1.weight'.*return False"):
        UserInit(lazy, gm, ModelInit(model, gm, 0)).local("fc1.weight", layout, None, block, "cpu")


def test_init_and_seed_are_options_and_a_function_is_recorded_by_name(tmp_path):
    model, inputs = zoo.build("mlp", "tiny", device="meta")
    cluster = autopar.ClusterInfo.preset("cpu:2")
    with pytest.raises(AutoparError, match="seed must be an integer"):
        autopar.plan(model, cluster, inputs, seed=-1)
    with pytest.raises(AutoparError, match="init must be None"):
        autopar.plan(model, cluster, inputs, init=3)
    plan = autopar.plan(model, cluster, inputs, init=my_init, seed=7)
    assert plan.to_json()["options"]["init"] == "function my_init" and plan.to_json()["options"]["seed"] == 7
    plan.save(tmp_path / "p.json")
    loaded = autopar.load_plan(tmp_path / "p.json")
    assert json.loads(json.dumps(loaded.to_json())) == plan.to_json()
    loaded.check_matches(trace(model, inputs), cluster, autopar.PlanOptions.of(plan.options, init=None, seed=0))
    with pytest.raises(AutoparError, match="recorded from a function.*init=<that function>"):
        source_for(model, trace(model, inputs), loaded.options.init, 0)


# ---- gloo worlds: the gathered state on every mesh --------------------------------------------------------
def _nan_init(name, local, global_shape, local_slices):
    if name.endswith("c_fc.weight"):
        return  # leaves NaN
    return False


def _materialise(rank, world_size, meshes, plans) -> dict:
    out: dict = {"seeded": {}, "user": {}}
    for mesh in meshes:
        cluster = autopar.ClusterInfo.preset("cpu:" + "x".join(map(str, mesh)))
        for name in ("gpt2", "llama"):
            model, inputs = zoo.build(name, "tiny", device="meta")
            real = zoo.build(name, "tiny", device="cpu")[1]  # the same ids, on CPU
            pm = autopar.autoparallelize(model, cluster, real, seed=0, plan=plans[name, mesh])
            assert all(not t.is_meta for t in pm.state_dict().values())
            # a collective: every rank gathers (cloned: a replicated tensor comes back as the parameter itself)
            state = {k: v.clone() for k, v in pm.full_state_dict().items()}
            sharded = [n for n in state if not pm.param_spec(n).is_replicated()]
            out["seeded"][(name, mesh)] = (state, sharded)
            if name == "gpt2" and mesh == meshes[-1]:  # trains with the numbers of the same weights on one device
                ref, _ = zoo.build(name, "tiny", device="cpu")
                ref.load_state_dict(state)
                train_and_compare(ref, pm, real, f"{name} from meta on {mesh}")
        model, inputs = zoo.build("gpt2", "tiny", device="meta")
        pm = autopar.autoparallelize(model, cluster, inputs, init=my_init, checkpoint="none")
        out["user"][mesh] = pm.full_state_dict()
    model, inputs = zoo.build("gpt2", "tiny", device="meta")
    try:
        autopar.autoparallelize(model, cluster, inputs, init=_nan_init)
    except AutoparError as exc:
        out["nan_error"] = str(exc)
    return out


@pytest.mark.parametrize("world_size, meshes", [(2, [(2,)]), (4, [(4,), (2, 2)])], ids=["world2", "world4"])
def test_meta_models_gather_to_the_seeded_state_on_every_mesh(world_size, meshes):
    plans = {(name, mesh): sharded_plan(name, "cpu:" + "x".join(map(str, mesh))) for name in ("gpt2", "llama")
             for mesh in meshes}
    results = run_distributed(_materialise, world_size, meshes, plans, timeout=600)[0]
    for name in ("gpt2", "llama"):
        want = _seeded(name)
        for mesh in meshes:
            state, sharded = results["seeded"][(name, mesh)]
            assert sharded, f"{name} on {mesh}: nothing sharded, so the test would show nothing"
            for key, got in state.items():
                assert torch.equal(got, want[key]), f"{name} on mesh {mesh}: {key} differs from the seeded init"
    for mesh in meshes:
        for key, got in results["user"][mesh].items():
            want = torch.zeros(got.shape)
            my_init(key, want, tuple(got.shape), tuple(slice(0, n) for n in got.shape))
            assert torch.equal(got, want), f"init function on {mesh}: {key} is not where the function put it"
    assert "init function '_nan_init' left" in results["nan_error"] and "c_fc.weight" in results["nan_error"]
