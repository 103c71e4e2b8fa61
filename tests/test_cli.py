"""`autopar plan`: prints a report, or JSON, and fails clearly on bad input."""
import json

from autopar.cli import main


def test_plan_prints_a_report(capsys):
    assert main(["plan", "--model", "gpt2", "--size", "tiny", "--cluster", "cpu:4"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "autopar plan: gpt2" in out and "total" in out and "planned in" in out
    # progress goes to stderr, stage by stage, so long plans show where they are
    assert "autopar: tracing ..." in captured.err
    assert "autopar: ILP at 4 GiB per device (time limit 60 s):" in captured.err
    assert "cross_entropy" in out and ("linear" in out or "addmm" in out)


def test_plan_json_lists_every_node(capsys):
    assert main(["plan", "--model", "mlp", "--size", "wide", "--cluster", "8xH100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ops = {row["op"] for row in data["sharding"]["rows"]}
    assert {"linear", "gelu", "mean"} <= ops


def test_bad_input_is_a_clear_error(capsys):
    assert main(["plan", "--model", "gpt2", "--size", "tiny", "--cluster", "8xV100"]) == 2
    assert "unknown cluster preset" in capsys.readouterr().err
    assert main(["plan", "--model", "resnet9000"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["plan", "--model", "mlp", "--size", "wide", "--cluster", "cpu:4", "--memory", "0.0001"]) == 2
    assert "smallest budget that fits" in capsys.readouterr().err


def test_mesh_search_prints_every_mesh_weighed(capsys):
    assert main(["plan", "--model", "mlp", "--size", "tiny", "--cluster", "2x2xH100", "--mesh", "search"]) == 0
    out = capsys.readouterr().out
    assert "on 2x2xH100: mesh 2x2" in out and "mesh search: 2 of 2 meshes planned" in out
    table = out[out.index("mesh search:"):].splitlines()
    assert table[1].split() == ["mesh", "links", "step", "time", "peak", "plan", "s"]
    assert table[3].split()[:2] == ["4", "out"] and table[4].split()[:2] == ["2x2", "out/in"]
    assert table[4].endswith("chosen") and "2 meshes)" in out
    assert main(["plan", "--model", "mlp", "--size", "tiny", "--cluster", "cpu:4", "--mesh", "3x3"]) == 2
    assert "mesh 3x3 has 9 devices" in capsys.readouterr().err


def test_offload_auto_at_a_budget_only_offload_meets(capsys, tmp_path):
    """``--offload auto``: the plan keeps the optimizer state on the host and says what crosses the host link;
    its HTML page has the offload card."""
    page = tmp_path / "plan.html"
    args = ["plan", "--model", "gpt2", "--size", "tiny", "--cluster", "cpu:2", "--batch", "2", "--memory", "0.0007",
            "--offload", "auto", "--bucket-mb", "0.0625", "--html", str(page)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "offload: parameters 0%, optimizer state 100% on the host" in out and "host->device" in out
    assert "offload (auto) weighed: no offload: does not fit" in out
    html = page.read_text()
    assert "optimizer state 100% on the host" in html and "host optimizer step" in html
    assert main(args[:-6]) == 2 and "no plan fits" in capsys.readouterr().err  # the same budget without offload
