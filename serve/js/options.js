// The options of a generation, checked as serve/generation.py checks them: the same names (in camelCase) and the
// same one-line messages.

import { SamplerError } from './errors.js';

export const MAX_BEAM = 1024;
export const MAX_BIAS = 100;

export function checkOptions(length, options, V) {
  const { topK = null, temperature = 1.0, topP = null, seed = null, numSamples = 1, unknown = 'error',
    regex = null, choices = null, end = null, beamWidth = null, logitBias = null } = options;
  if (!Number.isInteger(length) || length < 0) throw new SamplerError(`length must be an integer >= 0, got ${length}`);
  if (topK !== null && !(Number.isInteger(topK) && topK >= 1 && topK <= V)) {
    throw new SamplerError(`top_k must be between 1 and the vocabulary size ${V}, got ${topK}`);
  }
  if (!(Number.isFinite(temperature) && temperature >= 0)) throw new SamplerError(`temperature must be >= 0, got ${temperature}`);
  if (topP !== null && !(topP > 0 && topP <= 1)) throw new SamplerError(`top_p must be in (0, 1], got ${topP}`);
  if (seed !== null && !Number.isSafeInteger(seed)) throw new SamplerError(`seed must be an integer, got ${seed}`);
  if (!Number.isInteger(numSamples) || numSamples < 1) throw new SamplerError(`num_samples must be an integer >= 1, got ${numSamples}`);
  if (!['error', 'skip'].includes(unknown)) throw new SamplerError(`unknown must be error or skip, got ${unknown}`);
  if (end !== null && regex === null && choices === null) {
    throw new SamplerError('end applies to a constraint: give a regex or choices with it');
  }
  if (beamWidth !== null) {
    if (!Number.isInteger(beamWidth) || beamWidth < 1 || beamWidth > MAX_BEAM) {
      throw new SamplerError(`beam_width must be an integer between 1 and ${MAX_BEAM}, got ${beamWidth}`);
    }
    const given = [['top_k', topK, null], ['top_p', topP, null], ['temperature', temperature, 1.0], ['seed', seed, null]]
      .filter(([, value, neutral]) => value !== neutral).map(([name]) => name);
    if (given.length) {
      throw new SamplerError(`beam search draws nothing and scores by untempered log-probabilities: leave out ${given.join(', ')}`);
    }
    if (numSamples > beamWidth) throw new SamplerError(`num_samples (${numSamples}) must be at most beam_width (${beamWidth})`);
  }
  biasVector(logitBias, V);
}

/** logitBias ({token id: bias}) as a Float32Array(V) to add to the logits; null when there is none. */
export function biasVector(logitBias, V) {
  if (logitBias === null || logitBias === undefined) return null;
  if (typeof logitBias !== 'object' || Array.isArray(logitBias)) throw new SamplerError('logit_bias must map token ids to numbers');
  const entries = Object.entries(logitBias);
  if (!entries.length) return null;
  const vector = new Float32Array(V);
  for (const [key, bias] of entries) {
    const token = Number(key);
    if (!/^[0-9]+$/.test(key) || token >= V) throw new SamplerError(`logit_bias: ${key} is not a token id of this model (0 to ${V - 1})`);
    if (typeof bias !== 'number' || !(bias >= -MAX_BIAS && bias <= MAX_BIAS)) {
      throw new SamplerError(`logit_bias: the bias of token ${token} must be a number in [-100, 100], got ${bias}`);
    }
    vector[token] = bias;
  }
  return vector;
}
