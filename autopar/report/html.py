"""A self-contained HTML page of a plan, rendered from ``Plan.to_json()``'s dict.

One file, no network: inline CSS, inline JS, the (downsampled) timeline embedded as JSON.
Sections: header (cluster, mesh, step time, peak vs budget, solver, options), the op table with
repeated layers collapsed (``transformer.h.0-11 (x12)``), communication per resharding edge,
the per-device memory timeline (stacked SVG drawn by the inline script, budget line, peak,
forward/backward boundary, checkpointed regions ``ckpt_i``), and the totals.

Collapsing: a row's block is its module path up to the first integer component
(``transformer.h.3.attn.c_proj`` -> ``transformer.h.3``); consecutive blocks with the same
template (``transformer.h.#``) and the same sequence of (op, strategy) are shown once. In a table
that has blocks, a run of more than ``RUN_LIMIT`` consecutive rows outside any block (GPT-2's mask
and position-id building before ``transformer.h.0``) folds into one closed group with its totals,
so that the blocks come first on the screen.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from autopar.report.text import human_bytes, human_time

CATEGORIES = ("params", "grads", "optimizer", "activations", "temporaries")
MAX_BUCKETS = 1200   # timeline columns drawn; each bucket keeps its step of largest total
TOP_EDGES = 40       # edge rows shown before the "more" row
RUN_LIMIT = 8        # longer runs of rows outside blocks fold into one closed <details> group

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1360px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.sub{color:#5b6475;margin-bottom:14px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:18px}.card span{color:#5b6475;font-size:12px}
.bar{height:6px;background:#e6e9ef;border-radius:3px;margin-top:6px}.bar i{display:block;height:6px;border-radius:3px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:4px 16px 14px;margin-top:16px}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{padding:3px 8px;text-align:left;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
th{font-size:12px;color:#5b6475;border-bottom:2px solid #dde1e8;font-weight:600}
td{border-bottom:1px solid #eef0f4}.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
td.nest{padding:0}td.nest table td{border-bottom:1px solid #f1f2f5}
details>summary{cursor:pointer;list-style:none;padding:5px 8px;background:#f0f3fa;border-bottom:1px solid #dde1e8}
details>summary::-webkit-details-marker{display:none}
details>summary td:first-child::before{content:"\\25B8";display:inline-block;width:14px;color:#5b6475}
details[open]>summary td:first-child::before{content:"\\25BE"}
details[open]>summary{background:#e3e9f7}summary .x{color:#3559b7;font-weight:600}
tr.run details>summary{background:#f7f8fa}tr.run details[open]>summary{background:#eef0f4}
tr.run summary .x{color:#1d2330}
summary table td{border:0;padding:0 8px}
tr.total td{font-weight:600;border-top:2px solid #dde1e8}tr.more td{color:#5b6475;font-style:italic}
#timeline{position:relative}#timeline svg{display:block;width:100%}
#tip{position:absolute;top:6px;right:10px;background:rgba(255,255,255,.94);border:1px solid #dde1e8;
border-radius:6px;padding:6px 10px;font-size:12px;pointer-events:none;display:none;min-width:220px}
.legend{display:flex;flex-wrap:wrap;gap:14px;font-size:12.5px;margin:8px 0 4px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
ul.regions{margin:4px 0;padding-left:20px}.muted{color:#5b6475}
"""

