// What the model learned, in any JavaScript runtime: each character's surprise and the model's top 5 guesses for
// it, the cells that track features of the text (Pearson's r), and a Stepper for the page's interactive mode.
// serve/inspect/ (Python) computes the same figures: the surprise in float64 by log-sum-exp, the top 5 ordered by
// (logit desc, id asc), the features by the rules of serve/inspect/features.py.

export const TOP = 5;
export const FEATURES = ['inside double quotes', 'inside single quotes', 'bracket depth', 'position in line',
  'indentation', 'position in word', 'inside comment'];

const wordChar = (ch) => /^[\p{L}\p{N}_]$/u.test(ch);

/** The built-in features of an array of characters: { name: Float64Array(n) }, as serve/inspect/features.py. */
export function features(chars) {
  const n = chars.length;
  const out = Object.fromEntries(FEATURES.map((name) => [name, new Float64Array(n)]));
  let double = false, single = false, comment = false, depth = 0, word = 0, lineStart = 0;
  for (let t = 0; t < n; t++) {
    const ch = chars[t];
    const apostrophe = ch === "'" && t > 0 && t + 1 < n && wordChar(chars[t - 1]) && wordChar(chars[t + 1]);
    if (ch === '"') double = !double;
    else if (ch === "'" && !apostrophe) single = !single;
    if ('([{'.includes(ch)) depth++;
    else if (')]}'.includes(ch)) depth = Math.max(depth - 1, 0);
    comment = comment || ch === '#';
    if (ch === '\n') single = comment = false;
    word = wordChar(ch) || apostrophe ? word + 1 : 0;
    out['inside double quotes'][t] = double;
    out['inside single quotes'][t] = single;
    out['bracket depth'][t] = depth;
    out['position in line'][t] = ch === '\n' ? 0 : t - lineStart + 1;
    out['position in word'][t] = word;
    out['inside comment'][t] = comment;
    if (ch === '\n') lineStart = t + 1;
  }
  let start = 0; // indentation: the spaces and tabs that start each line (the newline belongs to its line)
  for (let t = 0; t <= n; t++) {
    if (t === n || chars[t] === '\n') {
      let indent = 0;
      while (start + indent < t && (chars[start + indent] === ' ' || chars[start + indent] === '\t')) indent++;
      out.indentation.fill(indent, start, Math.min(t + 1, n));
      start = t + 1;
    }
  }
  return out;
}

/** Surprise (bits) of `target` and the top 5 [char, probability] under one step's logits (a Float32Array). */
export function guesses(logits, target, vocab) {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  const logZ = max + Math.log(sum);
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b).slice(0, TOP);
  const top = order.map((id) => [vocab[id], Math.exp(logits[id] - logZ)]);
  return { bits: target === null ? null : (logZ - logits[target]) / Math.LN2, top };
}

/** Pearson's r of each column of `acts` (n rows of C, a Float32Array) with `values` (Float64Array(n)); NaN where
 * either is constant. Two passes over the rows: the page's texts are short. */
function pearson(acts, C, values) {
  const n = values.length;
  const meanF = values.reduce((a, b) => a + b, 0) / n;
  const meanA = new Float64Array(C);
  for (let t = 0; t < n; t++) for (let j = 0; j < C; j++) meanA[j] += acts[t * C + j] / n;
  const cov = new Float64Array(C), varA = new Float64Array(C);
  let varF = 0;
  for (let t = 0; t < n; t++) {
    const f = values[t] - meanF;
    varF += f * f;
    for (let j = 0; j < C; j++) {
      const a = acts[t * C + j] - meanA[j];
      cov[j] += a * f;
      varA[j] += a * a;
    }
  }
  return Array.from(cov, (c, j) => (varF === 0 || varA[j] === 0 ? NaN : Math.max(-1, Math.min(1, c / Math.sqrt(varF * varA[j])))));
}

/** Read `text` through the sampler's model from the zero state. Returns { chars, positions: [{char, bits, top}],
 * bpc, acts (Float32Array n x C: tanh(c) of every layer then h, after each character), ranking: { feature:
 * [{layer, unit, kind, r, j}] best |r| first, j the column of acts }, stepper (the state after the text) }. onProgress(t) may return a promise (a page repaints). */
export async function inspect(sampler, text, { unknown = 'error', onProgress = null } = {}) {
  const ids = sampler.encode(text, unknown);
  if (ids.length < 2) throw new Error('the text needs at least 2 characters the model knows');
  const { layers, hidden, vocab } = sampler;
  const LH = layers * hidden, C = 2 * LH, n = ids.length;
  const stepper = new Stepper(sampler);
  const acts = new Float32Array(n * C);
  const positions = [];
  let total = 0;
  for (let t = 0; t < n; t++) {
    const { bits, top } = t === 0 ? { bits: null, top: null } : guesses(stepper.logits, ids[t], vocab);
    positions.push({ char: vocab[ids[t]], bits, top });
    if (t > 0) total += bits;
    await stepper.advance(ids[t]);
    for (let j = 0; j < LH; j++) {
      acts[t * C + j] = Math.tanh(stepper.c[j]);
      acts[t * C + LH + j] = stepper.h[j];
    }
    if (onProgress && t % 256 === 255) await onProgress(t + 1);
  }
  const chars = positions.map((p) => p.char);
  const ranking = {};
  for (const [name, values] of Object.entries(features(chars))) {
    const r = pearson(acts, C, values);
    const cells = r.map((value, j) => ({ kind: j < LH ? 'c' : 'h', layer: Math.floor((j % LH) / hidden), unit: j % hidden,
      r: Number.isNaN(value) ? null : value, j }));
    cells.sort((a, b) => (b.r === null ? -1 : Math.abs(b.r)) - (a.r === null ? -1 : Math.abs(a.r)) || a.j - b.j);
    ranking[name] = cells;
  }
  return { chars, positions, bpc: total / (n - 1), acts, cells: C, ranking, stepper };
}

/** One sequence advanced one character at a time; after each, its logits (the guesses for the next character),
 * h and c (Float32Arrays of L x H). */
export class Stepper {
  constructor(sampler) {
    const { ort, layers, hidden } = sampler;
    this.sampler = sampler;
    this.tokens = new BigInt64Array(1);
    this.token = new ort.Tensor('int64', this.tokens, [1]);
    this.state = { h: new ort.Tensor('float32', new Float32Array(layers * hidden), [layers, 1, hidden]) };
    this.state.c = new ort.Tensor('float32', new Float32Array(layers * hidden), [layers, 1, hidden]);
    this.logits = null;
    this.h = this.state.h.data;
    this.c = this.state.c.data;
  }

  async advance(id) {
    this.tokens[0] = BigInt(id);
    const out = await this.sampler.session.run({ token: this.token, h: this.state.h, c: this.state.c });
    this.state = { h: out.h_out, c: out.c_out };
    this.logits = out.logits.data;
    this.h = out.h_out.data;
    this.c = out.c_out.data;
  }
}
