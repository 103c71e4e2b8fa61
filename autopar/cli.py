"""``autopar plan``: plan a zoo model for a cluster preset and print the report.

    autopar plan                                   # GPT-2 small (124M) on 8xH100, planned on meta
    autopar plan --model gpt2 --size 355m --cluster 2x8xH100 --memory 40 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

GiB = 1024**3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autopar", description="Automatic parallelization for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="plan a model for a cluster (no GPU needed) and print the report")
    p.add_argument("--model", default="gpt2", help="zoo model: gpt2 (hf:gpt2), mlp, timm:resnet50, ... (default: gpt2)")
    p.add_argument("--size", default=None, help="model size, e.g. tiny, 124m (default: the published size)")
    p.add_argument("--cluster", default="8xH100", help="cluster preset: 8xH100, 2x8xH100, cpu:4, cpu:2x2, ...")
    p.add_argument("--memory", type=float, default=None, help="memory budget per device in GiB (default: device)")
    p.add_argument("--time-limit", type=float, default=60.0, help="ILP time limit in seconds")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_transformers()
    from autopar import api, zoo
    from autopar.cluster import ClusterInfo
    from autopar.errors import AutoparError

    try:
        cluster = ClusterInfo.preset(args.cluster)
        t0 = time.perf_counter()
        model, inputs = zoo.build(args.model, args.size, device="meta")
        budget = args.memory * GiB if args.memory is not None else None
        plan = api.plan(model, cluster, inputs, memory_budget=budget, time_limit=args.time_limit,
                        progress=lambda line: print(f"autopar: {line}", file=sys.stderr, flush=True))
        elapsed = time.perf_counter() - t0
    except (AutoparError, ValueError) as exc:
        print(f"autopar: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.to_json(), indent=1))
    else:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"autopar plan: {args.model} ({n_params / 1e6:.1f}M parameters) on {cluster.describe()}")
        print(plan.report())
        print(f"planned in {elapsed:.2f} s (trace + strategies + ILP)")
    return 0


def _quiet_transformers() -> None:
    """The CLI prints the plan; transformers' config notices would only bury it."""
    try:
        from transformers.utils import logging
    except ImportError:
        return
    logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