_JS = r"""
(function () {
  const D = JSON.parse(document.getElementById('plan-data').textContent);
  const COL = {params: '#4c72b0', grads: '#dd8452', optimizer: '#8172b3', activations: '#55a868',
               temporaries: '#c44e52'};
  function hb(n) {
    const u = [['GiB', 1073741824], ['MiB', 1048576], ['KiB', 1024]];
    for (const [s, k] of u) if (Math.abs(n) >= k) return (n / k).toPrecision(3) + ' ' + s;
    return n ? n.toFixed(0) + ' B' : '0';
  }
  const ENT = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'};
  function esc(s) { return String(s).replace(/[&<>"]/g, c => ENT[c]); }
  const box = document.getElementById('timeline'), T = D.timeline;
  const legend = document.getElementById('legend');
  legend.innerHTML = D.categories.map(c => `<span><i style="background:${COL[c]}"></i>${c}</span>`).join('') +
    '<span><i style="background:none;border-top:2px dashed #d62728;height:0;vertical-align:3px"></i>budget</span>' +
    '<span><i style="background:rgba(255,193,7,.25);border:1px solid #e0a800"></i>checkpointed (forward)</span>' +
    '<span><i style="background:rgba(0,150,200,.15);border:1px solid #0096c8"></i>recompute</span>';
  if (!T || !T.n) { box.insertAdjacentHTML('beforeend', '<p class="muted">No timeline recorded.</p>'); return; }
  // TOP leaves two bands above the plot: the forward/backward marker (y 0-16) and the region labels
  // (the region rects rise into it as tabs), so no label ever sits over the data, the budget or the peak.
  const W = Math.max(box.clientWidth || 1300, 600), H = 400, L = 72, R = 16, TOP = 42, B = 44, TAB = 17;
  const n = T.n, pw = W - L - R, ph = H - TOP - B;
  const tot = T.total, ymax = Math.max(D.budget || 0, ...tot, 1) * 1.08;
  const x = i => L + pw * i / n, y = v => TOP + ph * (1 - v / ymax);
  const HALO = 'paint-order="stroke" stroke="#fff" stroke-width="3.5" stroke-linejoin="round"';
  const tw = (t, size) => String(t).length * size * 0.62;   // text width, a little generous
  const s = [];
  s.push(`<svg viewBox="0 0 ${W} ${H}" height="${H}" role="img" aria-label="memory timeline">`);
  const unit = [1073741824, 1048576, 1024, 1].find(u => ymax / 2 >= u) || 1;
  const raw = ymax / unit / 6, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = unit * mag * ([1, 2, 2.5, 5, 10].find(m => m * mag >= raw) || 10);
  for (let v = 0; v < ymax; v += step) {
    s.push(`<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#eceef2"/>`);
    s.push(`<text x="${L - 6}" y="${y(v) + 4}" font-size="11" text-anchor="end" fill="#5b6475">${hb(v)}</text>`);
  }
  const base = new Array(n).fill(0);
  for (const c of D.categories) {
    const v = T.values[c], up = [], dn = [];
    for (let i = 0; i < n; i++) {
      const a = base[i], b = a + v[i];
      up.push(`${x(i)},${y(b)} ${x(i + 1)},${y(b)}`); dn.unshift(`${x(i + 1)},${y(a)} ${x(i)},${y(a)}`);
      base[i] = b;
    }
    s.push(`<path class="series" data-category="${c}" fill="${COL[c]}" fill-opacity=".85" ` +
           `d="M${up.join(' ')} ${dn.join(' ')}Z"/>`);
  }
  // A region's label sits in its tab above the plot, only where the span is wide enough: the name
  // (ckpt_3), else its number (3), else nothing; the rect's <title> always names it (hover).
  const kinds = [['forward', 'rgba(255,193,7,.16)', '#b38600'], ['recompute', 'rgba(0,150,200,.13)', '#0079a3']];
  for (const r of T.regions) {
    for (const [k, f, c] of kinds) {
      const sp = r[k]; if (!sp) continue;
      const a = Math.min(sp[0], n - 1), b = Math.min(Math.max(sp[1], a), n - 1);
      const x0 = x(a), w = Math.max(x(b + 1) - x0, 1);
      const last = Math.min(T.first[b] + T.bucket, T.steps_total) - 1;
      const what = k === 'forward' ? 'checkpointed forward' : 'recompute';
      const title = `${r.name}, ${what}: steps ${T.first[a]}-${last} (${T.steps[a]} .. ${T.steps[b]})`;
      s.push(`<rect class="region ${k}" data-name="${esc(r.name)}" x="${x0}" y="${TOP - TAB}" width="${w}" ` +
             `height="${ph + TAB}" fill="${f}" stroke="${c}" stroke-dasharray="3,2">` +
             `<title>${esc(title)}</title></rect>`);
      const short = String(r.name).replace(/^ckpt_/, '');
      const label = [r.name, short].find(t => tw(t, 10.5) + 6 <= w);
      if (label) s.push(`<text class="region-label" x="${x0 + w / 2}" y="${TOP - 5}" font-size="10.5" ` +
                        `text-anchor="middle" fill="${c}" pointer-events="none">${esc(label)}</text>`);
    }
  }
  let bx = null;
  if (T.boundary !== null) {
    bx = x(T.boundary);
    s.push(`<line id="boundary" x1="${bx}" x2="${bx}" y1="2" y2="${TOP + ph}" stroke="#333" ` +
           'stroke-dasharray="2,3"/>');
    s.push(`<text x="${bx - 5}" y="12" font-size="11" text-anchor="end" fill="#333">&larr; forward</text>`);
    s.push(`<text x="${bx + 5}" y="12" font-size="11" fill="#333">backward &rarr;</text>`);
  }
  const yb = D.budget ? y(D.budget) : null;
  if (D.budget) {
    s.push(`<line id="budget" x1="${L}" x2="${W - R}" y1="${yb}" y2="${yb}" stroke="#d62728" ` +
           `stroke-width="1.5" stroke-dasharray="6,4"/>`);
  }
  // The peak's label goes beside its marker: on the side away from the forward/backward line, above the
  // marker unless the budget line runs there (then below), with a white halo over the areas.
  const px = x(T.peak + 0.5), py = y(tot[T.peak]);
  const ptext = `peak ${hb(tot[T.peak])} at ${T.steps[T.peak]}`, pw0 = tw(ptext, 11.5);
  let right = bx === null ? px < W / 2 : px >= bx;
  if (right && px + 9 + pw0 > W - R) right = false;
  if (!right && px - 9 - pw0 < L) right = true;
  const hits = (lo, hi) => yb !== null && yb >= lo && yb <= hi;
  let ty = py - 9;
  if (hits(py - 23, py - 5) && py + 20 < TOP + ph - 4 && !hits(py + 5, py + 22)) ty = py + 20;
  if (ty - 12 < TOP) ty = py + 20;
  s.push(`<circle id="peak" cx="${px}" cy="${py}" r="4.5" fill="#fff" stroke="#111" stroke-width="2"/>`);
  s.push(`<text id="peak-label" x="${px + (right ? 9 : -9)}" y="${ty}" font-size="11.5" font-weight="600" ` +
         `text-anchor="${right ? 'start' : 'end'}" ${HALO}>${esc(ptext)}</text>`);
  if (D.budget) {   // at the right end, or the left one where the peak's label is there
    const btext = `budget ${hb(D.budget)}`, bw = tw(btext, 11);
    const lx = right ? px + 9 : px - 9 - pw0, rx = right ? px + 9 + pw0 : px - 9;
    const clash = ty > yb - 18 && ty - 12 < yb - 3 && rx > W - R - 8 - bw && lx < W - R - 4;
    s.push(`<text x="${clash ? L + 4 : W - R - 4}" y="${yb - 5}" font-size="11" ` +
           `text-anchor="${clash ? 'start' : 'end'}" fill="#d62728" ${HALO}>${btext}</text>`);
  }
  s.push(`<line x1="${L}" x2="${W - R}" y1="${TOP + ph}" y2="${TOP + ph}" stroke="#999"/>`);
  // x ticks at round step numbers (a bucket covers T.bucket steps)
  const N = T.steps_total, rawx = N / 8, magx = Math.pow(10, Math.floor(Math.log10(Math.max(rawx, 1))));
  const sx = Math.max(1, Math.ceil(magx * ([1, 2, 2.5, 5, 10].find(m => m * magx >= rawx) || 10)));
  for (let v = 0; v <= N; v += sx) {
    const tx = x(v / T.bucket);
    s.push(`<line x1="${tx}" x2="${tx}" y1="${TOP + ph}" y2="${TOP + ph + 4}" stroke="#999"/>`);
    s.push(`<text x="${tx}" y="${H - B + 16}" font-size="10.5" text-anchor="middle" fill="#5b6475">${v}</text>`);
  }
  s.push(`<text x="${L + pw / 2}" y="${H - 2}" font-size="11" text-anchor="middle" fill="#5b6475">` +
         `step (${T.steps_total} steps${T.bucket > 1 ? ', max over buckets of ' + T.bucket : ''})</text>`);
  s.push(`<line id="cursor" y1="${TOP}" y2="${TOP + ph}" stroke="#111" stroke-opacity=".4" visibility="hidden"/>`);
  s.push('</svg><div id="tip"></div>');
  box.insertAdjacentHTML('beforeend', s.join(''));
  const svg = box.querySelector('svg'), tip = document.getElementById('tip'), cur = document.getElementById('cursor');
  svg.addEventListener('mousemove', ev => {
    const r = svg.getBoundingClientRect(), sx = (ev.clientX - r.left) * W / r.width;
    const i = Math.floor((sx - L) / pw * n);
    if (i < 0 || i >= n) { tip.style.display = 'none'; cur.setAttribute('visibility', 'hidden'); return; }
    cur.setAttribute('x1', x(i + 0.5)); cur.setAttribute('x2', x(i + 0.5)); cur.setAttribute('visibility', 'visible');
    tip.style.display = 'block';
    tip.innerHTML = `<b>${esc(T.steps[i])}</b> <span class="muted">${T.phase[i]}, step ${T.first[i]}</span><br>` +
      D.categories.map(c => `<i style="display:inline-block;width:9px;height:9px;background:${COL[c]}"></i> ` +
                            `${c}: ${hb(T.values[c][i])}`).join('<br>') + `<br><b>total ${hb(tot[i])}</b>`;
  });
  svg.addEventListener('mouseleave', () => { tip.style.display = 'none'; cur.setAttribute('visibility', 'hidden'); });
})();
"""

