// The Node.js loader of the sampler core: reads the .onnx from disk and runs it on onnxruntime-node.
//
//   import { loadSampler } from './serve/js/node.js';
//   const sampler = await loadSampler('model.onnx');
//   const text = await sampler.generate('El libro empieza años', 1000, { topK: 5, seed: 0 });

import { readFile } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import { Sampler, SamplerError } from './core.js';

export * from './core.js';

/** A Sampler for the .onnx at `path`; device 'cpu' or 'cuda' (onnxruntime-node's CUDA build), threads: intra-op
 * threads (default: onnxruntime's own). */
export async function loadSampler(path, { device = 'cpu', threads = null } = {}) {
  let bytes;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new SamplerError(e.code === 'ENOENT' ? `model '${path}' does not exist` : `cannot read model '${path}' (${e.code || e.message})`);
  }
  if (threads !== null && !(Number.isInteger(threads) && threads >= 1)) {
    throw new SamplerError(`threads must be an integer >= 1 (leave it out for onnxruntime's default), got ${threads}`);
  }
  const sessionOptions = { executionProviders: device === 'cuda' ? ['cuda'] : ['cpu'] };
  if (threads !== null) sessionOptions.intraOpNumThreads = threads;
  return Sampler.create(ort, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), { name: path, sessionOptions });
}
