// The generation loops of the sampler core: sampling (every sequence draws one character per step, masked by
// a constraint where there is one) and beam search, on one batch of sequences stepped together.

import { beamSearch } from './beam.js';
import { pick, uniform } from './pick.js';

/** A batch of `rows` sequences from the zero state: run(tokens) steps them, gather(parents) reorders them. */
function stepBatch(sampler, rows) {
const { ort, layers, hidden } = sampler;
  const shape = (n) => [layers, n, hidden];
  const zeros = (n) => new ort.Tensor('float32', new Float32Array(layers * n * hidden), shape(n));
  const self = { h: zeros(rows), c: zeros(rows), logits: null };
  self.run = async (tokens) => {
    const token = new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [tokens.length]);
    const out = await sampler.session.run({ token, h: self.h, c: self.c });
    [self.h, self.c, self.logits] = [out.h_out, out.c_out, out.logits.data];
    return self.logits;
  };
  self.gather = (parents) => {
    for (const name of ['h', 'c']) {
      const data = self[name].data;
      const n = data.length / (layers * hidden);
      const out = new Float32Array(layers * parents.length * hidden);
      for (let l = 0; l < layers; l++) {
        parents.forEach((b, i) => out.set(data.subarray((l * n + b) * hidden, (l * n + b + 1) * hidden), (l * parents.length + i) * hidden));
      }
      self[name] = new ort.Tensor('float32', out, shape(parents.length));
    }
  };
  return self;
}

/** Sampling: [{ text, finish, score: null }] for each of numSamples sequences. */
export async function sampleTexts(sampler, { ids, length, options, automaton, bias }) {
  const { topK = null, temperature = 1.0, topP = null, seed = null, numSamples: N = 1, onChar = null, signal = null } = options;
  const V = sampler.vocab.length;
  const seed64 = seed === null ? Math.floor(Math.random() * 2 ** 53) : seed;
  const batch = stepBatch(sampler, N);
  let logits;
  for (const id of ids) logits = await batch.run(new Array(N).fill(id));
  const texts = Array.from({ length: N }, () => []);
  const finishes = new Array(N).fill('length');
  const states = new Array(N).fill(automaton ? automaton.start : 0);
  const live = new Array(N).fill(true);
  const tokens = new Array(N).fill(0);
  for (let t = 0; t < length && !signal?.aborted && live.some((x) => x); t++) {
    const chars = [];
    for (let n = 0; n < N; n++) {
      const allowed = live[n] && automaton ? automaton.allowed(states[n]) : null;
      if (allowed && !allowed.some((bit) => bit)) live[n] = false;
      if (!live[n]) {
        finishes[n] = 'stop';
        chars.push('');
        continue;
      }
      let row = logits.subarray(n * V, (n + 1) * V);
      if (bias) row = Float32Array.from(row, (x, v) => x + bias[v]);
      const id = pick(row, topK, temperature, topP, uniform(seed64, n, t), allowed);
      if (automaton && id === automaton.endId) {
        [live[n], finishes[n]] = [false, 'stop'];
        chars.push('');
        continue;
      }
      if (automaton) states[n] = automaton.advance(states[n], id);
      tokens[n] = id;
      texts[n].push(sampler.vocab[id]);
      chars.push(sampler.vocab[id]);
    }
    if (!live.some((x) => x)) break;
    if (onChar) {
      const waiting = onChar(N === 1 ? chars[0] : chars);
      if (waiting) await waiting;
    }
    if (t + 1 < length) logits = await batch.run(tokens); // the last character's step would be thrown away
  }
  return texts.map((chars, n) => ({ text: chars.join(''), finish: finishes[n], score: null }));
}

/** Beam search: the numSamples best beams, [{ text, finish, score }]. */
export async function searchBeams(sampler, { ids, length, options, automaton, bias }) {
  const batch = stepBatch(sampler, 1);
  let logits;
  for (const id of ids) logits = await batch.run([id]);
  const step = (tokens, parents) => {
    batch.gather(parents);
    return batch.run(tokens);
  };
  const found = await beamSearch({ step, logits, vocabSize: sampler.vocab.length, length, width: options.beamWidth,
    count: options.numSamples ?? 1, automaton, bias });
  const results = found.map((beam) => ({ text: beam.ids.map((id) => sampler.vocab[id]).join(''), finish: beam.finish, score: beam.score }));
  return results;
}