_ONERROR = """window.addEventListener('error', function (e) { var b = document.body;
b.dataset.errors = (b.dataset.errors ? b.dataset.errors + '; ' : '') + e.message + ' (line ' + e.lineno + ')'; });"""


def _e(s) -> str:
    return html.escape("" if s is None else str(s))


def _shape(shape) -> str:
    if not shape:
        return "-" if shape is None else "()"
    if isinstance(shape[0], (list, tuple)):
        return ", ".join(_shape(s) for s in shape)
    return "(" + ", ".join(map(str, shape)) + ")"


def _block(module):
    """``transformer.h.3.attn`` -> (``transformer.h.3``, ``transformer.h``, 3, ``attn``); None if no index."""
    parts = (module or "").split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1]), ".".join(parts[:i]), int(p), ".".join(parts[i + 1:])
    return None


def collapse(rows: list[dict]) -> list[dict]:
    """Units of the op table, in order: ``{"rows": [row], "blocks": [[row]...], "indices", "label"}``.

    A unit is one plain row (``indices`` empty) or a run of consecutive blocks of one template with
    the same sequence of (op, strategy); a row without a module between two rows of one block joins it.
    """
    keys = [_block(r.get("module")) for r in rows]
    for i, k in enumerate(keys):            # a module-less row inside a block belongs to it
        if k is None and not rows[i].get("module"):
            prev = next((keys[j] for j in range(i - 1, -1, -1) if rows[j].get("module")), None)
            nxt = next((keys[j] for j in range(i + 1, len(rows)) if rows[j].get("module")), None)
            if prev is not None and nxt is not None and prev[0] == nxt[0]:
                keys[i] = prev
    runs: list[tuple] = []                  # (block key or None, [rows])
    for row, k in zip(rows, keys):
        if k is not None and runs and runs[-1][0] is not None and runs[-1][0][0] == k[0]:
            runs[-1][1].append(row)
        else:
            runs.append((k, [row]))
    units: list[dict] = []
    for k, rs in runs:
        if k is None:
            units.extend({"rows": rs, "blocks": [rs], "indices": [], "label": r.get("module") or ""} for r in rs)
            continue
        sig = [(r.get("op"), r.get("strategy")) for r in rs]
        last = units[-1] if units else None
        if last and last["indices"] and last["template"] == k[1] and last["sig"] == sig:
            last["blocks"].append(rs)
            last["indices"].append(k[2])
        else:
            units.append({"rows": rs, "blocks": [rs], "indices": [k[2]], "template": k[1], "sig": sig,
                          "prefix": k[0]})
    for u in units:
        if u["indices"]:
            u["label"] = f"{u['template']}.{_ranges(u['indices'])}" if u["template"] else _ranges(u["indices"])
    return units


