"""runtime/checkpoint_io.py and safetensors_io.py: load Hugging Face checkpoints sharded, save and resume with
DCP under another mesh, survive a rank dying mid-save, export one safetensors file.

Three gloo worlds run in order (each a fresh set of processes): (2, 2) loads checkpoints, exports, and
trains 3 AdamW steps before saving; (4,) resumes for 3 more, then saves again while one rank is
killed; (2,) resumes from the checkpoint that survived. Parameters after 3 + 3 steps equal 6
uninterrupted steps on one device.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import autopar
from autopar import zoo
from autopar.errors import AutoparError
from autopar.runtime.materialise import source_for
from autopar.runtime.safetensors_io import StreamingWriter
from autopar.tracer import trace
from tests.distributed import DistributedTestError, run_distributed
from tests.runtime.sharded_plans import sharded_plan
from tests.test_autoparallelize import ATOL, RTOL, train_and_compare

CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


def _saved(tmp_path) -> dict[tuple[str, str], str]:
    """Tiny GPT-2 and Llama (zoo weights, seed 0) saved by ``save_pretrained``: one file, and sharded."""
    out = {}
    for name in CLASSES:
        model, _ = zoo.build(name, "tiny", device="cpu")
        for layout, shard in (("one file", None), ("sharded", "100KB")):
            path = tmp_path / f"{name}-{layout.replace(' ', '-')}"
            model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
            out[(name, layout)] = str(path)
    assert os.path.isfile(os.path.join(out[("gpt2", "sharded")], "model.safetensors.index.json"))
    return out


def _hf(name: str, path: str):
    import transformers

    model = getattr(transformers, CLASSES[name]).from_pretrained(path)
    return model.train()


def _steps(module, inputs, optimizer, n: int) -> None:
    for _ in range(n):
        optimizer.zero_grad()
        module(**inputs).loss.backward()
        optimizer.step()


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3, eps=1e-6)  # eps: see train_and_compare


def _reference(steps: int) -> dict[str, torch.Tensor]:
    """GPT-2 tiny (zoo weights, seed 0) after ``steps`` AdamW steps on one device."""
    model, inputs = zoo.build("gpt2", "tiny", device="cpu")
    _steps(model, inputs, _adamw(model.parameters()), steps)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _close(state: dict, want: dict, where: str) -> None:
    for key, value in want.items():
        where_key = f"{where} {key}"
        torch.testing.assert_close(state[key], value, rtol=RTOL, atol=ATOL, msg=lambda m, w=where_key: f"{w}: {m}")


# ---- pure ----------------------------------------------------------------------------------------------
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_keys(tmp_path):
    model, inputs = zoo.build("gpt2", "tiny", device="cpu")
    good = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # as HF saves it
    meta, _ = zoo.build("gpt2", "tiny", device="meta")
    gm = trace(meta, inputs)
    bad = {
        "missing": ({k: v for k, v in good.items() if k != "transformer.h.1.mlp.c_fc.bias"},
                    r"missing keys \(1\): transformer\.h\.1\.mlp\.c_fc\.bias"),
        "extra": (dict(good, **{"transformer.h.0.attn.extra": torch.zeros(3)}),
                  r"unexpected keys \(1\): transformer\.h\.0\.attn\.extra"),
        "shape": (dict(good, **{"transformer.wpe.weight": good["transformer.wpe.weight"][:32].clone()}),
                  r"shape mismatches \(1\): transformer\.wpe\.weight: \(32, 64\) in the checkpoint, \(64, 64\)"),
    }
    save_file(good, tmp_path / "good.safetensors")
    source_for(meta, gm, str(tmp_path / "good.safetensors"), 0)  # fits: no error
    for case, (state, message) in bad.items():
        save_file(state, tmp_path / f"{case}.safetensors")
        with pytest.raises(AutoparError, match=message):
            source_for(meta, gm, str(tmp_path / f"{case}.safetensors"), 0)
    with pytest.raises(AutoparError, match="no checkpoint at"):
        source_for(meta, gm, str(tmp_path / "nowhere"), 0)
    with pytest.raises(AutoparError, match="neither model.safetensors nor model.safetensors.index.json"):
        source_for(meta, gm, str(tmp_path), 0)
    (tmp_path / "idx").mkdir()
    index = {"weight_map": {"a": "gone.safetensors"}}
    (tmp_path / "idx" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(AutoparError, match="names files that are not there"):
        source_for(meta, gm, str(tmp_path / "idx"), 0)


def test_checkpoint_functions_take_the_parallel_module():
    model, _ = zoo.build("mlp", "tiny", device="meta")
    for call in (lambda: autopar.load_checkpoint(model, "x"), lambda: autopar.save_checkpoint(model, "x"),
                 lambda: autopar.export_safetensors(model, "x")):
        with pytest.raises(AutoparError, match="takes the module autoparallelize returned"):
            call()


def test_the_streaming_writer_writes_what_safetensors_reads(tmp_path):
    tensors = {"w": torch.randn(5, 3), "h": torch.randn(4, dtype=torch.float64).to(torch.bfloat16),
               "ids": torch.arange(7), "mask": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5)}
    entries = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    writer = StreamingWriter(str(tmp_path / "x.safetensors"), entries)
    for key, value in tensors.items():
        writer.write(key, value)
    writer.close()
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


# ---- gloo worlds ------------------------------------------------------------------------------------------
def _load_export_save(rank, world_size, saved, out_dir, ckpt, plans) -> dict:
    cluster = autopar.ClusterInfo.preset("cpu:2x2")
    for (name, layout), path in saved.items():
        model, inputs = zoo.build(name, "tiny", device="meta")
        real = zoo.build(name, "tiny", device="cpu")[1]
        pm = autopar.autoparallelize(model, cluster, real, init=path, plan=plans[name, "cpu:2x2"])
        assert any(not pm.param_spec(n).is_replicated() for n in pm.full_state_dict()), "nothing sharded"
        train_and_compare(_hf(name, path), pm, real, f"{name} loaded from {layout} on (2, 2)")
        if layout == "sharded":  # load_checkpoint into a module that already exists (seeded init)
            pm = autopar.autoparallelize(model, cluster, real, seed=3, plan=plans[name, "cpu:2x2"])
            autopar.load_checkpoint(pm, path)
            _close(pm.full_state_dict(), _hf(name, path).state_dict(), f"{name} load_checkpoint")
    # export: from_pretrained reads the file and computes the logits of full_state_dict() in the original model
    model, inputs = zoo.build("gpt2", "tiny", device="cpu")
    pm = autopar.autoparallelize(model, cluster, inputs, plan=plans["gpt2", "cpu:2x2"])
    _steps(pm, inputs, _adamw(pm.parameters()), 1)  # weights that differ from the model's
    file = autopar.export_safetensors(pm, out_dir, config=model.config)
    state = pm.full_state_dict()
    if rank == 0:
        from transformers import GPT2LMHeadModel

        assert sorted(load_file(file)) == sorted(k for k in state if k != "lm_head.weight")  # tied: saved once
        exported = GPT2LMHeadModel.from_pretrained(out_dir)
        model.load_state_dict(state)
        ids = inputs["input_ids"]
        torch.testing.assert_close(exported(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    # DCP: 3 AdamW steps on (2, 2), then save model and optimizer
    model, inputs = zoo.build("gpt2", "tiny", device="cpu")
    pm = autopar.autoparallelize(model, cluster, inputs, plan=plans["gpt2", "cpu:2x2"])
    optimizer = _adamw(pm.parameters())
    _steps(pm, inputs, optimizer, 3)
    autopar.save_checkpoint(pm, ckpt, optimizer)
    _close(pm.full_state_dict(), _reference(3), "3 steps on (2, 2)")
    return pm.full_state_dict()


def _resumed(mesh: str, ckpt: str, plan):
    """GPT-2 tiny started on meta on ``mesh`` under ``plan``, model and AdamW state loaded from ``ckpt``;
    with its inputs."""
    model, _ = zoo.build("gpt2", "tiny", device="meta")
    real = zoo.build("gpt2", "tiny", device="cpu")[1]
    pm = autopar.autoparallelize(model, autopar.ClusterInfo.preset(mesh), real, plan=plan)
    optimizer = _adamw(pm.parameters())
    autopar.load_checkpoint(pm, ckpt, optimizer)
    return pm, optimizer, real


def _resume_then_die_saving(rank, world_size, ckpt, marker, plan) -> None:
    pm, optimizer, real = _resumed("cpu:4", ckpt, plan)
    _steps(pm, real, optimizer, 3)
    _close(pm.full_state_dict(), _reference(6), "3 steps on (2, 2) + 3 on (4,)")
    if rank == 0:
        with open(marker, "w") as f:
            f.write("resumed")
    if rank == 1:  # dies once its shards are written, before the save completes
        import torch.distributed.checkpoint as dcp

        write_data = dcp.FileSystemWriter.write_data

        def write_then_die(self, plan, planner):
            write_data(self, plan, planner).wait()
            os._exit(1)

        dcp.FileSystemWriter.write_data = write_then_die
    autopar.save_checkpoint(pm, ckpt, optimizer)


def _resume_after_the_kill(rank, world_size, ckpt, saved_state, plans) -> None:
    pm, optimizer, real = _resumed("cpu:2", ckpt, plans["gpt2", "cpu:2"])
    _close(pm.full_state_dict(), saved_state, "the checkpoint that survived")
    _steps(pm, real, optimizer, 3)
    _close(pm.full_state_dict(), _reference(6), "3 steps on (2, 2) + 3 on (2,)")
    autopar.save_checkpoint(pm, ckpt, optimizer)  # a save after a failed one succeeds
    with pytest.raises(AutoparError, match="missing keys: lm_head.weight"):
        other, _ = zoo.build("llama", "tiny", device="meta")
        pl = autopar.autoparallelize(other, autopar.ClusterInfo.preset("cpu:2"), real, plan=plans["llama", "cpu:2"])
        autopar.load_checkpoint(pl, ckpt)


def test_checkpoints_load_sharded_resume_on_other_meshes_and_survive_a_rank_dying(tmp_path):
    saved = _saved(tmp_path)
    wanted = [("gpt2", "cpu:2x2"), ("gpt2", "cpu:4"), ("gpt2", "cpu:2"), ("llama", "cpu:2x2"), ("llama", "cpu:2")]
    plans = {key: sharded_plan(*key) for key in wanted}  # three plans of GPT-2: the checkpoint moves between them
    ckpt, marker = str(tmp_path / "dcp"), str(tmp_path / "resumed")
    state = run_distributed(_load_export_save, 4, saved, str(tmp_path / "export"), ckpt, plans, timeout=600)[0]
    assert os.path.isfile(os.path.join(ckpt, ".metadata"))
    with pytest.raises(DistributedTestError):
        run_distributed(_resume_then_die_saving, 4, ckpt, marker, plans["gpt2", "cpu:4"], timeout=300)
    assert open(marker).read() == "resumed", "the run on (4,) failed before the save it was meant to die in"
    assert os.path.isdir(ckpt + ".saving") and not os.path.isfile(os.path.join(ckpt + ".saving", ".metadata"))
    run_distributed(_resume_after_the_kill, 2, ckpt, state, plans, timeout=300)
    assert not os.path.exists(ckpt + ".saving") and os.path.isfile(os.path.join(ckpt, ".metadata"))
