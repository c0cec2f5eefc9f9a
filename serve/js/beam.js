// Beam search, as serve/beam.py does it: the `width` best continuations by the sum of their characters'
// log-probabilities (the softmax of the logits after logit_bias, untempered, in float64), the offers ordered
// by (score desc, token ids asc), an offer of the end character finishing its beam with its score.

/** log-softmax of one row (Float32Array of V) in float64, the exponentials summed left to right. */
export function logSoftmax(row) {
  let top = -Infinity;
  for (const x of row) if (x > top) top = x;
  let sum = 0;
  for (const x of row) sum += Math.exp(x - top);
  const logSum = Math.log(sum);
  return Float64Array.from(row, (x) => x - top - logSum);
}

function compareIds(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function rank(finished) {
  return [...finished].sort((a, b) => b.score - a.score || compareIds(a.ids, b.ids));
}

/** The `count` best finished beams, best first: [{ ids, score, finish }]. `step(tokens, parents)` advances the
 * kept beams (their states reordered by `parents`) by their new tokens and resolves to logits (B * V);
 * `logits` are the first row's after the prime. */
export async function beamSearch({ step, logits, vocabSize, length, width, count, automaton = null, bias = null }) {
  const V = vocabSize;
  let ids = [[]];
  let scores = [0];
  let states = [automaton ? automaton.start : 0];
  const finished = [];
  const endId = automaton ? automaton.endId : null;
  for (let position = 0; position < length; position++) {
    const offers = []; // [score, parent, token], in (parent, token) order
    for (let b = 0; b < ids.length; b++) {
      const row = logits.subarray(b * V, (b + 1) * V);
      const biased = bias ? Float32Array.from(row, (x, v) => x + bias[v]) : row;
      const logp = logSoftmax(biased);
      const allowed = automaton ? automaton.allowed(states[b]) : null;
      if (allowed && !allowed.some((bit) => bit)) finished.push({ ids: ids[b], score: scores[b], finish: 'stop' });
      for (let v = 0; v < V; v++) if (!allowed || allowed[v]) offers.push([scores[b] + logp[v], b, v]);
    }
    const kept = offers.map((offer, i) => [offer, i]).sort((a, b) => b[0][0] - a[0][0] || a[1] - b[1])
      .slice(0, width).map(([offer]) => offer);
    const next = [];
    for (const [score, b, v] of kept) {
      if (v === endId) finished.push({ ids: ids[b], score, finish: 'stop' });
      else next.push([score, b, v]);
    }
    next.sort((x, y) => x[1] - y[1] || x[2] - y[2]); // the new beams in the order of their ids
    if (!next.length) return rank(finished).slice(0, count);
    scores = next.map(([score]) => score);
    ids = next.map(([, b, v]) => [...ids[b], v]);
    if (automaton) states = next.map(([, b, v]) => automaton.advance(states[b], v));
    const best = rank(finished).slice(0, count);
    if (best.length === count && best[count - 1].score > Math.max(...scores)) return best;
    if (position + 1 < length) logits = await step(next.map(([, , v]) => v), next.map(([, b]) => b));
  }
  ids.forEach((beamIds, b) => finished.push({ ids: beamIds, score: scores[b], finish: 'length' }));
  return rank(finished).slice(0, count);
}
