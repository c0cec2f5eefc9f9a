// A constraint compiled over the model's vocabulary: the pattern's tree (constrain.js) as a Thompson automaton
// over classes of characters that every set treats alike, made deterministic lazily. serve/constrain/ does
// the same in Python, in the same order.
//
//   const automaton = compileConstraint(vocab, { regex: '[A-Z][a-z]{2,11}' });
//   let state = automaton.start;
//   const mask = automaton.allowed(state); // Uint8Array(V): what may come next (the end where the text matches)
//   state = automaton.advance(state, token);

import { parse, PatternError, pyRepr } from './dialect.js';

export { PatternError } from './dialect.js';

export const MAX_STATES = 200000; // automaton states a pattern may build (each repetition is a copy of its body)
export const DEAD = -1;

export class Automaton {
  constructor(tree, vocabSize, endId) {
    this.vocabSize = vocabSize;
    this.endId = endId;
    const distinct = new Map(); // key -> mask, in the order leaves are met
    collectLeaves(tree, distinct);
    const masks = [...distinct.values()];
    [this.classOf, this.classMembers] = alphabetClasses(masks, vocabSize);
    this.classesOfMask = new Map();
    for (const [key, mask] of distinct) {
      this.classesOfMask.set(key, new Set(this.classMembers.map((m, k) => (mask[m[0]] ? k : -1)).filter((k) => k >= 0)));
    }
    this.eps = [];
    this.edges = [];
    let start;
    [start, this.accept] = this.fragment(tree);
    this.live = this.liveStates();
    this.rows = []; // [members, moves | null, mask | null]
    this.index = new Map();
    this.start = this.state(this.closure([start]));
  }

  // ---- the nondeterministic automaton

  newState() {
    if (this.eps.length >= MAX_STATES) {
      throw new PatternError(`the pattern is too large (over ${MAX_STATES.toLocaleString('en-US')} automaton states): lower its counts`);
    }
    this.eps.push([]);
    this.edges.push([]);
    return this.eps.length - 1;
  }

  fragment(tree) {
    const kind = tree[0];
    const entry = this.newState();
    if (kind === 'set') {
      const exit = this.newState();
      if (tree[1].some((bit) => bit)) this.edges[entry].push([this.classesOfMask.get(tree[1].join('')), exit]);
      return [entry, exit];
    }
    if (kind === 'cat') {
      let here = entry;
      for (const item of tree[1]) {
        const [first, last] = this.fragment(item);
        this.eps[here].push(first);
        here = last;
      }
      return [entry, here];
    }
    if (kind === 'alt') {
      const exit = this.newState();
      for (const branch of tree[1]) {
        const [first, last] = this.fragment(branch);
        this.eps[entry].push(first);
        this.eps[last].push(exit);
      }
      return [entry, exit];
    }
    const [, body, low, high] = tree;
    let here = entry;
    for (let i = 0; i < low; i++) {
      const [first, last] = this.fragment(body);
      this.eps[here].push(first);
      here = last;
    }
    const exit = this.newState();
    if (high === null) {
      const [first, last] = this.fragment(body);
      this.eps[here].push(first, exit);
      this.eps[last].push(here);
      return [entry, exit];
    }
    for (let i = 0; i < high - low; i++) {
      const [first, last] = this.fragment(body);
      this.eps[here].push(exit, first);
      here = last;
    }
    this.eps[here].push(exit);
    return [entry, exit];
  }

  liveStates() {
    const back = this.eps.map(() => []);
    this.eps.forEach((targets, state) => targets.forEach((target) => back[target].push(state)));
    this.edges.forEach((edges, state) => edges.forEach(([, target]) => back[target].push(state)));
    const live = new Array(this.eps.length).fill(false);
    live[this.accept] = true;
    const todo = [this.accept];
    while (todo.length) {
      for (const source of back[todo.pop()]) {
        if (!live[source]) {
          live[source] = true;
          todo.push(source);
        }
      }
    }
    return live;
  }

  closure(states) {
    const seen = new Set(states);
    const todo = [...states];
    while (todo.length) {
      for (const target of this.eps[todo.pop()]) {
        if (!seen.has(target)) {
          seen.add(target);
          todo.push(target);
        }
      }
    }
    return [...seen].filter((s) => this.live[s]).sort((a, b) => a - b);
  }

  // ---- the deterministic automaton, built lazily

  state(members) {
    if (!members.length) return DEAD;
    const key = members.join(',');
    let found = this.index.get(key);
    if (found === undefined) {
      found = this.rows.length;
      this.index.set(key, found);
      this.rows.push([members, null, null]);
    }
    return found;
  }

