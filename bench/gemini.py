"""Capacity under a device-memory cap: plain PyTorch AdamW against autopar ``offload="auto"``.

    python bench/gemini.py [--cap-mb 32] [--family gpt2|llama] [--steps 3] [--out bench/out/gemini.json]

A ladder of decoder configs (GPT-2 or Llama shape, growing width and depth; vocab 512, batch 1 x 32
tokens: small activations, so model data is what grows) is trained, smallest first, one step of
forward, backward and AdamW at a time:

- ``torch``: the model and its AdamW on the device, as a user would write it;
- ``autopar``: ``autoparallelize(..., offload="auto", memory_budget=cap)`` on one rank (a gloo world
  of one), stepped by ``autopar.optimizer(pm, torch.optim.AdamW)``.

The device: on CPU a simulated one (``gemini.TrackedDevice``: every storage an op allocates counts
until freed, the model's parameters too for ``torch``; going over the cap raises at that op); on a
GPU real memory, ``torch.cuda.set_per_process_memory_fraction(cap / total)`` for both (autopar's
cap is also its ``memory_budget``). A config "fits" a mode when all ``--steps`` steps ran without
running out. Per config and mode: fits, tokens/s (median step after the first, the warm-up), the
peak device bytes. The summary: the largest config each mode trains, their parameter ratio, and
autopar's tokens/s as a fraction of torch's on the largest config both train. Also: torch's fused CPU
AdamW step against its for-loop and foreach ones on the largest autopar model's parameter count (the
step Gemini runs on the host). FSDP2's CPUOffloadPolicy is not compared yet. Prints a table and
writes JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MB = 2**20
BATCH, SEQ, VOCAB = 1, 32, 512
LADDER = [(2, 64), (2, 128), (4, 128), (4, 192), (4, 256), (6, 256), (4, 384), (6, 384), (8, 384), (6, 512),
          (8, 512), (12, 512), (16, 512), (12, 768)]  # (layers, hidden)


def build(family: str, layers: int, hidden: int, device: str):
    import torch

    torch.manual_seed(0)
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=layers, n_embd=hidden, n_head=max(1, hidden // 64), vocab_size=VOCAB,
                         n_positions=SEQ, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                          num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
                          vocab_size=VOCAB, max_position_embeddings=SEQ)
        model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    return model.to(device), {"input_ids": ids.to(device), "labels": ids.clone().to(device), "use_cache": False}


def _steps(step, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _result(ok: bool, times: list[float], peak: int, note: str = "") -> dict:
    tokens = BATCH * SEQ
    median = statistics.median(times[1:] or times) if times else None
    return {"fits": ok, "tokens_per_s": tokens / median if ok and median else None, "peak_bytes": peak, "note": note}


def run_torch(model, inputs, cap: float, steps: int, cuda: bool) -> dict:
    import torch

    from autopar.runtime.gemini import DeviceMemoryError, TrackedDevice

    dev = None if cuda else TrackedDevice(cap)
    if dev is not None:
        for p in model.parameters():
            dev.track(p)  # the model lives on the device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with dev if dev is not None else contextlib.nullcontext():
            model(**inputs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    try:
        times = _steps(step, steps)
    except (DeviceMemoryError, torch.OutOfMemoryError) as exc:
        return _result(False, [], _peak(dev, cuda), type(exc).__name__)
    return _result(True, times, _peak(dev, cuda))


def run_autopar(model, inputs, cap: float, steps: int, cuda: bool) -> dict:
    import torch

    import autopar
    from autopar.errors import InfeasibleBudgetError
    from autopar.runtime.gemini import DeviceMemoryError, TrackedDevice

    cluster = autopar.ClusterInfo.preset("1xH100" if cuda else "cpu:1")
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    try:
        pm = autopar.autoparallelize(model, cluster, inputs, offload="auto", memory_budget=cap, checkpoint="none",
                                     bucket_bytes=max(largest, 4 * MB), time_limit=30)
        opt = autopar.optimizer(pm, torch.optim.AdamW, lr=1e-4)
        if pm.gemini is not None:
            dev = pm.gemini.device
            dev.max_allocated = dev.allocated()
        else:  # the plan found no need to offload: a plain module, on the device as torch's is
            dev = contextlib.nullcontext() if cuda else TrackedDevice(cap)
            for p in ([] if cuda else pm.parameters()):
                dev.track(p)

        def step():
            with dev:
                pm(**inputs).loss.backward()
                opt.step()
                opt.zero_grad()

        times = _steps(step, steps)
    except (DeviceMemoryError, torch.OutOfMemoryError, InfeasibleBudgetError) as exc:
        return _result(False, [], 0, type(exc).__name__)
    out = _result(True, times, dev.max_allocated if not cuda else _peak(None, cuda))
    off = pm.plan.offload
    out["offload"] = None if off is None else {"params": off.params, "optimizer": off.optimizer,
                                               "predicted_h2d": off.h2d, "predicted_d2h": off.d2h}
    if pm.gemini is not None:
        out["gemini"] = pm.gemini.summary()
        out["gemini"].pop("chunk_bytes")
    return out


def _peak(dev, cuda: bool) -> int:
    import torch

    if cuda:
        return int(torch.cuda.max_memory_allocated())
    return int(dev.max_allocated) if dev is not None else 0


def adam_cpu(numel: int, repeats: int = 3) -> dict:
    """Seconds per AdamW step on the host over ``numel`` fp32 parameters in 16 tensors."""
    import torch

    out = {}
    for name, kw in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        params = [torch.zeros(numel // 16, requires_grad=True) for _ in range(16)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(params, lr=1e-3, **kw)
        opt.step()
        out[name] = min(_steps(opt.step, repeats))
    return out


def _init_world(cuda: bool) -> None:
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-mb", type=float, default=32.0, help="device memory cap, MiB")
    parser.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-configs", type=int, default=len(LADDER))
    parser.add_argument("--out", default="bench/out/gemini.json")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    cap = args.cap_mb * MB
    if cuda:
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / torch.cuda.get_device_properties(0).total_memory))
    _init_world(cuda)
    rows, alive = [], {"torch": True, "autopar": True}
    print(f"device: {'GPU ' + torch.cuda.get_device_name() if cuda else 'CPU, simulated (tracked bytes)'}; "
          f"cap {args.cap_mb:g} MiB; {args.family}, batch {BATCH} x {SEQ} tokens, vocab {VOCAB}")
    print(f"{'layers':>6} {'hidden':>6} {'params':>10} {'model MB':>9} | {'torch':>5} {'tok/s':>8} {'peak MB':>8} | "
          f"{'autopar':>7} {'tok/s':>8} {'peak MB':>8} {'moved MB':>9}")
    for layers, hidden in LADDER[:args.max_configs]:
        if not any(alive.values()):
            break
        model, inputs = build(args.family, layers, hidden, device if cuda else "cpu")
        n = sum(p.numel() for p in model.parameters())
        row = {"layers": layers, "hidden": hidden, "params": n, "model_data_bytes": 16 * n}
        for mode, run in (("torch", run_torch), ("autopar", run_autopar)):
            if not alive[mode]:
                row[mode] = {"fits": False, "note": "skipped: a smaller config did not fit"}
                continue
            source = copy.deepcopy(model) if mode == "torch" else (model.cpu() if cuda else model)
            row[mode] = run(source, inputs, cap, args.steps, cuda)
            alive[mode] = row[mode]["fits"]
            del source
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        rows.append(row)
        t, a = row["torch"], row["autopar"]

        def cell(r):
            if not r["fits"]:
                return f"{'no':>5} {'':>8} {'':>8}"
            return f"{'yes':>5} {r['tokens_per_s']:8.0f} {r['peak_bytes'] / MB:8.2f}"

        moved = sum(a.get("gemini", {}).get("traffic", {}).values()) / MB if a["fits"] else 0.0
        print(f"{layers:6d} {hidden:6d} {n:10d} {16 * n / MB:9.1f} | {cell(t)} | {cell(a)[:5]:>7}{cell(a)[5:]} "
              f"{moved:9.1f}", flush=True)
    largest = {mode: max((r for r in rows if r[mode]["fits"]), key=lambda r: r["params"], default=None)
               for mode in ("torch", "autopar")}
    both = max((r for r in rows if r["torch"]["fits"] and r["autopar"]["fits"]), key=lambda r: r["params"],
               default=None)
    summary = {mode: (r["layers"], r["hidden"], r["params"]) if r else None for mode, r in largest.items()}
    ratio = largest["autopar"]["params"] / largest["torch"]["params"] if all(largest.values()) else None
    speed = both["autopar"]["tokens_per_s"] / both["torch"]["tokens_per_s"] if both else None
    adam = adam_cpu(largest["autopar"]["params"]) if largest["autopar"] else {}
    print(f"largest trained: torch {summary['torch']}, autopar offload='auto' {summary['autopar']}"
          + (f"; {ratio:.1f}x the parameters" if ratio else ""))
    if speed:
        print(f"tokens/s on the largest both train ({both['layers']} x {both['hidden']}): "
              f"autopar / torch = {speed:.2f}")
    if adam:
        print("host AdamW step over the largest autopar model's parameters: "
              + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in adam.items()))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if cuda else "cpu (simulated cap)",
                   "torch": torch.__version__,
                   "cap_bytes": cap, "family": args.family, "batch": BATCH, "seq": SEQ, "vocab": VOCAB,
                   "threads": torch.get_num_threads(), "rows": rows, "largest": summary, "param_ratio": ratio,
                   "tokens_per_s_ratio": speed, "adam_cpu_step_s": adam}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
