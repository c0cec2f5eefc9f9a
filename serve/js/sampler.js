'use strict';
// charlstm sampler for Node.js on onnxruntime-node. Needs only the .onnx: the vocabulary and config are
// read from its metadata_props (parsed straight from the protobuf: onnxruntime-node does not expose them).
//
//   const { Sampler } = require('./sampler');
//   const sampler = await Sampler.create('model.onnx');
//   const text = await sampler.generate('El libro empieza años', 1000, { topK: 5, seed: 0 });

const fs = require('fs');
const ort = require('onnxruntime-node');

const FORMAT = 'charlstm-cell/1';

class SamplerError extends Error {}

// ---- the metadata: ModelProto field 14 is metadata_props, a repeated {key = 1, value = 2} of strings

function readVarint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= buf.length) throw new SamplerError('truncated protobuf');
    const byte = buf[pos++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
  }
}

function* fields(buf, start = 0, end = buf.length) {
  let pos = start;
  while (pos < end) {
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (wire === 0) {
      [, pos] = readVarint(buf, pos);
      yield [field, null, null];
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      if (pos + length > end) throw new SamplerError('truncated protobuf');
      yield [field, pos, pos + length];
      pos += length;
    } else {
      throw new SamplerError(`not an ONNX model (protobuf wire type ${wire})`);
    }
  }
}

function readMetadata(path) {
  const buf = fs.readFileSync(path);
  const metadata = {};
  for (const [field, start, end] of fields(buf)) {
    if (field !== 14 || start === null) continue;
    let key = null;
    let value = '';
    for (const [inner, s, e] of fields(buf, start, end)) {
      if (inner === 1 && s !== null) key = buf.toString('utf8', s, e);
      if (inner === 2 && s !== null) value = buf.toString('utf8', s, e);
    }
    if (key !== null) metadata[key] = value;
  }
  return metadata;
}

// ---- the generator and the pick, the same as serve/sampler.py's step for step: the same seed gives the
// same text in Python and here

const MASK64 = (1n << 64n) - 1n;

