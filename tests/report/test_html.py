"""The HTML report (autopar/report/html.py): self-contained, collapsed, and rendered by a real browser."""
from __future__ import annotations

import re
import subprocess

import pytest

from autopar.report.html import (
    collapse,
    downsample,
    find_chromium,
    group_runs,
    render_html,
    run_chromium,
    screenshot,
    write_html,
)
from autopar.report.text import human_bytes, human_time

GiB = 1024**3
BLOCK = [  # (suffix, op, strategy, shape)
    ("ln_1", "layer_norm", "S0R = S0R", [8, 1024, 768]),
    ("attn.c_attn", "linear", "S0R = S0R x RR", [8, 1024, 2304]),
    ("attn", "sdpa", "S0RR = S0RR x S0RR x S0RR", [8, 12, 1024, 64]),
    ("attn.c_proj", "linear", "S0R = S0R x RR", [8, 1024, 768]),
    ("", "add", "S0R = S0R x S0R", [8, 1024, 768]),
    ("ln_2", "layer_norm", "S0R = S0R", [8, 1024, 768]),
    ("mlp.c_fc", "linear", "RS0 = RR x S0R x S0", [8192, 3072]),
    ("mlp.act", "gelu", "RS0 = RS0", [8192, 3072]),
    ("mlp.c_proj", "linear", "RR = RS0 x RS0 x R", [8192, 768]),
    ("", "add", "S0R = S0R x S0R", [8, 1024, 768]),
]


def _row(name, op, strategy, shape, module, k):
    out, *ins = [s.strip() for s in re.split(r"=|x", strategy)]
    return {"name": name, "op": op, "shape": shape, "strategy": strategy, "output": out, "inputs": ins,
            "compute_time": 1e-4 * (1 + k % 3), "comm_time": 2e-5 * (k % 2), "memory": 3 * 2**20 * (1 + k % 4),
            "source": f"model.py:{10 + k}", "module": module}


