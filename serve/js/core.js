// charlstm sampler core: everything between a charlstm .onnx's bytes and generated text, for any JavaScript
// runtime. No Node-only API (no fs, Buffer or require): the runtime's loader hands over the file's bytes and
// its onnxruntime module (onnxruntime-node in node.js, onnxruntime-web in the browser page).
//
//   import * as ort from 'onnxruntime-web';  // or onnxruntime-node
//   const sampler = await Sampler.create(ort, bytes, { sessionOptions: { executionProviders: ['wasm'] } });
//   const text = await sampler.generate('El libro empieza años', 1000, { topK: 5, seed: 0 });
//
// The generator and the pick are serve/sampler.py's, step for step: the same seed gives the same text in
// Python, Node.js and the browser.

import { compileConstraint } from './automaton.js';
import { sampleTexts, searchBeams } from './generate.js';
import { SamplerError } from './errors.js';
import { biasVector, checkOptions } from './options.js';

export { SamplerError } from './errors.js';
export { compileConstraint, PatternError } from './automaton.js';

export const FORMAT = 'charlstm-cell/1';
const FORMS = ['NFC', 'NFKC', 'none'];

// ---- the metadata: ModelProto field 14 is metadata_props, a repeated {key = 1, value = 2} of strings.
// onnxruntime-web exposes no custom metadata, so the protobuf is read here, straight from the bytes.

function readVarint(bytes, pos) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (pos >= bytes.length) throw new SamplerError('truncated protobuf');
    const byte = bytes[pos++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, pos];
    scale *= 128;
    if (scale > 2 ** 63) throw new SamplerError('malformed varint');
  }
}

// The fields of one protobuf message in bytes[start, end): [field number, start, end] for length-delimited
// fields, [field number, null, null] for the others (skipped).
function* fields(bytes, start = 0, end = bytes.length) {
  let pos = start;
  while (pos < end) {
    let tag;
    [tag, pos] = readVarint(bytes, pos);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (field === 0) throw new SamplerError('field number 0');
    if (wire === 0) {
      [, pos] = readVarint(bytes, pos);
      yield [field, null, null];
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
      yield [field, null, null];
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(bytes, pos);
      if (pos + length > end) throw new SamplerError('truncated protobuf');
      yield [field, pos, pos + length];
      pos += length;
    } else {
      throw new SamplerError(`protobuf wire type ${wire}`);
    }
  }
  if (pos > end) throw new SamplerError('truncated protobuf');
}

/** The model's metadata_props as an object of strings, read from the .onnx's bytes (a Uint8Array). */
export function readMetadata(bytes) {
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const metadata = {};
  for (const [field, start, end] of fields(bytes)) {
    if (field !== 14 || start === null) continue;
    let key = null;
    let value = '';
    for (const [inner, s, e] of fields(bytes, start, end)) {
      if (inner === 1 && s !== null) key = utf8.decode(bytes.subarray(s, e));
      if (inner === 2 && s !== null) value = utf8.decode(bytes.subarray(s, e));
    }
    if (key !== null) metadata[key] = value;
  }
  return metadata;
}

/** What a charlstm .onnx says about itself: vocab, config, normalize, layers, hidden, embed, step, valLoss.
 * `name` names the file in messages. */
export function describeModel(bytes, name = 'the model') {
  let metadata;
  try {
    metadata = readMetadata(bytes);
  } catch (e) {
    throw new SamplerError(`${name} is not an ONNX model (${e.message})`);
  }
  if (metadata.format !== FORMAT || !metadata.vocab) {
    throw new SamplerError(`${name} is not a charlstm model: it has no ${FORMAT} metadata (export one with export.onnx)`);
  }
  let vocab;
  let config;
  try {
    vocab = JSON.parse(metadata.vocab);
    config = JSON.parse(metadata.config || '{}');
  } catch (e) {
    throw new SamplerError(`${name}: its charlstm metadata is not valid JSON (${e.message})`);
  }
  const model = config.model || {};
  if (!Array.isArray(vocab) || vocab.length === 0 || !Number.isInteger(model.layers) || !Number.isInteger(model.hidden)) {
    throw new SamplerError(`${name}: its charlstm metadata lacks the vocabulary or the model's layers and hidden size`);
  }
  const normalize = metadata.normalize || 'none'; // a model exported before the form was recorded: none
  if (!FORMS.includes(normalize)) throw new SamplerError(`${name}: unknown Unicode form '${normalize}' in its metadata`);
  return {
    vocab,
    config,
    normalize,
    layers: model.layers,
    hidden: model.hidden,
    embed: model.embed ?? null,
    step: metadata.step ? Number(metadata.step) : null,
    valLoss: metadata.val_loss ? Number(metadata.val_loss) : null,
  };
}

