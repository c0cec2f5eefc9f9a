// The page's "inspect" view: the text read by the model in the browser (serve/js/inspect.js, the same figures as
// `python -m serve.inspect`), coloured by surprise or by a cell from the ranked list, each character's top 5
// guesses on hover or focus, and an interactive mode: the top next characters as buttons, a click appends one.
// Its state is in <body data-inspect>: running, done or error; the last result is globalThis.inspection.

import { codePoint } from './core.js';
import { guesses, inspect } from './inspect.js';

const $ = (id) => document.getElementById(id);
const SHOWN = 3; // cells per feature offered in the colour list

// A next-character button's label: words for the characters a button cannot show (the control pictures, such as
// ␠, are missing from many fonts and would show as a box)
export function nextLabel(ch) {
  return { '\n': '\\n', ' ': 'space', '\t': 'tab' }[ch] ?? ch;
}

export function setupInspect(getSampler) {
  let result = null; // inspect()'s result, with the characters appended in the interactive mode
  let cell = null; // the column of result.acts the text is coloured by, or null for surprise

  const fail = (text) => {
    $('inspect-message').textContent = text;
    $('inspect-message').hidden = false;
    document.body.dataset.inspect = 'error';
  };
  const colour = (t) => {
    if (cell === null) {
      const bits = result.positions[t].bits;
      return bits === null ? '' : `rgba(220, 40, 40, ${Math.min(bits / 8, 1).toFixed(3)})`;
    }
    const v = result.acts[t * result.cells + cell];
    return `rgba(${v >= 0 ? '220, 40, 40' : '40, 90, 220'}, ${Math.min(Math.abs(v), 1).toFixed(3)})`;
  };
  const span = (t) => {
    const s = Object.assign(document.createElement('span'), { textContent: result.positions[t].char });
    s.dataset.t = t;
    s.style.background = colour(t);
    return s;
  };
  const paint = () => $('inspect-text').querySelectorAll('span').forEach((s) => { s.style.background = colour(Number(s.dataset.t)); });
  const show = (t) => {
    const p = result.positions[t];
    const top = p.top === null ? 'the first character' : `${p.bits.toFixed(3)} bits; top 5: `
      + p.top.map(([ch, q]) => `${JSON.stringify(ch)} ${(100 * q).toFixed(1)}%`).join(', ');
    $('inspect-details').textContent = `#${t} ${JSON.stringify(p.char)}: ${top}`;
    $('inspect-details').dataset.t = t;
  };
  const offerNext = () => {
    const { top } = guesses(result.stepper.logits, null, getSampler().vocab);
    $('inspect-next').replaceChildren(...top.map(([ch, q]) => {
      const button = Object.assign(document.createElement('button'), { type: 'button', textContent: `${nextLabel(ch)} ${(100 * q).toFixed(0)}%` });
      button.dataset.char = ch;
      button.addEventListener('click', () => append(ch));
      return button;
    }));
  };
  const append = async (ch) => {
    const { vocab, index } = getSampler();
    const t = result.positions.length;
    result.positions.push({ char: ch, ...guesses(result.stepper.logits, index.get(ch), vocab) });
    await result.stepper.advance(index.get(ch));
    const acts = new Float32Array((t + 1) * result.cells);
    acts.set(result.acts);
    const LH = result.cells / 2;
    for (let j = 0; j < LH; j++) {
      acts[t * result.cells + j] = Math.tanh(result.stepper.c[j]);
      acts[t * result.cells + LH + j] = result.stepper.h[j];
    }
    result.acts = acts;
    $('inspect-text').append(span(t));
    show(t);
    offerNext();
  };
  const run = async (unknown = 'error') => {
    const sampler = getSampler();
    $('inspect-message').hidden = true;
    if (sampler === null) return fail('Load a model first.');
    const text = $('inspect-input').value;
    const missing = sampler.unknownCharacters(text);
    if (missing.length && unknown === 'error') {
      $('inspect-skip').hidden = false;
      return fail(`The text has characters this model does not know: ${missing.slice(0, 10).map((ch) => `'${ch}' (${codePoint(ch)})`).join(', ')}.`);
    }
    $('inspect-skip').hidden = true;
    document.body.dataset.inspect = 'running';
    try {
      result = await inspect(sampler, text, { unknown, onProgress: () => new Promise((r) => setTimeout(r, 0)) });
    } catch (e) {
      return fail(e.message);
    }
    globalThis.inspection = result;
    cell = null;
    const options = [new Option('surprise (bits)', '')];
    for (const [name, cells] of Object.entries(result.ranking)) {
      for (const c of cells.slice(0, SHOWN).filter((c) => c.r !== null)) {
        options.push(new Option(`${name}: layer ${c.layer} unit ${c.unit} (${c.kind}), r = ${c.r.toFixed(3)}`, String(c.j)));
      }
    }
    $('inspect-colour').replaceChildren(...options);
    $('inspect-bpc').textContent = `${result.bpc.toFixed(4)} bits per character over ${result.positions.length.toLocaleString('en-US')} characters`;
    $('inspect-text').replaceChildren(...result.positions.map((_, t) => span(t)));
    $('inspect-result').hidden = false;
    show(0);
    offerNext();
    document.body.dataset.inspect = 'done';
  };

  $('inspect-form').addEventListener('submit', (event) => { event.preventDefault(); run(); });
  $('inspect-skip').addEventListener('click', () => run('skip'));
  $('inspect-colour').addEventListener('change', (event) => { cell = event.target.value === '' ? null : Number(event.target.value); paint(); });
  $('inspect-text').addEventListener('mouseover', (event) => { if (event.target.dataset.t) show(Number(event.target.dataset.t)); });
  $('inspect-text').addEventListener('focus', () => show(Number($('inspect-details').dataset.t || 0)));
  $('inspect-text').addEventListener('keydown', (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step || result === null) return;
    event.preventDefault();
    show(Math.max(0, Math.min(result.positions.length - 1, Number($('inspect-details').dataset.t || 0) + step)));
  });
}
