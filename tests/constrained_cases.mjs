// For tests/test_constrained.py: node constrained_cases.mjs MODEL.onnx CASES.json -> each case's generations
// ([{ text, finish, score }]) from the Node.js sampler, or its error.
import { readFileSync } from 'node:fs';
import { loadSampler } from '../serve/js/node.js';

const camel = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
const [model, casesPath] = process.argv.slice(2);
const sampler = await loadSampler(model);
const { cases } = JSON.parse(readFileSync(casesPath, 'utf-8'));
const out = [];
for (const { prime, length, logit_bias: bias, ...rest } of cases) {
  const options = Object.fromEntries(Object.entries(rest).map(([k, v]) => [camel(k), v]));
  if (bias) options.logitBias = Object.fromEntries(Object.entries(bias).map(([ch, v]) => [sampler.index.get(ch), v]));
  try {
    out.push(await sampler.complete(prime, length, options));
  } catch (e) {
    out.push({ error: e.message });
  }
}
process.stdout.write(JSON.stringify(out));