def _ranges(ix: list[int]) -> str:
    out, start = [], 0
    for i in range(1, len(ix) + 1):
        if i == len(ix) or ix[i] != ix[i - 1] + 1:
            out.append(str(ix[start]) if start == i - 1 else f"{ix[start]}-{ix[i - 1]}")
            start = i
    return ",".join(out)


_COLS = '<colgroup><col style="width:17%"><col style="width:15%"><col style="width:9%"><col style="width:14%">' \
        '<col style="width:21%"><col style="width:8%"><col style="width:8%"><col style="width:8%"></colgroup>'
_OPS_HEAD = "<tr><th>node</th><th>module</th><th>op</th><th>shape</th><th>strategy</th>" \
            '<th class="num">compute</th><th class="num">comm</th><th class="num">memory</th></tr>'


def _op_row(r: dict, module: str) -> str:
    """One op; the title of each clipped cell holds its full text (long names end in an ellipsis)."""
    name, src, shape = r.get("name"), r.get("source"), _shape(r.get("shape"))
    return (f'<tr><td class="mono" title="{_e(name)}{" &middot; " + _e(src) if src else ""}">{_e(name)}</td>'
            f'<td class="mono" title="{_e(r.get("module"))}">{_e(module)}</td><td>{_e(r.get("op"))}</td>'
            f'<td class="mono" title="{_e(shape)}">{_e(shape)}</td>'
            f'<td title="{_e(r.get("strategy"))}"><code>{_e(r.get("strategy"))}</code></td>'
            f'<td class="num">{human_time(r.get("compute_time", 0.0))}</td>'
            f'<td class="num">{human_time(r.get("comm_time", 0.0))}</td>'
            f'<td class="num">{human_bytes(r.get("memory", 0.0))}</td></tr>')


def _sum(rows, key) -> float:
    return sum(r.get(key) or 0.0 for r in rows)


def group_runs(units: list[dict], limit: int = RUN_LIMIT) -> list[dict]:
    """The op table's top-level entries: ``units`` with each run of more than ``limit`` consecutive plain
    rows (units without ``indices``) replaced by ``{"run": [unit...]}``. A table without any block is
    left as it is: there is nothing for its rows to push down."""
    if not any(u["indices"] for u in units):
        return list(units)
    out: list[dict] = []
    run: list[dict] = []

    def flush():
        if len(run) > limit:
            out.append({"run": list(run)})
        else:
            out.extend(run)
        run.clear()

    for u in units:
        if u["indices"]:
            flush()
            out.append(u)
        else:
            run.append(u)
    flush()
    return out


