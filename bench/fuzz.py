"""The random-graph fuzzer: N seeded graphs, each planned here and trained one step on gloo against one device.

    python bench/fuzz.py --count 300 --seed 1000 [--time-limit 10] [--graph-timeout 240] [--out bench/out/fuzz.json]
    python bench/fuzz.py --seeds 3,17                     # just these seeds

Seeds S, S+1, ..., S+N-1 (tests/fuzz/graphs.py: every graph, its mesh (2,), (4,) or (2, 2), its
budget and checkpoint option follow from its seed). Prints each graph that did not end equal (its
seed, the error, the module), then ``fuzz: N graphs, E equal, M mismatches, C crashes (K clear
errors), H hangs``, and writes every outcome as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ is importable


def main(argv=None) -> int:
    from tests.fuzz.run import failures, fuzz, summary

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="", help="comma-separated seeds to run instead (e.g. failures to re-check)")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds for each ILP solve")
    ap.add_argument("--graph-timeout", type=float, default=240.0, help="seconds before a graph counts as a hang")
    ap.add_argument("--out", default="bench/out/fuzz.json")
    ap.add_argument("-q", "--quiet", action="store_true", help="only the failures and the summary")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else range(args.seed, args.seed + args.count)
    graphs, outcomes = fuzz(seeds, args.time_limit, args.graph_timeout, say)
    text = failures(graphs, outcomes)
    if text:
        print("\n" + text + "\n")
    print(summary(outcomes))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"summary": summary(outcomes), "seeds": list(seeds),
                       "outcomes": [dataclasses.asdict(o) for o in outcomes]}, f, indent=1)
    return 0 if all(o.status == "equal" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
