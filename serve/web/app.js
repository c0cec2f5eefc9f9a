// The browser loader and page of the charlstm sampler: the model's bytes come from a dropped or picked file or
// from ?model=URL, onnxruntime-web (the global `ort`, WASM backend, one thread) runs it, and core.js, the same
// core as Node's, does the rest. The page's state is in <body data-state>: empty, loading, ready, generating,
// done or stopped.

import { codePoint, describeModel, Sampler, SamplerError } from './core.js';
import { setupInspect } from './inspect_view.js';

const $ = (id) => document.getElementById(id);
let sampler = null; // the loaded model's Sampler
let running = null; // the AbortController of the generation under way

function setState(state) {
  document.body.dataset.state = state;
  $('generate').disabled = sampler === null || state === 'generating' || state === 'loading';
  $('stop').disabled = state !== 'generating';
}

function showMessage(text, unknownCharacters = null) {
  $('message-text').textContent = text;
  $('drop-unknown').hidden = unknownCharacters === null;
  $('message').hidden = false;
}

function clearMessage() {
  $('message').hidden = true;
}

// ---- loading a model

function runtime() {
  if (typeof globalThis.ort === 'undefined') {
    throw new SamplerError('onnxruntime-web did not load (ort/ort.wasm.min.js): open this page through `python -m serve.web`');
  }
  const ort = globalThis.ort;
  ort.env.wasm.numThreads = 1; // the threaded build needs cross-origin isolation (COOP/COEP headers)
  ort.env.wasm.wasmPaths = new URL('ort/', document.baseURI).href;
  return ort;
}

async function loadModel(bytes, name) {
  running?.abort(); // a new model ends the generation of the old one
  clearMessage();
  const previous = sampler;
  sampler = null;
  setState('loading');
  try {
    const ort = runtime();
    const info = describeModel(bytes, name); // a file that is not a charlstm cell fails here, before any WASM
    try {
      sampler = await Sampler.create(ort, bytes, { name, info, sessionOptions: { executionProviders: ['wasm'] } });
      await sampler.generate('', 1, { topK: 1 }); // one step now: the first generation's chars/s is not a warm-up's
    } catch (e) {
      throw new SamplerError(`onnxruntime-web could not start its WebAssembly runtime or load ${name} `
        + `(${String(e.message).replace(/^.*?could not load it \(/, '').replace(/\)$/, '')})`);
    }
    showInfo(info, name, bytes.length);
    setState('ready');
  } catch (e) {
    sampler = previous; // a bad file does not unload the model in use
    const kept = previous ? ` (still using ${$('info-name').dataset.name})` : '';
    showMessage((e instanceof SamplerError ? e.message : `could not load ${name}: ${e.message}`) + kept);
    setState(previous ? 'ready' : 'empty');
  }
}

function showInfo(info, name, size) {
  $('info-name').textContent = `${name} (${(size / 1e6).toFixed(2)} MB)`;
  $('info-name').dataset.name = name;
  $('info-vocab').textContent = `${info.vocab.length} characters`;
  $('info-shape').textContent = `${info.layers} × ${info.hidden}` + (info.embed ? ` (embedding ${info.embed})` : '');
  $('info-step').textContent = info.step === null ? 'unknown' : info.step.toLocaleString('en-US');
  $('info-loss').textContent = info.valLoss === null ? 'not evaluated' : `${info.valLoss.toFixed(4)} nats/char`;
  $('info-normalize').textContent = info.normalize;
  $('model-info').hidden = false;
}

async function loadFile(file) {
  if (!file) return;
  await loadModel(new Uint8Array(await file.arrayBuffer()), file.name);
}

async function loadUrl(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    showMessage(`could not fetch the model ${url} (${e.message})`);
    return;
  }
  if (!response.ok) {
    showMessage(`could not fetch the model ${url} (HTTP ${response.status})`);
    return;
  }
  const name = decodeURIComponent(new URL(url, document.baseURI).pathname.split('/').pop() || url);
  await loadModel(new Uint8Array(await response.arrayBuffer()), name);
}

// ---- generating

function readOptions() {
  const number = (id, label, { integer = false, optional = false } = {}) => {
    const input = $(id);
    const raw = input.value.trim(); // '' where the browser could not read a number either (validity.badInput)
    if (raw === '' && optional && !input.validity.badInput) return null;
    const value = Number(raw);
    if (raw === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      const needed = `${integer ? 'an integer' : 'a number'}${optional ? ' (or nothing)' : ''}`;
      throw new SamplerError(`${label} needs ${needed}` + (raw === '' ? '' : `, got ${raw}`));
    }
    return value;
  };
  return {
    length: number('length', 'length', { integer: true }),
    temperature: number('temperature', 'temperature'),
    topK: number('top-k', 'top-k', { integer: true, optional: true }),
    topP: number('top-p', 'top-p', { optional: true }),
    seed: number('seed', 'seed', { integer: true, optional: true }),
    numSamples: number('samples', 'samples', { integer: true }),
    regex: $('regex').value === '' ? null : $('regex').value,
    choices: $('choices').value === '' ? null : $('choices').value.split('\n'),
    beamWidth: number('beam', 'beam width', { integer: true, optional: true }),
  };
}