def run_summary(rows: list[dict]) -> tuple[str, str]:
    """(label, hint) of a folded run: the modules' common dotted prefix (else their top-level names) and
    the ops that take its compute time, largest first (``transformer``, ``embedding, add, dropout ...``)."""
    mods = [r.get("module") for r in rows if r.get("module")]
    common = mods[0].split(".") if mods else []
    for m in mods[1:]:
        parts = m.split(".")
        k = 0
        while k < min(len(common), len(parts)) and common[k] == parts[k]:
            k += 1
        common = common[:k]
    if common:
        label = ".".join(common)
    else:
        tops = list(dict.fromkeys(m.split(".")[0] for m in mods))
        label = ", ".join(tops[:3]) + (" ..." if len(tops) > 3 else "") if tops else "top level"
    time: dict[str, float] = {}
    for r in rows:
        op = str(r.get("op") or "?")
        time[op] = time.get(op, 0.0) + (r.get("compute_time") or 0.0)
    ops = [op for op, t in sorted(time.items(), key=lambda kv: -kv[1]) if t > 0] or list(time)
    return label, ", ".join(ops[:4]) + (" ..." if len(ops) > 4 else "")


def _summary(head: str, rows: list[dict]) -> str:
    return (f'<table>{_COLS}<tr><td colspan="5">{head}</td>'
            f'<td class="num">{human_time(_sum(rows, "compute_time"))}</td>'
            f'<td class="num">{human_time(_sum(rows, "comm_time"))}</td>'
            f'<td class="num">{human_bytes(_sum(rows, "memory"))}</td></tr></table>')


def _ops_table(entries: list[dict]) -> str:
    out, opened = [f'<table id="ops">{_COLS}<thead>{_OPS_HEAD}</thead><tbody>'], False
    for u in entries:
        if "run" in u:
            rs = [x["rows"][0] for x in u["run"]]
            label, hint = run_summary(rs)
            head = (f'<span class="mono">{_e(label)}</span>: <span class="x">{len(rs)} ops</span> '
                    f'<span class="muted">({_e(hint)})</span>')
            inner = "".join(_op_row(x["rows"][0], x["label"]) for x in u["run"])
            out.append(f'<tr class="run" data-rows="{len(rs)}"><td class="nest" colspan="8"><details>'
                       f'<summary>{_summary(head, rs)}</summary>'
                       f'<table>{_COLS}<tbody>{inner}</tbody></table></details></td></tr>')
            continue
        if not u["indices"]:
            out.append(_op_row(u["rows"][0], u["label"]))
            continue
        n, rs = len(u["blocks"]), u["rows"]
        every = [r for b in u["blocks"] for r in b]
        is_open = " open" if n > 1 and not opened else ""
        opened = opened or n > 1
        times = f" (x{n})" if n > 1 else ""
        per = f"{len(rs)} ops per block" + (", totals over all blocks" if n > 1 else "")
        summary = _summary(f'<span class="mono">{_e(u["label"])}</span><span class="x">{times}</span> '
                           f'<span class="muted">{per}</span>', every)
        inner = "".join(_op_row(r, (_block(r.get("module")) or ("", "", 0, r.get("module") or ""))[3]) for r in rs)
        out.append(f'<tr class="block"><td class="nest" colspan="8"><details{is_open}><summary>{summary}</summary>'
                   f'<table>{_COLS}<tbody>{inner}</tbody></table></details></td></tr>')
    return "".join(out) + "</tbody></table>"


