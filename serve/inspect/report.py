"""The report: one HTML file that fetches nothing (it opens from disk). The figures travel inside it as JSON; a
small inline script colours the text by surprise or by a chosen cell and shows, for the character under the
mouse or the keyboard's cursor, the model's top 5 guesses for it. The saturation plot is drawn here, as SVG."""

from __future__ import annotations

import html
import json

GATE_COLOURS = {"input": "#2f6fde", "forget": "#c43d3d", "output": "#2e9b57"}
SHOWN_ROWS = 8  # cells per feature in the table

STYLE = """
body { font-family: system-ui, sans-serif; color: #1d232a; background: #f7f7f5; max-width: 70rem; margin: 1.5rem auto;
  padding: 0 1rem; }
h1 { font-size: 1.5rem; margin: 0 0 .3rem; } h2 { font-size: 1.15rem; margin: 1.4rem 0 .4rem; }
.muted { color: #56606b; }
#text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .9rem; line-height: 1.45;
  background: #fff; border: 1px solid #dde2e7; border-radius: 6px; padding: .8rem; max-height: 28rem; overflow: auto; }
#text span.cur { outline: 2px solid #1d232a; }
#details { font-family: ui-monospace, monospace; background: #fff; border: 1px solid #dde2e7; border-radius: 6px;
  padding: .5rem .8rem; min-height: 3.2rem; margin-top: .5rem; }
table { border-collapse: collapse; font-size: .9rem; } td, th { padding: .15rem .6rem; text-align: left; }
th { font-weight: 500; color: #56606b; } tr.feature td { border-top: 1px solid #dde2e7; }
button.cell { font: inherit; font-size: .85rem; border: 1px solid #9aa5b1; border-radius: 4px; background: #fff;
  cursor: pointer; padding: 0 .4rem; } button.cell.on { background: #2f6fde; color: #fff; border-color: #2f6fde; }
.plots { display: flex; gap: 1.5rem; flex-wrap: wrap; }
"""

SCRIPT = """
const F = JSON.parse(document.getElementById('figures').textContent);
const P = F.positions;
const text = document.getElementById('text');
const details = document.getElementById('details');
const legend = document.getElementById('legend');
let cell = null, cur = 0;
const spans = P.map((p, t) => {
  const s = document.createElement('span');
  s.textContent = p.char;
  s.dataset.t = t;
  return s;
});
text.append(...spans);
function surpriseColour(bits) {  // white at 0 bits, red at 8 and above
  if (bits === null) return '';
  const a = Math.min(bits / 8, 1);
  return `rgba(220, 40, 40, ${a.toFixed(3)})`;
}
function cellColour(v) {  // blue for negative, red for positive activations, as in Karpathy et al.
  const a = Math.min(Math.abs(v), 1).toFixed(3);
  return v >= 0 ? `rgba(220, 40, 40, ${a})` : `rgba(40, 90, 220, ${a})`;
}
function paint() {
  const trace = cell === null ? null : F.traces[cell];
  spans.forEach((s, t) => {
    s.style.background = trace ? cellColour(trace[t] / 127) : surpriseColour(P[t].bits);
  });
  legend.textContent = cell === null
    ? 'coloured by surprise: white 0 bits, full red 8 bits or more'
    : `coloured by cell ${cell.replace(/^(\\w) (\\d+) (\\d+)$/, 'layer $2 unit $3 ($1)')}: blue -1, white 0, red +1`;
  document.querySelectorAll('button.cell').forEach((b) => b.classList.toggle('on', b.dataset.cell === cell));
}
function show(t) {
  spans[cur].classList.remove('cur');
  cur = t;
  spans[t].classList.add('cur');
  const p = P[t];
  const ch = JSON.stringify(p.char);
  let line = `#${t} ${ch}`;
  if (p.bits === null) line += ': the first character (nothing predicts it)';
  else line += `: ${p.bits.toFixed(3)} bits; the model's top 5: `
    + p.top.map(([c, q]) => `${JSON.stringify(c)} ${(100 * q).toFixed(1)}%`).join(', ');
  if (cell !== null) line += `; cell ${(F.traces[cell][t] / 127).toFixed(2)}`;
  details.textContent = line;
}
text.addEventListener('mouseover', (e) => { if (e.target.dataset.t) show(Number(e.target.dataset.t)); });
text.addEventListener('focus', () => show(cur));
text.addEventListener('keydown', (e) => {
  const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
  if (!step) return;
  e.preventDefault();
  show(Math.max(0, Math.min(P.length - 1, cur + step)));
  spans[cur].scrollIntoView({ block: 'nearest' });
});
document.getElementById('by-surprise').addEventListener('click', () => { cell = null; paint(); });
document.querySelectorAll('button.cell').forEach((b) => b.addEventListener('click', () => {
  cell = b.dataset.cell; paint(); show(cur);
}));
paint();
show(0);
"""