async function generate(unknown = 'error') {
  if (sampler === null) return;
  clearMessage();
  const prime = $('prime').value;
  let options;
  try {
    options = readOptions();
    if (options.beamWidth !== null) { // a beam search draws nothing: the sampling fields take no part
      Object.assign(options, { topK: null, topP: null, temperature: 1.0, seed: null });
    }
    sampler.checkOptions(options.length, options);
    sampler.constraint(options); // a bad pattern is one message before anything runs
  } catch (e) {
    showMessage(e.message);
    return;
  }
  const missing = sampler.unknownCharacters(prime);
  if (missing.length && unknown === 'error') {
    const shown = missing.slice(0, 10).map((ch) => `'${ch}' (${codePoint(ch)})`).join(', ');
    showMessage(`The prime has characters this model does not know: ${shown}.`, missing);
    return;
  }
  const shownPrime = missing.length ? sampler.characters(prime).filter((ch) => !missing.includes(ch)).join('') : prime;
  const N = options.numSamples;
  const output = $('output');
  output.replaceChildren();
  const generated = [];
  for (let n = 0; n < N; n++) {
    const pre = document.createElement('pre');
    const primeSpan = Object.assign(document.createElement('span'), { className: 'prime', textContent: shownPrime });
    const textSpan = Object.assign(document.createElement('span'), { className: 'generated' });
    pre.append(primeSpan, textSpan);
    output.append(pre);
    generated.push(textSpan);
  }
  const pending = Array.from({ length: N }, () => []);
  const flush = () => pending.forEach((chars, n) => {
    if (chars.length) generated[n].append(chars.join(''));
    chars.length = 0;
  });
  let positions = 0;
  const start = performance.now();
  let painted = start;
  let total = null; // the characters of the finished texts, once known
  const showSpeed = () => {
    const seconds = (performance.now() - start) / 1000;
    const chars = total ?? positions * N;
    $('speed').textContent = `${chars.toLocaleString('en-US')} chars in ${seconds.toFixed(1)} s: `
      + `${Math.round(chars / Math.max(seconds, 1e-3)).toLocaleString('en-US')} chars/s`;
  };
  const onChar = (chars) => {
    if (N === 1) pending[0].push(chars);
    else chars.forEach((ch, n) => pending[n].push(ch));
    positions++;
    const now = performance.now();
    if (now - painted < 50) return null;
    painted = now;
    flush();
    showSpeed();
    return new Promise((resolve) => setTimeout(resolve, 0)); // let the page paint and the Stop button work
  };
  running = new AbortController();
  setState('generating');
  try {
    const generations = await sampler.complete(prime, options.length, { ...options, unknown, onChar, signal: running.signal });
    pending.forEach((chars) => { chars.length = 0; });
    generations.forEach((g, n) => { generated[n].textContent = g.text; }); // the whole texts (a search's come at its end)
    generated.slice(generations.length).forEach((span) => span.parentElement.remove());
    total = generations.reduce((sum, g) => sum + Array.from(g.text).length, 0);
    showSpeed();
    const cut = generations.map((g, n) => (g.finish === 'length' ? n + 1 : 0)).filter((n) => n);
    if ((options.regex !== null || options.choices !== null) && cut.length) {
      $('speed').textContent += ` (text ${cut.join(', ')} reached the length before the constraint was met)`;
    }
    setState(running.signal.aborted ? 'stopped' : 'done');
  } catch (e) {
    flush();
    showMessage(e instanceof SamplerError ? e.message : `generation failed: ${e.message}`);
    setState('ready');
  } finally {
    running = null;
  }
}

// ---- wiring

$('controls').addEventListener('submit', (event) => {
  event.preventDefault();
  generate();
});
$('stop').addEventListener('click', () => running?.abort());
$('drop-unknown').addEventListener('click', () => generate('skip'));
$('model-file').addEventListener('change', (event) => loadFile(event.target.files[0]));
// a file dropped anywhere on the page is the model (rather than the browser navigating to it)
document.addEventListener('dragover', (event) => {
  event.preventDefault();
  $('drop').classList.add('over');
});
document.addEventListener('dragleave', () => $('drop').classList.remove('over'));
document.addEventListener('drop', (event) => {
  event.preventDefault();
  $('drop').classList.remove('over');
  loadFile(event.dataTransfer.files[0]);
});

setupInspect(() => sampler);
setState('empty');
// ?model=URL, or else the model the page's own server offers (python -m serve.web MODEL), if it offers one
const modelUrl = new URLSearchParams(location.search).get('model');
if (modelUrl) loadUrl(modelUrl);
else fetch('served-model.json').then((r) => (r.ok ? r.json() : null)).then((m) => m && loadUrl(m.url), () => {});