export { pick, uniform } from './pick.js';

export function codePoint(ch) {
  return `U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
}

// ---- the sampler

export class Sampler {
  /** A sampler for the .onnx in `bytes` (a Uint8Array) on `ort` (onnxruntime-node or onnxruntime-web).
   * `name` names the file in messages; `sessionOptions` go to ort.InferenceSession.create; `info` is
   * describeModel's object when the caller has read it already. */
  static async create(ort, bytes, { name = 'the model', sessionOptions = {}, info = null } = {}) {
    info ??= describeModel(bytes, name);
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, { logSeverityLevel: 3, ...sessionOptions });
    } catch (e) {
      throw new SamplerError(`${name}: onnxruntime could not load it (${String(e?.message ?? e).split('\n')[0]})`);
    }
    return new Sampler(ort, session, info);
  }

  constructor(ort, session, info) {
    this.ort = ort;
    this.session = session;
    this.info = info; // describeModel's object
    this.vocab = info.vocab;
    this.config = info.config;
    this.normalize = info.normalize; // the Unicode form of the corpus: a prime is put into it before encoding
    this.layers = info.layers;
    this.hidden = info.hidden;
    this.index = new Map(this.vocab.map((ch, i) => [ch, i]));
  }

  /** The prime as the model reads it: normalized to the corpus's form, split into code points (an emoji is
   * one character, as in Python). */
  characters(text) {
    return Array.from(this.normalize === 'none' ? text : text.normalize(this.normalize));
  }

  /** The distinct characters of `text` the model does not know, sorted. */
  unknownCharacters(text) {
    return [...new Set(this.characters(text).filter((ch) => !this.index.has(ch)))].sort();
  }

  /** Token ids of `text`; characters the model lacks are an error (`unknown` 'error') or dropped ('skip'). */
  encode(text, unknown = 'error') {
    const missing = this.unknownCharacters(text);
    if (missing.length && unknown === 'error') {
      const shown = missing.slice(0, 10).map((ch) => `'${ch}' (${codePoint(ch)})`);
      throw new SamplerError(`the prime has characters the model does not know: ${shown.join(', ')} (use --unknown skip to drop them)`);
    }
    return this.characters(text).filter((ch) => this.index.has(ch)).map((ch) => this.index.get(ch));
  }

  checkOptions(length, options = {}) {
    checkOptions(length, options, this.vocab.length);
  }

  /** The options' regex or choices compiled over the vocabulary (null without one); SamplerError if bad. */
  constraint({ regex = null, choices = null, end = null } = {}) {
    if (regex === null && choices === null) return null;
    return compileConstraint(this.vocab, { regex, choices, end: end ?? '\n', normalize: this.normalize });
  }

  /** Generate up to `length` characters after `prime` for numSamples sequences advanced together, one session
   * run per character. Returns a string, or an array of numSamples strings when numSamples > 1 (under beam
   * search the numSamples best beams). onChar(chars) is called after each position (a string, or an array of one
   * per sample, '' for one that has ended); when it returns a promise, that is awaited (a page uses it to
   * repaint). An aborted `signal` ends the text where it is. */
  async generate(prime, length, options = {}) {
    const texts = (await this.complete(prime, length, options)).map((g) => g.text);
    return (options.numSamples ?? 1) === 1 ? texts[0] : texts;
  }

  /** generate's texts as [{ text, finish ('stop' or 'length'), score (beam search) }]. */
  async complete(prime, length, options = {}) {
    this.checkOptions(length, options);
    let ids = this.encode(prime, options.unknown ?? 'error');
    if (ids.length === 0) ids = [this.index.has('\n') ? this.index.get('\n') : 0];
    const plan = { ids, length, options, automaton: this.constraint(options), bias: biasVector(options.logitBias ?? null, this.vocab.length) };
    return options.beamWidth ? searchBeams(this, plan) : sampleTexts(this, plan);
  }
}