def _edges_table(edges: list[dict], units: list[dict]) -> str:
    """Edges grouped like the op table: one row per (unit, position in block) pair, x count, total time."""
    place = {}
    for ui, u in enumerate(units):
        for bi, block in enumerate(u["blocks"]):
            for pi, r in enumerate(block):
                place[r.get("name")] = (ui, bi, pi)
    groups: dict[tuple, dict] = {}
    for e in edges:
        s, d = place.get(e.get("src"), (e.get("src"), 0, 0)), place.get(e.get("dst"), (e.get("dst"), 0, 0))
        key = (s[0], s[2], d[0], d[2], d[1] - s[1], e.get("from"), e.get("to"))
        inside = isinstance(s[0], int) and s[0] == d[0] and units[s[0]]["indices"]
        g = groups.setdefault(key, {"edge": e, "count": 0, "time": 0.0, "bytes": 0.0,
                                    "block": units[s[0]]["label"] if inside else ""})
        g["count"] += 1
        g["time"] += e.get("time") or 0.0
        g["bytes"] += e.get("bytes") or 0.0
    ordered = sorted(groups.values(), key=lambda g: -g["time"])
    head = ('<table id="edges"><colgroup><col style="width:6%"><col style="width:16%"><col style="width:30%">'
            '<col style="width:18%"><col style="width:10%"><col style="width:10%"><col style="width:10%"></colgroup>'
            '<thead><tr><th class="num">count</th><th>block</th><th>src &rarr; dst</th><th>from &rarr; to</th>'
            '<th class="num">time each</th><th class="num">total time</th><th class="num">total bytes</th></tr>'
            '</thead><tbody>')
    out = [head]
    for g in ordered[:TOP_EDGES]:
        e = g["edge"]
        out.append(f'<tr><td class="num">x{g["count"]}</td><td class="mono">{_e(g["block"])}</td>'
                   f'<td class="mono">{_e(e.get("src"))} &rarr; {_e(e.get("dst"))}</td>'
                   f'<td><code>{_e(e.get("from"))} &rarr; {_e(e.get("to"))}</code></td>'
                   f'<td class="num">{human_time(g["time"] / g["count"])}</td>'
                   f'<td class="num">{human_time(g["time"])}</td><td class="num">{human_bytes(g["bytes"])}</td></tr>')
    rest = ordered[TOP_EDGES:]
    if rest:
        out.append(f'<tr class="more"><td colspan="5">{len(rest)} more groups '
                   f'({sum(g["count"] for g in rest)} edges)</td><td class="num">{human_time(_sum(rest, "time"))}</td>'
                   f'<td class="num">{human_bytes(_sum(rest, "bytes"))}</td></tr>')
    if not edges:
        out.append('<tr class="more"><td colspan="7">no resharding: each consumer reads its producer\'s spec</td></tr>')
    out.append(f'<tr class="total"><td class="num">{len(edges)}</td><td colspan="4">total resharding</td>'
               f'<td class="num">{human_time(_sum(edges, "time"))}</td>'
               f'<td class="num">{human_bytes(_sum(edges, "bytes"))}</td></tr></tbody></table>')
    return "".join(out)