def feature_table(figures: dict) -> str:
    rows = ["<tr><th>feature</th><th>cell (click: colour the text by it)</th><th>r</th></tr>"]
    for name, cells in figures["features"].items():
        shown = cells[:1] if cells[0]["r"] is None else [c for c in cells[:SHOWN_ROWS] if c["r"] is not None]
        for k, cell in enumerate(shown):
            first = f"<td rowspan='{len(shown)}'>{html.escape(name)}</td>" if k == 0 else ""
            key = f"{cell['kind']} {cell['layer']} {cell['unit']}"
            label = f"layer {cell['layer']} unit {cell['unit']} ({cell['kind']})"
            button = f"<button class='cell' data-cell='{key}'>{label}</button>" if key in figures["traces"] else label
            r = "null (the feature is constant here)" if cell["r"] is None else f"{cell['r']:+.3f}"
            label = "(none)" if cell["r"] is None else button
            rows.append(f"<tr class='{'feature' if k == 0 else ''}'>{first}<td>{label}</td><td>{r}</td></tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def saturation_svg(layer: dict, index: int, size: int = 260) -> str:
    """One layer: each unit's gates as points, x = fraction of steps below 0.1, y = above 0.9."""
    pad = 34
    span = size - 2 * pad
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' role='img' "
        f"aria-label='gate saturation, layer {index}'>",
        f"<rect x='{pad}' y='{pad}' width='{span}' height='{span}' fill='#fff' stroke='#9aa5b1'/>",
        f"<line x1='{pad}' y1='{pad}' x2='{pad + span}' y2='{pad + span}' stroke='#dde2e7'/>",
        f"<text x='{size / 2}' y='{pad - 10}' text-anchor='middle' font-size='13'>layer {index}</text>",
        f"<text x='{size / 2}' y='{size - 6}' text-anchor='middle' font-size='11'>fraction left-saturated (&lt; 0.1)"
        "</text>",
        f"<text x='10' y='{size / 2}' font-size='11' text-anchor='middle' transform='rotate(-90 10 {size / 2})'>"
        "fraction right-saturated (&gt; 0.9)</text>",
    ]
    for gate, colour in GATE_COLOURS.items():
        for low, high in zip(layer[gate]["low"], layer[gate]["high"]):
            x, y = pad + low * span, pad + (1 - high) * span
            parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='{colour}' fill-opacity='0.6'/>")
    return "".join(parts) + "</svg>"


def saturation_section(saturation: dict) -> str:
    if saturation["layers"] is None:
        return f"<p class='muted'>Left out: {html.escape(saturation['reason'])}.</p>"
    check = saturation["check"]
    keys = " ".join(f"<span style='color:{c}'>&#9679; {g}</span>" for g, c in GATE_COLOURS.items())
    plots = "".join(saturation_svg(layer, i) for i, layer in enumerate(saturation["layers"]))
    return (
        f"<p>{keys} gates, one point per unit (Karpathy et al. 2015, fig. 3). Recomputed in numpy from the model's "
        f"{check['precision']} weights; at each of {check['steps']:,} steps h and c matched onnxruntime's within "
        f"{check['max_diff']:.2g} (tolerance {check['tolerance']:g}).</p><div class='plots'>{plots}</div>"
    )


def render(figures: dict, model_name: str, text_name: str) -> str:
    data = json.dumps(figures, ensure_ascii=False).replace("</", "<\\/")
    cut = figures["text_chars"] > figures["chars"]
    read = f"the first {figures['chars']:,} of {figures['text_chars']:,}" if cut else f"{figures['chars']:,}"
    m = figures["model"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>charlstm inspect: {html.escape(text_name)}</title>
<style>{STYLE}</style></head><body>
<h1>What {html.escape(model_name)} learned</h1>
<p class="muted">{m["layers"]} layers &times; {m["hidden"]} cells, {m["vocab"]} characters; {read} characters of
{html.escape(text_name)} read from the zero state: <b>{figures["bpc"]:.4f} bits per character</b>.</p>
<h2>The text</h2>
<p><button id="by-surprise" class="cell">colour by surprise</button> <span id="legend" class="muted"></span></p>
<div id="text" tabindex="0" aria-label="the text; arrow keys move between characters"></div>
<div id="details" aria-live="polite"></div>
<h2>Cells that track features of the text</h2>
<p class="muted">Pearson's r over the characters between a cell's activation after reading a character (c: tanh of
the cell state, h: the hidden state) and the feature's value there; best |r| first.</p>
{feature_table(figures)}
<h2>Gate saturation</h2>
{saturation_section(figures["saturation"])}
<script type="application/json" id="figures">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""
