"""``autopar plan`` and ``autopar report``: plan a zoo model for a cluster, print, save or render the plan.

    autopar plan                                   # GPT-2 small (124M) on 8xH100, planned on meta
    autopar plan --model gpt2 --size 355m --cluster 2x8xH100 --memory 40 --checkpoint auto --json
    autopar plan --batch 32 --seq 1024 --memory 12 --save gpt2.plan.json --html gpt2.html
    autopar plan --model llama --size 7b --cluster 8x8xH100 --mesh search   # the fastest logical mesh
    autopar report gpt2.plan.json [--html gpt2.html]
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
    p.add_argument("--mesh", default=None, type=_mesh,
                   help="logical mesh: search (plan every mesh of the cluster's devices, keep the fastest) or a "
                        "shape such as 16x4 (default: the cluster's own)")
    p.add_argument("--workers", default=1, type=lambda v: v if v == "auto" else int(v),
                   help="with --mesh search: processes planning the meshes at once, or auto (one per core; "
                        "default: 1)")
    p.add_argument("--memory", type=float, default=None, help="memory budget per device in GiB (default: device)")
    p.add_argument("--checkpoint", choices=("none", "auto"), default=None,
                   help="activation checkpointing: none (never) or auto (whenever it makes the step faster); "
                        "default: only when the budget needs it")
    p.add_argument("--offload", choices=("none", "auto"), default="none",
                   help="auto: weigh keeping shares of the parameters and optimizer state on the host (Gemini) "
                        "where the budget needs it; default: none")
    p.add_argument("--bucket-mb", type=float, default=25.0,
                   help="gradient-sync (and offload) chunk size in MiB (default: 25)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "adam", "sgd_momentum", "sgd"),
                   help="the optimizer whose state the memory model counts (default: adamw)")
    p.add_argument("--batch", type=int, default=None, help="global batch size of the example inputs")
    p.add_argument("--seq", type=int, default=None, help="sequence length of a language model's inputs")
    p.add_argument("--time-limit", type=float, default=60.0, help="ILP time limit in seconds, per solve")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    p.add_argument("--save", metavar="FILE", help="save the plan as JSON (autopar.load_plan, autopar report)")
    p.add_argument("--html", metavar="FILE", help="write the plan as one self-contained HTML page")
    r = sub.add_parser("report", help="print or render a saved plan")
    r.add_argument("file", help="a plan saved by `autopar plan --save` or Plan.save")
    r.add_argument("--html", metavar="FILE", help="write it as an HTML page instead of printing it")
    r.add_argument("--json", action="store_true", help="print it as JSON")
    return parser


def _mesh(text: str):
    if text == "search":
        return text
    try:
        return tuple(int(n) for n in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'search' or a shape such as 16x4, got {text!r}") from None


class Progress:
    """Stage lines on stderr (``autopar: ILP ... : 1.2 s``); on a terminal, ``bar(label, done, total)`` draws
    a progress bar in place for stages with countable work."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, line: str) -> None:
        print(f"autopar: {line}", file=self.stream, flush=True)

    def bar(self, label: str, done: int, total: int) -> None:
        if not self.tty or total <= 0:
            return
        width = 30
        fill = width * done // total
        end = "\n" if done >= total else ""
        print(f"\rautopar: {label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}", end=end,
              file=self.stream, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_transformers()
    from autopar.errors import AutoparError

    try:
        return _plan(args) if args.command == "plan" else _report(args)
    except (AutoparError, ValueError) as exc:
        print(f"autopar: error: {exc}", file=sys.stderr)
        return 2


def _plan(args) -> int:
    from autopar import api, zoo
    from autopar.cluster import ClusterInfo

    cluster = ClusterInfo.preset(args.cluster)
    t0 = time.perf_counter()
    model, inputs = zoo.build(args.model, args.size, device="meta")
    inputs = zoo.resize_inputs(inputs, batch=args.batch, seq=args.seq)
    budget = args.memory * GiB if args.memory is not None else None
    plan = api.plan(model, cluster, inputs, memory_budget=budget, time_limit=args.time_limit,
                    checkpoint=args.checkpoint, optimizer=args.optimizer, mesh=args.mesh, workers=args.workers,
                    offload=args.offload,
                    bucket_bytes=max(1, int(args.bucket_mb * 2**20)), progress=Progress())
    elapsed = time.perf_counter() - t0
    if args.save:
        plan.save(args.save)
        print(f"autopar: saved the plan to {args.save}", file=sys.stderr)
    if args.html:
        plan.to_html(args.html)
        print(f"autopar: wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(plan.to_json(), indent=1))
    else:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"autopar plan: {args.model} ({n_params / 1e6:.1f}M parameters) on {plan.cluster.describe()}")
        print(plan.report())
        searched = f", {sum(1 for t in plan.meshes if t.seconds)} meshes" if plan.meshes else ""
        print(f"planned in {elapsed:.2f} s (trace + strategies + ILP + checkpointing{searched})")
    return 0


def _report(args) -> int:
    from autopar.solver.full_plan import load_plan

    plan = load_plan(args.file)
    if args.html:
        plan.to_html(args.html)
        print(f"autopar: wrote {args.html}", file=sys.stderr)
    elif args.json:
        print(json.dumps(plan.to_json(), indent=1))
    else:
        print(plan.report())
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
