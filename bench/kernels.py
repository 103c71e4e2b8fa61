"""Benchmark autopar's Triton kernels against torch on a GPU; print a table, write JSON.

    python bench/kernels.py [--out bench/out/kernels.json] [--quick]

Each case is timed with CUDA events after warm-up (median of several reps), forward and
forward+backward. Throughput is TFLOP/s for attention (forward 4*b*h*m*n*d FLOPs, halved when
causal; backward 2.5x forward) and GB/s for the memory-bound kernels (bytes that must cross
HBM at least once), each also as a percent of the device's measured peak: a large bf16
matmul for FLOP/s, a large device-to-device copy for bandwidth. Baselines: SDPA with its flash
backend, eager F.layer_norm / F.rms_norm / torch.softmax / F.cross_entropy.
Without a GPU it says so and exits 0 without writing numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def timed(fn, warmup: int = 3, reps: int = 10) -> float:
    """Median seconds of fn() over reps, each bracketed by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure_peaks() -> dict:
    """Peak bandwidth (2 x bytes / time of a 1 GiB copy) and bf16 matmul FLOP/s (8192^3)."""
    buffers = [torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    bw = 2 * (1 << 30) / timed(lambda: buffers[1].copy_(buffers[0]), reps=20)
    buffers.clear()
    n = 8192
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    flops = 2 * n**3 / timed(lambda: a @ b, reps=20)
    return {"bandwidth_Bps": bw, "bf16_matmul_flops": flops}


def fwd_bwd(fn, inputs, grad=None):
    """A closure running fn(*inputs) and, when grad is given, its backward to the float inputs."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def run():
        out = fn(*inputs)
        if grad is not None:
            torch.autograd.grad(out, leaves, grad if grad.shape == out.shape else None)
    return run


def attention_cases(quick: bool):
    from autopar.kernels import flash_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def torch_flash(q, k, v, causal=True):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    for d in (64, 128):
        for s in ((1024, 4096) if quick else (1024, 2048, 4096, 8192)):
            b, h = 4, 16
            q, k, v = (torch.randn(b, h, s, d, dtype=torch.bfloat16, device="cuda", requires_grad=True)
                       for _ in range(3))
            flops = 4 * b * h * s * s * d / 2  # causal
            for mode in ("fwd", "fwd+bwd"):
                grad = torch.randn_like(q) if mode == "fwd+bwd" else None
                work = flops * (3.5 if grad is not None else 1.0)
                for impl, fn in (("triton", lambda q, k, v: flash_attention(q, k, v, causal=True)),
                                 ("torch-flash", torch_flash)):
                    yield (f"attention causal b{b} h{h} s{s} d{d}", mode, impl, fwd_bwd(fn, (q, k, v), grad),
                           "flops", work)


def memory_cases(quick: bool):
    from autopar.kernels import cross_entropy, layer_norm, rms_norm, softmax

    dt = torch.bfloat16
    for n in ((4096,) if quick else (4096, 8192)):
        rows = 8192
        x = torch.randn(rows, n, dtype=dt, device="cuda", requires_grad=True)
        w = torch.randn(n, dtype=dt, device="cuda", requires_grad=True)
        bias = torch.randn(n, dtype=dt, device="cuda", requires_grad=True)
        size = x.numel() * x.element_size()
        ops = [("layer_norm", lambda x, w, b: layer_norm(x, w, b, 1e-5),
                lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, 1e-5), (x, w, bias)),
               ("rms_norm", lambda x, w: rms_norm(x, w, 1e-6),
                lambda x, w: F.rms_norm(x, x.shape[-1:], w, 1e-6), (x, w)),
               ("softmax", lambda x: softmax(x, -1), lambda x: torch.softmax(x, -1), (x,))]
        for name, ours, ref, inputs in ops:
            for mode in ("fwd", "fwd+bwd"):
                grad = torch.randn_like(x) if mode == "fwd+bwd" else None
                moved = 2 * size if grad is None else 5 * size  # fwd: x, y; bwd adds x (or y), dy, dx
                for impl, fn in (("triton", ours), ("torch", ref)):
                    yield f"{name} {rows}x{n} bf16", mode, impl, fwd_bwd(fn, inputs, grad), "bytes", moved
    for vocab in ((32768,) if quick else (32768, 131072)):
        tokens = 8192
        logits = torch.randn(tokens, vocab, dtype=dt, device="cuda", requires_grad=True)
        target = torch.randint(0, vocab, (tokens,), device="cuda")
        size = logits.numel() * logits.element_size()
        for mode in ("fwd", "fwd+bwd"):
            grad = torch.ones((), dtype=dt, device="cuda") if mode == "fwd+bwd" else None
            moved = size if grad is None else 3 * size  # fwd reads logits; bwd reads them again, writes dlogits
            for impl, fn in (("triton", cross_entropy), ("torch", F.cross_entropy)):
                yield (f"cross_entropy {tokens}x{vocab} bf16", mode, impl, fwd_bwd(fn, (logits, target), grad),
                       "bytes", moved)
        del logits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out/kernels.json")
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU to time Triton kernels; none found, nothing measured.")
        return 0
    peaks = measure_peaks()
    print(f"device: {torch.cuda.get_device_name()}  peak copy bandwidth {peaks['bandwidth_Bps'] / 1e9:.0f} GB/s  "
          f"peak bf16 matmul {peaks['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    rows, base = [], {}
    header = f"{'case':44} {'mode':8} {'impl':12} {'ms':>8} {'rate':>14} {'% peak':>7} {'vs torch':>8}"
    print(header + "\n" + "-" * len(header))
    cases = [*attention_cases(args.quick), *memory_cases(args.quick)]
    for case, mode, impl, run, unit, work in cases:
        try:
            seconds = timed(run)
        except Exception as exc:  # one failing case (e.g. out of memory) must not hide the others
            print(f"{case:44} {mode:8} {impl:12} failed: {type(exc).__name__}: {exc}"[:200])
            continue
        rate = work / seconds
        peak = peaks["bf16_matmul_flops"] if unit == "flops" else peaks["bandwidth_Bps"]
        shown = f"{rate / 1e12:.1f} TFLOP/s" if unit == "flops" else f"{rate / 1e9:.0f} GB/s"
        key = (case, mode)
        if impl == "triton":
            base[key] = seconds
            versus = ""
        else:
            versus = f"{seconds / base[key]:.2f}x" if key in base else ""
            rows[-1]["speedup_vs_torch"] = seconds / base[key] if key in base and rows else None
        rows.append({"case": case, "mode": mode, "impl": impl, "seconds": seconds, "unit": unit, "work": work,
                     "rate": rate, "percent_of_peak": 100 * rate / peak})
        print(f"{case:44} {mode:8} {impl:12} {seconds * 1e3:8.3f} {shown:>14} {100 * rate / peak:6.1f}% {versus:>8}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "peaks": peaks, "results": rows}, indent=1))
    print(f"wrote {out}  ('vs torch' = torch time / triton time: above 1 means the kernel is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