def downsample(timeline: dict | None, max_buckets: int = MAX_BUCKETS) -> dict | None:
    """The timeline in at most ``max_buckets`` columns: each keeps the step of largest total in its bucket
    (so the peak survives); step indices (regions, the forward/backward boundary) map to buckets."""
    steps = (timeline or {}).get("steps") or []
    if not steps:
        return None
    n = len(steps)
    vals = {c: list(timeline.get(c) or [0.0] * n) for c in CATEGORIES}
    total = [sum(vals[c][i] for c in CATEGORIES) for i in range(n)]
    size = -(-n // max_buckets)
    pick = [max(range(s, min(s + size, n)), key=total.__getitem__) for s in range(0, n, size)]
    phase = timeline.get("phase") or ["forward"] * n
    boundary = next((i for i, p in enumerate(phase) if p != "forward"), None)
    regions = [{"name": r.get("name") or f"ckpt_{r.get('index', k)}",
                **{p: [r[p][0] // size, r[p][1] // size] if r.get(p) else None for p in ("forward", "recompute")}}
               for k, r in enumerate(timeline.get("regions") or [])]
    return {"n": len(pick), "bucket": size, "steps_total": n, "first": [i for i in range(0, n, size)],
            "steps": [steps[i] for i in pick], "phase": [phase[i] for i in pick],
            "values": {c: [vals[c][i] for i in pick] for c in CATEGORIES}, "total": [total[i] for i in pick],
            "peak": max(range(len(pick)), key=lambda b: total[pick[b]]),
            "boundary": None if boundary is None else boundary // size, "regions": regions}


def _card(label: str, value: str, extra: str = "") -> str:
    return f'<div class="card"><span>{_e(label)}</span><b>{_e(value)}</b>{extra}</div>'


def _header(data: dict, sh: dict) -> str:
    cl, opts = data.get("cluster") or {}, data.get("options") or {}
    peak, budget = data.get("peak_memory", sh.get("peak_memory", 0.0)), data.get("memory_budget") or 0.0
    frac = peak / budget if budget else 0.0
    bar = (f'<div class="bar"><i style="width:{min(frac, 1) * 100:.1f}%;'
           f'background:{"#d62728" if frac > 1 else "#55a868"}"></i></div>') if budget else ""
    ckpt = opts.get("checkpoint")
    ckpt = ", ".join(ckpt) if isinstance(ckpt, list) else str(ckpt)
    inputs = ", ".join(f"{i.get('name')} {_shape(i.get('shape'))} {i.get('dtype', '')}"
                       for i in data.get("inputs") or [])
    ob = opts.get("memory_budget")
    return "".join([
        f'<h1>autopar plan &mdash; {_e(cl.get("name") or sh.get("cluster"))}</h1>',
        f'<div class="sub">{_e(data.get("cluster_description", ""))}<br>inputs: {_e(inputs or "-")} &middot; '
        f'fingerprint <span class="mono">{_e(str(data.get("fingerprint", ""))[:16])}</span></div><div class="cards">',
        _card("mesh", " x ".join(map(str, cl.get("mesh_shape") or sh.get("mesh_shape") or []))),
        _card("predicted step time", human_time(data.get("step_time", sh.get("step_time", 0.0)))),
        _card("peak memory per device", human_bytes(peak),
              f'<span>of {human_bytes(budget)} budget ({frac:.0%})</span>{bar}' if budget else ""),
        _card("solver", f'{sh.get("solver", "?")}: {sh.get("status", "?")}',
              f'<span>in {human_time(sh.get("solve_time", 0.0))}</span>'),
        _card("options", f'{opts.get("optimizer", "-")}, checkpoint {ckpt}',
              f'<span>budget {human_bytes(ob) if ob else "device memory"}, '
              f'time limit {opts.get("time_limit", "-")} s</span>'),
        _offload_card(data.get("offload")),
        "</div>"])


def _offload_card(off: dict | None) -> str:
    """The share of parameters and optimizer state on the host and what crosses the host link (solver/offload.py)."""
    if not off:
        return ""
    return _card("offload", f'parameters {off["params"]:.0%}, optimizer state {off["optimizer"]:.0%} on the host',
                 f'<span>{off.get("policy", "auto")} policy; per step {human_bytes(off["h2d"])} host&rarr;device, '
                 f'{human_bytes(off["d2h"])} device&rarr;host: {human_time(off["transfer_time"])} on the host link, '
                 f'{human_time(off["host_step_time"])} host optimizer step</span>')


def _placement(off: dict | None) -> str:
    """Offload's section: where each kind of state lives between steps (device | host, with a bar of the host's
    share), what one step moves each way, and the chunks the device keeps room for (solver/offload.py)."""
    if not off or not off.get("placement"):
        return ""
    rows = []
    for kind, (device, host) in off["placement"].items():
        share = host / (device + host) if device + host else 0.0
        rows.append(f'<tr><td>{_e(kind)}</td><td class="num">{human_bytes(device)}</td>'
                    f'<td class="num">{human_bytes(host)}</td><td style="min-width:160px"><div class="bar">'
                    f'<i style="width:{share * 100:.1f}%;background:#8172b2"></i></div></td>'
                    f'<td class="num">{share:.0%}</td></tr>')
    weighed = "".join(f"<li>{_e(label)}: {_e(note)}" + ("" if t is None else f", {human_time(t)} per step") + "</li>"
                      for label, t, note in off.get("weighed") or [])
    return "".join([
        '<section id="offload"><h2>Offload: where the state lives, what moves</h2>',
        '<table><tr><th>state</th><th>on the device</th><th>on the host</th><th>host share</th><th></th></tr>',
        *rows, "</table>",
        f'<p>{_e(off.get("policy", "auto"))} policy. Per step {human_bytes(off["h2d"])} host&rarr;device and '
        f'{human_bytes(off["d2h"])} device&rarr;host ({human_time(off["transfer_time"])} on the host link), '
        f'{human_time(off["host_step_time"])} of optimizer step on the host. The device keeps room for the '
        f'chunks one op fetches ({human_bytes(off["working_params"])}) and the gradient chunks being filled '
        f'({human_bytes(off["working_grads"])}).</p>',
        f"<p>Shares weighed:</p><ul>{weighed}</ul>" if weighed else "", "</section>"])


def _meshes(data: dict) -> str:
    """A mesh search's table (``Plan.meshes``): every mesh weighed, the chosen one in bold; empty without a search."""
    trials, chosen = data.get("meshes") or [], (data.get("cluster") or {}).get("mesh_shape")
    if not trials:
        return ""
    body = "".join(
        f'<tr{" style=font-weight:bold" if t["mesh"] == chosen else ""}><td>{"x".join(map(str, t["mesh"]))}</td>'
        f'<td>{human_time(t["step_time"]) if t["step_time"] is not None else "-"}</td>'
        f'<td>{human_bytes(t["peak_memory"]) if t["peak_memory"] is not None else "-"}</td>'
        f'<td>{t["seconds"]:.2f} s</td><td>{"chosen" if t["mesh"] == chosen else _e(t.get("note", ""))}</td></tr>'
        for t in trials)
    return (f'<section><h2>Mesh search ({len(trials)} meshes)</h2><table><thead><tr><th>mesh</th><th>step time</th>'
            f'<th>peak</th><th>planning</th><th></th></tr></thead><tbody>{body}</tbody></table></section>')


def _totals(data: dict, sh: dict, rows: list[dict]) -> str:
    mem, ck = data.get("memory") or sh.get("memory") or {}, data.get("checkpoint")
    parts = "".join(_card(c, human_bytes(mem.get(c, 0.0))) for c in CATEGORIES if c in mem)
    out = ['<div class="cards">', _card("compute", human_time(_sum(rows, "compute_time"))),
           _card("communication", human_time(_sum(rows, "comm_time"))),
           _card("step time", human_time(data.get("step_time", 0.0)),
                 f'<span>incl. {human_time(ck.get("extra_time", 0.0))} recompute</span>' if ck else ""),
           _card("peak", human_bytes(data.get("peak_memory", mem.get("peak", 0.0))),
                 f'<span>at {_e(mem.get("step", "?"))}</span>'), parts, "</div>"]
    if ck:
        out.append(f'<h2>Checkpoint regions ({len(ck.get("regions") or [])})</h2><p class="muted">'
                   f'{ck.get("stages", "?")} stages; recompute {human_time(ck.get("extra_time", 0.0))}, saves '
                   f'{human_bytes(ck.get("bytes_saved", 0.0))}; peak {human_bytes(ck.get("peak_before", 0.0))} '
                   f'&rarr; {human_bytes(ck.get("peak_after", 0.0))} (budget {human_bytes(ck.get("budget", 0.0))}, '
                   f'kept {human_bytes(ck.get("kept", 0.0))})</p><ul class="regions">')
        for i, names in enumerate(ck.get("regions") or []):
            span = f"%{names[0]} .. %{names[-1]}" if len(names) > 1 else f"%{names[0]}" if names else "(empty)"
            out.append(f'<li><b>ckpt_{i}</b>: {len(names)} nodes, <span class="mono">{_e(span)}</span></li>')
        out.append("</ul>")
    else:
        out.append('<p class="muted">No activation checkpointing.</p>')
    fb = sh.get("fallbacks") or []
    if fb:
        out.append(f"<h2>{len(fb)} op(s) without a sharding rule ran replicated</h2><ul>")
        out += [f'<li class="mono">%{_e(f.get("name"))} ({_e(f.get("op"))}) {_e(f.get("source") or "")}</li>'
                for f in fb]
        out.append("</ul>")
    return "".join(out)


def render_html(data: dict) -> str:
    """One self-contained HTML page of a plan's JSON dict (``Plan.to_json()``)."""
    sh = data.get("sharding") or {}
    rows = sh.get("rows") or []
    units = collapse(rows)
    entries = group_runs(units)
    once = "; identical blocks listed once" if any(len(u["blocks"]) > 1 for u in units) else ""
    payload = {"categories": list(CATEGORIES), "budget": data.get("memory_budget"),
               "timeline": downsample(data.get("timeline"))}
    blob = json.dumps(payload, separators=(",", ":")).replace("<", "\\u003c")
    title = f'autopar plan: {(data.get("cluster") or {}).get("name") or sh.get("cluster", "")}'
    return "".join([
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>',
        f'<body><script>{_ONERROR}</script><main>{_header(data, sh)}{_meshes(data)}',
        '<section><h2>Memory per device over forward and backward</h2><div id="legend" class="legend"></div>',
        '<div id="timeline"></div></section>', _placement(data.get("offload")),
        f'<section><h2>Operators ({len(rows)} rows{once})</h2>'
        f'{_ops_table(entries)}</section>',
        f'<section><h2>Communication per resharding edge</h2>{_edges_table(data.get("edges") or [], units)}'
        "</section>",
        f"<section><h2>Totals</h2>{_totals(data, sh, rows)}</section></main>",
        f'<script type="application/json" id="plan-data">{blob}</script>',
        "<script>try {", _JS, "document.body.dataset.rendered = 'ok'; } catch (e) { document.body.dataset.errors ="
        " String(e && e.stack || e); document.body.dataset.rendered = 'error'; }</script></body></html>"])


def write_html(data: dict, path) -> None:
    Path(path).write_text(render_html(data), encoding="utf-8")


def find_chromium() -> str:
    """The headless browser used to check and screenshot the page (Debian's ``chromium``)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Chromium found on PATH: run `apt-get install -y chromium` (Debian) to render HTML reports")


def run_chromium(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Headless Chromium with a throwaway profile (``--no-sandbox``: CI runs as root)."""
    with tempfile.TemporaryDirectory(prefix="autopar-chromium-") as profile:
        cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "HOME": profile})


def screenshot(html_path, png_path, *, width: int = 1400, height: int = 2400, timeout: float = 60.0) -> None:
    """A PNG of the rendered page (for the README); raises if Chromium wrote nothing."""
    png = Path(png_path).resolve()
    png.unlink(missing_ok=True)
    proc = run_chromium([f"--screenshot={png}", f"--window-size={width},{height}",
                         Path(html_path).resolve().as_uri()], timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
