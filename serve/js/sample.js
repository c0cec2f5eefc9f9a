#!/usr/bin/env node
// node serve/js/sample.js MODEL.onnx --prime TEXT --length N --top-k K --temperature T --seed S
//   [--top-p P] [--num-samples N] [--unknown error|skip] [--device cpu|cuda]
// The same options as `python -m serve.sample`; the prime and the generated text go to stdout.

import { loadSampler, SamplerError } from './node.js';

const USAGE = 'usage: node sample.js MODEL.onnx [--prime TEXT] [--length N] [--top-k K] [--top-p P] '
  + '[--temperature T] [--seed S] [--num-samples N] [--unknown error|skip] [--device cpu|cuda] [--threads N]';

function parse(argv) {
  const options = { prime: '', length: 500, topK: null, topP: null, temperature: 1.0, seed: null,
    numSamples: 1, unknown: 'error', device: 'cpu', threads: null };
  const number = (flag, value, integer) => {
    const parsed = Number(value);
    if (value === undefined || value === '' || Number.isNaN(parsed) || (integer && !Number.isInteger(parsed))) {
      throw new SamplerError(`${flag} needs ${integer ? 'an integer' : 'a number'}, got '${value ?? ''}'`);
    }
    return parsed;
  };
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => argv[++i];
    switch (arg) {
      case '-h': case '--help': console.log(USAGE); process.exit(0); break;
      case '--prime': options.prime = value() ?? ''; break;
      case '--length': options.length = number(arg, value(), true); break;
      case '--top-k': options.topK = number(arg, value(), true); break;
      case '--top-p': options.topP = number(arg, value(), false); break;
      case '--temperature': options.temperature = number(arg, value(), false); break;
      case '--seed': options.seed = number(arg, value(), true); break;
      case '--num-samples': options.numSamples = number(arg, value(), true); break;
      case '--threads': options.threads = number(arg, value(), true); break;
      case '--unknown': options.unknown = value(); break;
      case '--device': options.device = value(); break;
      default:
        if (arg.startsWith('--')) throw new SamplerError(`unknown option ${arg}`);
        positional.push(arg);
    }
  }
  if (positional.length !== 1) throw new SamplerError(USAGE);
  if (!['error', 'skip'].includes(options.unknown)) throw new SamplerError(`--unknown must be error or skip`);
  if (!['cpu', 'cuda'].includes(options.device)) throw new SamplerError(`--device must be cpu or cuda`);
  return [positional[0], options];
}

async function main() {
  const [model, options] = parse(process.argv.slice(2));
  const sampler = await loadSampler(model, { device: options.device, threads: options.threads });
  const single = options.numSamples === 1;
  let started = false;
  const texts = await sampler.generate(options.prime, options.length, {
    ...options,
    onChar: single ? (ch) => { if (!started) { process.stdout.write(options.prime); started = true; } process.stdout.write(ch); } : null,
  });
  if (single) {
    if (!started) process.stdout.write(options.prime);
    process.stdout.write('\n');
  } else {
    texts.forEach((text, i) => process.stdout.write(`--- sample ${i + 1}\n${options.prime}${text}\n`));
  }
}

main().catch((e) => {
  process.stderr.write(`error: ${e instanceof SamplerError ? e.message : String(e.message || e).split('\n')[0]}\n`);
  process.exit(2);
});