def synthetic_plan(blocks: int = 3, *, modules: bool = True, checkpoint: bool = True, steps_scale: int = 1) -> dict:
    """A plan dict shaped like ``Plan.to_json()``: embedding, ``blocks`` identical blocks, head and loss."""
    rows = [_row("embedding", "embedding", "S0R = S0 x RR", [8, 1024, 768], "transformer.wte", 0)]
    for b in range(blocks):
        for j, (suffix, op, strategy, shape) in enumerate(BLOCK):
            mod = f"transformer.h.{b}" + (f".{suffix}" if suffix else "")
            rows.append(_row(f"{op}_{b * len(BLOCK) + j}", op, strategy, shape, mod, j))
    rows.append(_row("lm_head", "linear", "S0R = S0R x RR", [8, 1024, 50257], "lm_head", 1))
    rows.append(_row("cross_entropy", "cross_entropy", "R = S0R x S0", [], None, 2))
    if not modules:
        for r in rows:
            r.pop("module")
    names = [r["name"] for r in rows]
    edges = []
    for b in range(blocks):   # per block: the MLP's row-parallel output is gathered, the next block re-splits
        at = 1 + b * len(BLOCK)
        edges += [{"src": names[at + 8], "dst": names[at + 9], "from": "RR", "to": "S0R", "time": 2.4e-4,
                   "bytes": 24 * 2**20},
                  {"src": names[at + 5], "dst": names[at + 6], "from": "S0R", "to": "RR", "time": 1.9e-4,
                   "bytes": 24 * 2**20},
                  {"src": names[at + 7], "dst": names[at + 8], "from": "RS0", "to": "RS0", "time": 0.0, "bytes": 0}]
    edges.append({"src": names[-3], "dst": names[-2], "from": "S0R", "to": "RR", "time": 3.1e-4, "bytes": 48 * 2**20})
    region = names[1 + len(BLOCK): 1 + 2 * len(BLOCK)] if checkpoint and blocks > 1 else []
    fwd = [f"forward %{n}" for n in names for _ in range(steps_scale)]
    rec = [f"recompute %{n}" for n in region]
    bwd = [f"backward %{n}" for n in reversed(names) for _ in range(steps_scale)]
    steps = fwd + bwd[: len(bwd) // 2] + rec + bwd[len(bwd) // 2:]
    phase = ["forward"] * len(fwd) + ["backward"] * (len(bwd) // 2) + ["recompute"] * len(rec) + \
        ["backward"] * (len(bwd) - len(bwd) // 2)
    n, nf = len(steps), len(fwd)
    acts = [(i if i < nf else max(n - i, 0)) / nf * 10 * GiB * (0.6 if region else 1.0) for i in range(n)]
    acts = [a + (1.5 * GiB if p == "recompute" else 0.0) for a, p in zip(acts, phase)]
    grads = [0.0 if i < nf else (i - nf) / (n - nf) * 4 * GiB for i in range(n)]
    timeline = {"steps": steps, "phase": phase, "params": [4 * GiB] * n, "grads": grads,
                "optimizer": [8 * GiB] * n, "activations": acts, "temporaries": [0.2 * GiB * (i % 3) for i in range(n)],
                "regions": []}
    ckpt = None
    if region:
        f0 = (1 + len(BLOCK)) * steps_scale
        r0 = len(fwd) + len(bwd) // 2
        timeline["regions"] = [{"index": 0, "name": "ckpt_0", "forward": [f0, f0 + len(BLOCK) * steps_scale - 1],
                                "recompute": [r0, r0 + len(rec) - 1]}]
        ckpt = {"regions": [region], "stages": blocks + 2, "extra_time": 4e-4, "bytes_saved": 3 * GiB,
                "peak_before": 40 * GiB, "peak_after": 30 * GiB, "budget": 32 * GiB, "kept": 6 * GiB}
    peak = max(sum(timeline[c][i] for c in ("params", "grads", "optimizer", "activations", "temporaries"))
               for i in range(n))
    sharding = {"cluster": "8xH100", "mesh_shape": [8], "step_time": 0.012, "peak_memory": peak,
                "memory_budget": 32 * GiB, "solver": "HiGHS", "status": "optimal", "solve_time": 1.7, "rows": rows,
                "fallbacks": [{"name": "cross_entropy", "op": "cross_entropy", "source": "model.py:99"}],
                "memory": {"peak": peak, "step": "backward %linear_3", "params": 4 * GiB, "grads": 2 * GiB,
                           "optimizer": 8 * GiB, "activations": 12 * GiB, "temporaries": 0.4 * GiB},
                "stats": {"nodes": len(rows), "variables": 1234}}
    return {"format": "autopar.plan", "version": 1,
            "cluster": {"name": "8xH100", "mesh_shape": [8], "memory_per_device": 80.0 * GiB},
            "cluster_description": "8xH100: mesh 8 (8 cuda devices), 80.0 GiB each",
            "options": {"memory_budget": 32.0 * GiB, "optimizer": "adamw", "checkpoint": "auto", "time_limit": 60.0},
            "fingerprint": "0123456789abcdef0123", "inputs": [{"name": "input_ids", "shape": [32, 1024],
                                                              "dtype": "torch.int64"}],
            "step_time": 0.0124, "peak_memory": peak, "memory_budget": 32.0 * GiB, "sharding": sharding,
            "checkpoint": ckpt, "timeline": timeline, "edges": edges}


def _ops_section(page: str) -> str:
    return page[page.index('id="ops"'): page.index('id="edges"')]


def test_page_is_self_contained():
    page = render_html(synthetic_plan())
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link[^>]*href=|@import|url\(", page)


def test_identical_blocks_collapse_into_one():
    page = render_html(synthetic_plan(3))
    ops = _ops_section(page)
    assert "transformer.h.0-2" in ops and "(x3)" in ops
    assert ops.count(">linear_1<") == 1                 # block 0's rows, shown once
    assert ">linear_11<" not in ops and ">linear_21<" not in ops   # blocks 1 and 2 not repeated
    assert ops.count("<details") == 1
    assert ">embedding<" in ops and ">lm_head<" in ops
    edges = page[page.index('id="edges"'):]
    assert edges.count(">x3<") == 3 and ">x1<" in edges      # one row per edge of the block, and the head's
    assert edges.index("S0R &rarr; RR") < edges.index("RS0 &rarr; RS0")   # sorted by time, descending


def test_a_block_that_differs_is_shown_separately():
    data = synthetic_plan(4)
    rows = data["sharding"]["rows"]
    first = next(r for r in rows if r.get("module") == "transformer.h.0.mlp.c_fc")
    first["strategy"] = "S0R = S0R x RR"
    labels = [u["label"] for u in collapse(rows) if u["indices"]]
    assert labels == ["transformer.h.0", "transformer.h.1-3"]
    assert "(x3)" in render_html(data)


def test_rows_without_module_do_not_group():
    data = synthetic_plan(3, modules=False, checkpoint=False)
    data["edges"] = []
    units = collapse(data["sharding"]["rows"])
    assert len(units) == len(data["sharding"]["rows"]) and not any(u["indices"] for u in units)
    page = render_html(data)
    assert "<details" not in page and "no resharding" in page and "No activation checkpointing" in page


def _with_preamble(data: dict, count: int) -> dict:
    """``count`` top-level rows before block 0 (the embedding and ``count - 1`` mask/position ops)."""
    rows = data["sharding"]["rows"]
    ops = ["arange", "add", "view", "expand", "cumsum", "ne", "eq", "and_", "to", "getitem"]
    extra = [_row(f"mask_{i}", ops[i % len(ops)], "RR = RR", [8, 1024], "transformer", i) for i in range(count - 1)]
    rows[1:1] = extra
    return data


def test_long_runs_of_top_level_rows_fold_into_one_closed_group():
    data = _with_preamble(synthetic_plan(3), 20)
    rows = data["sharding"]["rows"]
    entries = group_runs(collapse(rows))
    assert [len(e["run"]) if "run" in e else e["label"] for e in entries] == \
        [20, "transformer.h.0-2", "lm_head", ""]          # the 2 rows after the blocks stay plain
    ops = _ops_section(render_html(data))
    assert ops.count('<tr class="run"') == 1 and 'data-rows="20"' in ops
    run = ops[ops.index('<tr class="run"'): ops.index('<tr class="block"')]
    assert "<details>" in run and "<details open" not in run          # closed by default
    assert "transformer</span>: <span class=\"x\">20 ops</span>" in run
    assert ">mask_0<" in run and ">mask_18<" in run and ">embedding<" in run
    first = rows[:20]
    for total in (human_time(sum(r["compute_time"] for r in first)), human_time(sum(r["comm_time"] for r in first)),
                  human_bytes(sum(r["memory"] for r in first))):
        assert f'<td class="num">{total}</td>' in run[: run.index("</summary>")]
    assert "<details open>" in ops[ops.index('<tr class="block"'):]    # the repeated blocks stay open
    assert ops.index(">lm_head<") > ops.index('<tr class="block"')      # and plain rows after them


def test_short_runs_and_tables_without_blocks_stay_plain():
    ops = _ops_section(render_html(_with_preamble(synthetic_plan(3), 8)))
    assert '<tr class="run"' not in ops and ops.count("<details") == 1 and ">mask_6<" in ops
    assert '<tr class="run"' in _ops_section(render_html(_with_preamble(synthetic_plan(3), 9)))
    bare = synthetic_plan(3, modules=False)            # 33 rows, no block: nothing to fold them for
    assert "<details" not in _ops_section(render_html(bare))


def test_budget_peak_and_regions_are_marked():
    data = synthetic_plan()
    page = render_html(data)
    assert 'id="budget"' in page and 'id="peak"' in page and 'id="boundary"' in page
    assert "ckpt_0" in page and "Checkpoint regions (1)" in page
    tl = downsample(data["timeline"])
    assert tl["regions"][0]["forward"] == data["timeline"]["regions"][0]["forward"]
    assert tl["boundary"] == data["timeline"]["phase"].index("backward")


def test_long_timelines_are_downsampled_keeping_the_peak():
    data = synthetic_plan(3, steps_scale=400)      # ~28k steps
    tl = data["timeline"]
    assert len(tl["steps"]) > 20000
    small = downsample(tl, 1000)
    total = [sum(tl[c][i] for c in ("params", "grads", "optimizer", "activations", "temporaries"))
             for i in range(len(tl["steps"]))]
    assert small["n"] <= 1000 and small["total"][small["peak"]] == max(total)
    assert len(render_html(data)) < 250_000


def test_gpt2_sized_plan_stays_small():
    data = synthetic_plan(12)
    page = render_html(data)
    assert "transformer.h.0-11" in page and "(x12)" in page
    assert _ops_section(page).count("<tr") < 2 * len(BLOCK) + 10


def _browser():
    try:
        return find_chromium()
    except RuntimeError as e:
        pytest.fail(f"{e} (CI installs it in .ci/run)")


@pytest.mark.parametrize("variant", ["full", "bare"])
def test_renders_in_headless_chromium(tmp_path, variant):
    _browser()
    data = synthetic_plan() if variant == "full" else synthetic_plan(2, modules=False, checkpoint=False)
    if variant == "bare":
        data["edges"] = []
    path = tmp_path / "plan.html"
    write_html(data, path)
    try:
        proc = run_chromium(["--dump-dom", path.as_uri()], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium --dump-dom did not finish in 60 s")
    dom = proc.stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, f"no DOM dumped (exit {proc.returncode}): {proc.stderr[-2000:]}"
    assert 'data-rendered="ok"' in body.group(0) and "data-errors" not in body.group(0), body.group(0)
    timeline = dom[dom.index('id="timeline"'):]
    for c in ("params", "grads", "optimizer", "activations", "temporaries"):
        assert re.search(rf'class="series"[^>]*data-category="{c}"', timeline), c
    assert dom[dom.index('id="ops"'):dom.index('id="edges"')].count("<tr") > 5
    if variant == "full":
        assert 'id="budget"' in timeline and 'class="region forward"' in timeline
        png = tmp_path / "plan.png"
        screenshot(path, png)
        assert png.exists() and png.stat().st_size > 10_000


def test_sparse_dicts_render():
    assert 'id="ops"' in render_html({})
    data = synthetic_plan(2)
    data["timeline"], data["checkpoint"] = None, None
    data["sharding"]["rows"][1]["shape"] = [[8, 1024], [8, 1024]]
    data["timeline"] = {"steps": ["forward %x"], "phase": ["forward"], "params": [1.0], "regions": [
        {"index": 0, "name": "ckpt_0", "forward": [0, 0], "recompute": None}]}
    page = render_html(data)
    assert "(8, 1024), (8, 1024)" in page and downsample(data["timeline"])["boundary"] is None


def test_a_real_plan_saved_and_rendered_by_the_cli_opens_in_chromium(tmp_path, capsys):
    """``autopar plan --save --html`` and ``autopar report FILE --html``: a GPT-2 whose budget needs
    checkpointing, its page rendered by Chromium with the regions on the timeline."""
    from autopar.cli import main

    _browser()
    saved, page, again = tmp_path / "plan.json", tmp_path / "plan.html", tmp_path / "again.html"
    args = ["plan", "--model", "gpt2", "--size", "tiny", "--cluster", "cpu:2", "--checkpoint", "auto",
            "--memory", str(0.00115), "--save", str(saved), "--html", str(page)]
    assert main(args) == 0, capsys.readouterr().err
    assert main(["report", str(saved), "--html", str(again)]) == 0
    assert main(["report", str(saved)]) == 0 and "ckpt_0" in capsys.readouterr().out
    assert page.read_text() == again.read_text()  # the saved plan renders as the planned one
    dom = run_chromium(["--dump-dom", page.as_uri()], timeout=60).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body and 'data-rendered="ok"' in body.group(0) and "data-errors" not in body.group(0)
    timeline = dom[dom.index('id="timeline"'):]
    assert 'id="budget"' in timeline and 'class="region forward"' in timeline and "ckpt_0" in timeline
    assert "transformer.h.0-1 (x2)" in dom or "(x2)" in dom  # the two identical blocks collapse


def test_an_offload_plan_shows_where_the_state_lives(tmp_path):
    """A plan that keeps the optimizer state on the host (solver/offload.py): its page, rendered by Chromium,
    has the placement table (device and host bytes per kind, the host's share) and what a step moves."""
    import torch

    import autopar
    from autopar import zoo

    _browser()
    model, inputs = zoo.build("gpt2", "tiny", device="meta", seed=0)
    inputs = {k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    plan = autopar.plan(model, autopar.ClusterInfo.preset("cpu:2"), inputs, memory_budget=734 * 1024,
                        offload="auto", bucket_bytes=64 * 1024)
    off = plan.offload
    assert off is not None and off.placement["optimizer"] == (0.0, pytest.approx(off.placement["optimizer"][1]))
    page = tmp_path / "offload.html"
    plan.to_html(page)
    dom = run_chromium(["--dump-dom", page.as_uri()], timeout=60).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body and 'data-rendered="ok"' in body.group(0)
    section = dom[dom.index('id="offload"'):]
    section = section[:section.index("</section>")]
    assert "Offload: where the state lives" in section and "optimizer" in section and "100%" in section
    assert human_bytes(off.placement["optimizer"][1]) in section and human_bytes(off.h2d) in section
    assert "no offload: does not fit" in section and "chosen" in section
