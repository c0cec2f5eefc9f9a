#!/usr/bin/env node
// node serve/js/sample.js MODEL.onnx --prime TEXT --length N --top-k K --temperature T --seed S
//   [--top-p P] [--num-samples N] [--unknown error|skip] [--device cpu|cuda]
//   [--regex P] [--choice TEXT ...] [--end C] [--beam W] [--bias C=V ...]
// The same options as `python -m serve.sample`; the prime and the generated text go to stdout.

import { codePoint, loadSampler, SamplerError } from './node.js';

const USAGE = 'usage: node sample.js MODEL.onnx [--prime TEXT] [--length N] [--top-k K] [--top-p P] '
  + '[--temperature T] [--seed S] [--num-samples N] [--unknown error|skip] [--device cpu|cuda] [--threads N] '
  + '[--regex P] [--choice TEXT]... [--end C] [--beam W] [--bias C=V]...';

/** One character as a command line gives it: itself, U+XXXX, or the escapes \\n, \\t, \\r, \\\\. */
function character(text, what) {
  const escapes = { '\\n': '\n', '\\t': '\t', '\\r': '\r', '\\\\': '\\' };
  if (text in escapes) return escapes[text];
  const hex = /^[Uu]\+([0-9a-fA-F]+)$/.exec(text);
  if (hex && parseInt(hex[1], 16) <= 0x10ffff) return String.fromCodePoint(parseInt(hex[1], 16));
  if (Array.from(text).length !== 1) throw new SamplerError(`${what} must be one character (or U+XXXX, \\n, \\t), got '${text}'`);
  return text;
}

/** --bias C=V ... -> { token id: V } over the sampler's vocabulary. */
function biasOption(values, sampler) {
  const bias = {};
  for (const value of values) {
    const at = value.lastIndexOf('=');
    if (at <= 0) throw new SamplerError(`--bias takes CHARACTER=NUMBER, got '${value}'`);
    const ch = sampler.characters(character(value.slice(0, at), "--bias's character")).join('');
    if (!sampler.index.has(ch)) throw new SamplerError(`--bias: '${ch}' (${codePoint(ch)}) is not in the model's vocabulary`);
    const number = value.slice(at + 1);
    if (number.trim() === '' || Number.isNaN(Number(number))) throw new SamplerError(`--bias '${value}': '${number}' is not a number`);
    bias[sampler.index.get(ch)] = Number(number);
  }
  return bias;
}

function parse(argv) {
  const options = { prime: '', length: 500, topK: null, topP: null, temperature: 1.0, seed: null,
    numSamples: 1, unknown: 'error', device: 'cpu', threads: null, regex: null, choices: null, end: null,
    beamWidth: null, bias: [] };
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
      case '--regex': options.regex = value() ?? ''; break;
      case '--choice': (options.choices ??= []).push(value() ?? ''); break;
      case '--end': options.end = character(value() ?? '', '--end'); break;
      case '--beam': options.beamWidth = number(arg, value(), true); break;
      case '--bias': options.bias.push(value() ?? ''); break;
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
  options.logitBias = biasOption(options.bias, sampler);
  const single = options.numSamples === 1 && options.beamWidth === null;
  let started = false;
  const write = (ch) => {
    if (!started) process.stdout.write(options.prime);
    started = true;
    process.stdout.write(ch);
  };
  const generations = await sampler.complete(options.prime, options.length, { ...options, onChar: single ? write : null });
  if (single) {
    write('\n');
  } else {
    generations.forEach((g, i) => {
      const score = g.score === null ? '' : ` (score ${g.score.toFixed(4)})`;
      process.stdout.write(`--- ${options.beamWidth ? 'beam' : 'sample'} ${i + 1}${score}\n${options.prime}${g.text}\n`);
    });
  }
  const cut = generations.map((g, i) => (g.finish === 'length' ? i + 1 : 0)).filter((i) => i);
  if ((options.regex !== null || options.choices !== null) && cut.length) {
    const which = generations.length === 1 ? 'the text' : `text(s) ${cut.join(', ')}`;
    process.stderr.write(`note: ${which} reached --length ${options.length} before the constraint was met in full\n`);
  }
}

main().catch((e) => {
  process.stderr.write(`error: ${e instanceof SamplerError ? e.message : String(e.message || e).split('\n')[0]}\n`);
  process.exit(2);
});