// The draw of `sample` at `position` for `seed`: SplitMix64's finalizer of a key made of the three, as a float64
// in [0, 1) (53 bits). Counter-based: nothing is carried from one draw to the next.
function uniform(seed, sample, position) {
  let z = (BigInt.asUintN(64, BigInt(seed)) ^ ((BigInt(sample) * 0x9E3779B97F4A7C15n) & MASK64)
    ^ ((BigInt(position) * 0xBF58476D1CE4E5B9n) & MASK64)) & MASK64;
  z = (z + 0x9E3779B97F4A7C15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & MASK64;
  z ^= z >> 31n;
  return Number(z >> 11n) * 2 ** -53;
}

// logits: Float32Array(V) of one sample; draw: a uniform in [0, 1). Greedy (argmax, the lowest id among ties),
// or the inverse CDF of the tempered softmax over the candidates sorted by (logit desc, id asc), restricted
// to the top k and then to the shortest prefix holding top p of the mass, in float64.
function pick(logits, topK, temperature, topP, draw) {
  const V = logits.length;
  if (topK === 1 || temperature === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  if (topK) order = order.slice(0, topK);
  const first = logits[order[0]];
  const cumulative = [];
  let sum = 0;
  for (const id of order) {
    sum += Math.exp((logits[id] - first) / temperature);
    cumulative.push(sum);
  }
  let count = order.length;
  if (topP !== null && topP < 1) {
    count = 0;
    while (count < order.length && (count === 0 ? 0 : cumulative[count - 1]) < topP * sum) count++;
  }
  const target = draw * cumulative[count - 1];
  let index = 0;
  while (index < count - 1 && cumulative[index] <= target) index++;
  return order[index];
}

class Sampler {
  static async create(path, { device = 'cpu', threads } = {}) {
    if (!fs.existsSync(path)) throw new SamplerError(`model '${path}' does not exist`);
    let metadata;
    try {
      metadata = readMetadata(path);
    } catch (e) {
      throw new SamplerError(`${path}: not a valid ONNX model (${e.message})`);
    }
    if (metadata.format !== FORMAT || !metadata.vocab) {
      throw new SamplerError(`${path}: not a charlstm model (no ${FORMAT} metadata; export it with export.onnx)`);
    }
    const options = { executionProviders: device === 'cuda' ? ['cuda'] : ['cpu'], logSeverityLevel: 3 };
    if (threads) options.intraOpNumThreads = threads;
    let session;
    try {
      session = await ort.InferenceSession.create(path, options);
    } catch (e) {
      throw new SamplerError(`${path}: onnxruntime could not load it (${String(e.message).split('\n')[0]})`);
    }
    const form = metadata.normalize || 'none'; // a model exported before the form was recorded: none
    if (!['NFC', 'NFKC', 'none'].includes(form)) throw new SamplerError(`${path}: unknown Unicode form '${form}' in its metadata`);
    return new Sampler(session, JSON.parse(metadata.vocab), JSON.parse(metadata.config || '{}'), form);
  }

  constructor(session, vocab, config, normalize = 'none') {
    this.session = session;
    this.vocab = vocab;
    this.config = config;
    this.normalize = normalize; // the Unicode form of the corpus: a prime is put into it before encoding
    this.index = new Map(vocab.map((ch, i) => [ch, i]));
    const h = session.inputMetadata.find((m) => m.name === 'h');
    this.layers = Number(h.shape[0]);
    this.hidden = Number(h.shape[2]);
  }

  encode(text, unknown = 'error') {
    if (this.normalize !== 'none') text = text.normalize(this.normalize);
    const chars = Array.from(text); // code points: an emoji is one character, as in Python
    const missing = [...new Set(chars.filter((ch) => !this.index.has(ch)))].sort();
    if (missing.length && unknown === 'error') {
      const shown = missing.slice(0, 10).map((ch) => `'${ch}' (U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')})`);
      throw new SamplerError(`the prime has characters the model does not know: ${shown.join(', ')} (use --unknown skip to drop them)`);
    }
    return chars.filter((ch) => this.index.has(ch)).map((ch) => this.index.get(ch));
  }

  // Generate `length` characters after `prime` for numSamples sequences advanced together.
  // Returns a string, or an array of numSamples strings when numSamples > 1.
  async generate(prime, length, { topK = null, temperature = 1.0, topP = null, seed = null,
    numSamples = 1, unknown = 'error', onChar = null } = {}) {
    const V = this.vocab.length;
    if (!Number.isInteger(length) || length < 0) throw new SamplerError(`length must be an integer >= 0, got ${length}`);
    if (topK !== null && !(Number.isInteger(topK) && topK >= 1 && topK <= V)) {
      throw new SamplerError(`top_k must be between 1 and the vocabulary size ${V}, got ${topK}`);
    }
    if (!(Number.isFinite(temperature) && temperature >= 0)) throw new SamplerError(`temperature must be >= 0, got ${temperature}`);
    if (topP !== null && !(topP > 0 && topP <= 1)) throw new SamplerError(`top_p must be in (0, 1], got ${topP}`);
    if (!Number.isInteger(numSamples) || numSamples < 1) throw new SamplerError(`num_samples must be an integer >= 1, got ${numSamples}`);
    let ids = this.encode(prime, unknown);
    if (ids.length === 0) ids = [this.index.has('\n') ? this.index.get('\n') : 0];
    const seed64 = seed === null ? Math.floor(Math.random() * 2 ** 53) : seed;
    const N = numSamples;
    const shape = [this.layers, N, this.hidden];
    let h = new ort.Tensor('float32', new Float32Array(this.layers * N * this.hidden), shape);
    let c = new ort.Tensor('float32', new Float32Array(this.layers * N * this.hidden), shape);
    const tokens = new BigInt64Array(N);
    const token = new ort.Tensor('int64', tokens, [N]);
    let logits = null;
    const step = async () => {
      const out = await this.session.run({ token, h, c });
      h = out.h_out;
      c = out.c_out;
      logits = out.logits.data;
    };
    for (const id of ids) {
      tokens.fill(BigInt(id));
      await step();
    }
    const texts = Array.from({ length: N }, () => []);
    for (let t = 0; t < length; t++) {
      for (let n = 0; n < N; n++) {
        const id = pick(logits.subarray(n * V, (n + 1) * V), topK, temperature, topP, uniform(seed64, n, t));
        tokens[n] = BigInt(id);
        texts[n].push(this.vocab[id]);
      }
      if (onChar) onChar(N === 1 ? texts[0][t] : texts.map((chars) => chars[t]));
      await step();
    }
    const joined = texts.map((chars) => chars.join(''));
    return N === 1 ? joined[0] : joined;
  }
}

module.exports = { Sampler, SamplerError, readMetadata, uniform, pick };