  row(state) {
    const entry = this.rows[state];
    if (entry[1] === null) {
      const [members] = entry;
      const moves = this.classMembers.map((_, k) => {
        const targets = [];
        for (const s of members) for (const [classes, t] of this.edges[s]) if (classes.has(k)) targets.push(t);
        return this.state(this.closure(targets));
      });
      const mask = new Uint8Array(this.vocabSize);
      moves.forEach((target, k) => {
        if (target !== DEAD) for (const id of this.classMembers[k]) mask[id] = 1;
      });
      if (this.endId !== null && members.includes(this.accept)) mask[this.endId] = 1;
      entry[1] = moves;
      entry[2] = mask;
    }
    return entry;
  }

  /** Uint8Array(V): the characters that keep a full match possible, and the end where the text is one. */
  allowed(state) {
    return this.row(state)[2];
  }

  /** The state after `token` (not the end character); DEAD if no full match stays possible. */
  advance(state, token) {
    return this.row(state)[1][this.classOf[token]];
  }
}

function collectLeaves(tree, out) {
  if (tree[0] === 'set') {
    const key = tree[1].join('');
    if (!out.has(key)) out.set(key, tree[1]);
  } else if (tree[0] === 'cat' || tree[0] === 'alt') {
    for (const item of tree[1]) collectLeaves(item, out);
  } else {
    collectLeaves(tree[1], out);
  }
}

function alphabetClasses(masks, vocabSize) {
  const classOf = [];
  const members = [];
  const seen = new Map();
  for (let i = 0; i < vocabSize; i++) {
    const signature = masks.map((mask) => mask[i]).join('');
    if (!seen.has(signature)) {
      seen.set(signature, seen.size);
      members.push([]);
    }
    const k = seen.get(signature);
    members[k].push(i);
    classOf.push(k);
  }
  return [classOf, members];
}

function shown(ch) {
  return `${pyRepr(ch)} (U+${ch.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')})`;
}

/** The automaton of `regex` or `choices` over `vocab`, ending at `end`; PatternError (one line) if bad. */
export function compileConstraint(vocab, { regex = null, choices = null, end = '\n', normalize = 'none' } = {}) {
  if ((regex === null) === (choices === null)) {
    throw new PatternError(regex !== null ? 'give a regex or choices, not both' : 'no constraint given');
  }
  if (typeof end !== 'string' || Array.from(end).length !== 1) throw new PatternError(`the end must be one character, got ${JSON.stringify(end)}`);
  const form = (text) => (normalize === 'none' ? text : text.normalize(normalize));
  const index = new Map(vocab.map((ch, i) => [ch, i]));
  end = form(end);
  const endId = index.has(end) ? index.get(end) : null;
  let tree;
  let what;
  if (regex !== null) {
    if (typeof regex !== 'string') throw new PatternError(`the regex must be a string, got ${typeof regex}`);
    tree = parse(form(regex), vocab, endId);
    what = 'the pattern';
  } else {
    tree = choicesTree(choices, index, end, form, vocab.length);
    what = 'the choices';
  }
  const automaton = new Automaton(tree, vocab.length, endId);
  if (automaton.start === DEAD) {
    throw new PatternError(`no text over the model's ${vocab.length} characters matches ${what}${needed(tree, end)}`);
  }
  return automaton;
}

function choicesTree(choices, index, end, form, vocabSize) {
  if (!Array.isArray(choices) || !choices.length) throw new PatternError('choices must be a non-empty list of strings');
  const branches = choices.map((choice) => {
    if (typeof choice !== 'string') throw new PatternError(`each choice must be a string, got ${JSON.stringify(choice)}`);
    const text = Array.from(form(choice));
    if (text.includes(end)) throw new PatternError(`the choice ${pyRepr(choice)} holds the end character ${shown(end)}, which ends a text`);
    const missing = [...new Set(text.filter((ch) => !index.has(ch)))].sort();
    if (missing.length) {
      throw new PatternError(`the choice ${pyRepr(choice)} has characters the model does not know: ${missing.map(shown).join(', ')}`);
    }
    return ['cat', text.map((ch) => {
      const mask = new Uint8Array(vocabSize);
      mask[index.get(ch)] = 1;
      return ['set', mask, ch];
    })];
  });
  return ['alt', branches];
}

function needed(tree, end) {
  const empty = [];
  const walk = (node) => {
    if (node[0] === 'set') {
      if (!node[1].some((bit) => bit) && !empty.includes(node[2])) empty.push(node[2]);
    } else if (node[0] === 'cat' || node[0] === 'alt') {
      node[1].forEach(walk);
    } else {
      walk(node[1]);
    }
  };
  walk(tree);
  const lacking = empty.filter((s) => s !== end);
  const parts = [];
  if (lacking.length) {
    const listed = lacking.slice(0, 10).map((s) => (Array.from(s).length === 1 ? shown(s) : pyRepr(s))).join(', ');
    parts.push(`it needs ${listed}, which the model's vocabulary lacks`);
  }
  if (empty.includes(end)) {
    parts.push(`it needs the end character ${shown(end)}, which never appears inside a text (choose another end)`);
  }
  return parts.length ? `: ${parts.join('; ')}` : '';
}
