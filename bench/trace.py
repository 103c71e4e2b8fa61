"""Tracer timings: trace time and node counts of tiny HF models, and a 7B Llama on meta.

    python bench/trace.py [--out bench/out/trace.json] [--skip-7b]

Prints a table and writes JSON. Models are built from configs (no downloads).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from autopar.tracer import trace


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/out/trace.json")
    parser.add_argument("--skip-7b", action="store_true")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers as T

    small = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=128)
    tiny = {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, **small)),
        "bert": lambda: T.BertForMaskedLM(T.BertConfig(num_hidden_layers=2, **small)),
        "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(
            num_layers=2, d_model=64, d_ff=128, d_kv=16, num_heads=4, vocab_size=128,
            decoder_start_token_id=0, pad_token_id=0)),
    }
    ids = torch.randint(0, 128, (4, 16))
    rows = []
    for name, make in tiny.items():
        model = make()
        trace(model, {"input_ids": ids, "labels": ids})  # warm-up (first-call imports)
        start = time.perf_counter()
        gm = trace(model, {"input_ids": ids, "labels": ids})
        rows.append({"model": f"{name}-tiny", "nodes": len(gm.graph.nodes), "trace_s": time.perf_counter() - start,
                     "rss_growth_mib": None})
    if not args.skip_7b:
        cfg = T.LlamaConfig(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32000)
        with torch.device("meta"):
            model = T.LlamaForCausalLM(cfg)
        big = torch.randint(0, 32000, (1, 2048), device="meta")
        before, start = _rss(), time.perf_counter()
        gm = trace(model, {"input_ids": big, "labels": big})
        rows.append({"model": "llama-7b (meta)", "nodes": len(gm.graph.nodes), "trace_s": time.perf_counter() - start,
                     "rss_growth_mib": (_rss() - before) / 2**20})
    print(f"{'model':<18} {'nodes':>6} {'trace s':>8} {'RSS +MiB':>9}")
    for r in rows:
        rss = "" if r["rss_growth_mib"] is None else f"{r['rss_growth_mib']:.0f}"
        print(f"{r['model']:<18} {r['nodes']:>6} {r['trace_s']:>8.3f} {rss:>9}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
