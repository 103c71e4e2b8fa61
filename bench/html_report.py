"""The README's HTML report screenshot: GPT-2 small (batch 32 x 1024, labels) on 8xH100 at 60 % of the
unconstrained plan's peak with checkpoint="auto", written as a page and photographed by headless Chromium.

    python bench/html_report.py [--out docs]      # docs/gpt2_report.html, docs/gpt2_report.png
"""
from __future__ import annotations

import argparse
import pathlib

import torch

import autopar
from autopar.report.html import screenshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs")
    parser.add_argument("--fraction", type=float, default=0.6)
    args = parser.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    ids = torch.empty(32, 1024, dtype=torch.long, device="meta")
    inputs = {"input_ids": ids, "labels": ids, "use_cache": False}
    cluster = autopar.ClusterInfo.preset("8xH100")
    free = autopar.plan(model, cluster, inputs, memory_budget=float("inf"))
    plan = autopar.plan(model, cluster, inputs, memory_budget=args.fraction * free.peak_memory, checkpoint="auto")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    page, png = out / "gpt2_report.html", out / "gpt2_report.png"
    plan.to_html(page)
    screenshot(page, png, width=1400, height=2200)
    print(f"{page} ({page.stat().st_size / 1024:.0f} KiB), {png}: {len(plan.regions)} regions, "
          f"peak {plan.peak_memory / 2**30:.2f} GiB of {plan.memory_budget / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
