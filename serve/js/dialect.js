// The regular-expression dialect of constraints: a pattern -> a tree whose leaves are sets of vocabulary ids
// (Uint8Array masks). serve/constrain/dialect.py is the same parser in Python, method for method, so both
// runtimes build the same tree from the same pattern (docs/constrained.md, the dialect).

import {
  CLASSES, COUNTS, caseVariants, isAsciiLetter, MAX_REPEAT, PatternError, pyRepr, REFUSED_ESCAPES, REFUSED_GROUPS,
  SIMPLE_ESCAPES,
} from './charsets.js';

export { PatternError, pyRepr } from './charsets.js';

class Parser {
  constructor(pattern, vocab, endId) {
    this.chars = Array.from(pattern);
    this.pos = 0;
    this.vocab = vocab;
    this.endId = endId;
    this.ignoreCase = false;
    this.dotAll = false;
  }

  error(message, at = null) {
    return new PatternError(`bad pattern ${pyRepr(this.chars.join(''))} at position ${at ?? this.pos}: ${message}`);
  }

  peek(offset = 0) {
    const i = this.pos + offset;
    return i < this.chars.length ? this.chars[i] : null;
  }

  take() {
    const ch = this.peek();
    if (ch === null) throw this.error('unexpected end of pattern');
    this.pos += 1;
    return ch;
  }

  at2(a, b) {
    return this.peek() === a && this.peek(1) === b;
  }

  // ---- sets over the vocabulary: a Uint8Array of the vocabulary's size

  mask(test, negate = false) {
    const bits = new Uint8Array(this.vocab.length);
    this.vocab.forEach((ch, i) => {
      const hit = this.ignoreCase ? caseVariants(ch).some(test) : test(ch);
      if (hit !== negate && i !== this.endId) bits[i] = 1;
    });
    return bits;
  }

  leaf(test, source, negate = false) {
    return ['set', this.mask(test, negate), source];
  }

  // ---- the grammar

  parse() {
    this.globalFlags();
    const tree = this.alternation(true);
    if (this.peek() === ')') throw this.error('unbalanced parenthesis');
    return tree;
  }

  globalFlags() {
    while (this.at2('(', '?') && this.peek(2) !== null && 'isamuxL'.includes(this.peek(2))) {
      const start = this.pos;
      this.pos += 2;
      let flags = '';
      while (![')', ':', null].includes(this.peek())) flags += this.take();
      if (this.peek() !== ')') {
        this.pos = start;
        return;
      }
      this.pos += 1;
      this.setFlags(flags, start);
    }
  }

  setFlags(flags, at) {
    for (const flag of flags) {
      if (flag === 'i') this.ignoreCase = true;
      else if (flag === 's') this.dotAll = true;
      else if (!'mu'.includes(flag)) throw this.error(`the flag ${pyRepr(flag)} is outside the dialect (it has i, s, m and u)`, at);
    }
  }

  alternation(top = false) {
    const branches = [this.sequence(top)];
    while (this.peek() === '|') {
      this.pos += 1;
      branches.push(this.sequence(top));
    }
    return branches.length === 1 ? branches[0] : ['alt', branches];
  }

  sequence(top) {
    if (top && (this.peek() === '^' || this.at2('\\', 'A'))) this.pos += this.peek() === '^' ? 1 : 2;
    const items = [];
    while (![null, '|', ')'].includes(this.peek())) {
      if (this.peek() === '$' || this.at2('\\', 'Z')) {
        const at = this.pos;
        this.pos += this.peek() === '$' ? 1 : 2;
        if (!(top && [null, '|'].includes(this.peek()))) {
          throw this.error('$ and \\Z are allowed only at the end of a top-level branch', at);
        }
        break;
      }
      items.push(this.quantified(this.atom()));
    }
    return items.length === 1 ? items[0] : ['cat', items];
  }

  quantified(atom) {
    const counts = this.quantifier();
    if (counts === null) return atom;
    if (this.peek() === '?') this.pos += 1;
    else if (this.peek() === '+') throw this.error('possessive quantifiers (*+, ++, ?+) are outside the dialect');
    if (this.quantifier(true)) throw this.error('multiple repeat');
    return ['rep', atom, counts[0], counts[1]];
  }

  quantifier(peekOnly = false) {
    const ch = this.peek();
    const simple = { '*': [0, null], '+': [1, null], '?': [0, 1] };
    if (ch !== null && ch in simple) {
      if (!peekOnly) this.pos += 1;
      return simple[ch];
    }
    const found = COUNTS.exec(this.chars.slice(this.pos, this.pos + 64).join(''));
    if (ch !== '{' || found === null || !(found[1] || found[2])) return null;
    const low = found[1] ? Number(found[1]) : 0;
    const high = found[2] ? (found[3] ? Number(found[3]) : null) : low;
    if (peekOnly) return [low, high];
    for (const count of [low, high]) {
      if (count !== null && count > MAX_REPEAT) throw this.error(`the count ${count} is over the dialect's limit of ${MAX_REPEAT}`);
    }
    if (high !== null && high < low) throw this.error(`min repeat greater than max repeat (${low} > ${high})`);
    this.pos += found[0].length;
    return [low, high];
  }

  atom() {
    const start = this.pos;
    const ch = this.take();
    if (ch === '(') return this.group(start);
    if (ch === '[') return this.charClass(start);
    if (ch === '.') return this.leaf((c) => this.dotAll || c !== '\n', '.');
    if (ch === '\\') return this.escapeAtom(start);
    if ('*+?'.includes(ch) || (ch === '{' && this.backIsQuantifier())) throw this.error('nothing to repeat', start);
    if (ch === '^') throw this.error('^ and \\A are allowed only at the start of a top-level branch', start);
    return this.literal(ch);
  }

  backIsQuantifier() {
    this.pos -= 1;
    const found = this.quantifier(true) !== null;
    this.pos += 1;
    return found;
  }

  literal(ch) {
    return this.leaf((c) => c === ch, ch);
  }

  group(start) {
    const saved = [this.ignoreCase, this.dotAll];
    if (this.peek() === '?') {
      this.pos += 1;
      this.extension(start);
      if (this.chars[this.pos - 1] === ')') return ['cat', []]; // a comment
    }
    const tree = this.alternation();
    if (this.peek() !== ')') throw this.error('missing ), unterminated subpattern', start);
    this.pos += 1;
    [this.ignoreCase, this.dotAll] = saved;
    return tree;
  }

  extension(start) {
    const ch = this.take();
    if (ch === ':') return;
    if (ch === 'P' && this.peek() === '<') {
      this.pos += 1;
      while (this.take() !== '>');
      return;
    }
    if (ch === '#') {
      while (this.take() !== ')');
      return;
    }
    if ('imsux-L'.includes(ch)) {
      this.pos -= 1;
      let on = '';
      while (this.peek() !== null && 'imsuxaL'.includes(this.peek())) on += this.take();
      let off = '';
      if (this.peek() === '-') {
        this.pos += 1;
        while (this.peek() !== null && 'imsuxaL'.includes(this.peek())) off += this.take();
      }
      if (this.peek() === ')') throw this.error('global flags not at the start of the expression', start);
      if (this.take() !== ':') throw this.error('unknown flag', start);
      this.setFlags(on, start);
      if (off.includes('i')) this.ignoreCase = false;
      if (off.includes('s')) this.dotAll = false;
      return;
    }
    const two = ch + (this.peek() ?? '');
    throw this.error(REFUSED_GROUPS[two] ?? REFUSED_GROUPS[ch] ?? `unknown extension ?${ch}`, start);
  }

  // ---- escapes and classes

  escapeChar(inClass) {
    const at = this.pos - 1;
    const ch = this.take();
    if ('dwsDWS'.includes(ch)) return ['class', ch];
    if (inClass && ch === 'b') return '\b';
    if (ch in SIMPLE_ESCAPES) {
      if (ch === '0' && this.peek() !== null && '01234567'.includes(this.peek())) {
        throw this.error('octal escapes are outside the dialect (write \\xhh)', at);
      }
      return SIMPLE_ESCAPES[ch];
    }
    if ('xuU'.includes(ch)) {
      const size = { x: 2, u: 4, U: 8 }[ch];
      const digits = this.chars.slice(this.pos, this.pos + size).join('');
      if (digits.length < size || !/^[0-9a-fA-F]*$/.test(digits)) throw this.error(`incomplete escape \\${ch}${digits}`, at);
      this.pos += size;
      if (parseInt(digits, 16) > 0x10ffff) throw this.error(`bad escape \\${ch}${digits}`, at);
      return String.fromCodePoint(parseInt(digits, 16));
    }
    if ('123456789'.includes(ch)) throw this.error(`backreferences (\\${ch}) are outside the dialect`, at);
    if (ch in REFUSED_ESCAPES) throw this.error(REFUSED_ESCAPES[ch], at);
    if (isAsciiLetter(ch)) throw this.error(`bad escape \\${ch}`, at);
    return ch;
  }

  escapeAtom(start) {
    if (this.peek() === 'A') throw this.error('^ and \\A are allowed only at the start of a top-level branch', start);
    const ch = this.escapeChar(false);
    if (Array.isArray(ch)) {
      const letter = ch[1];
      return this.leaf(CLASSES[letter.toLowerCase()], `\\${letter}`, letter !== letter.toLowerCase());
    }
    return this.literal(ch);
  }

  charClass(start) {
    const negate = this.peek() === '^';
    if (negate) this.pos += 1;
    const tests = [];
    let first = true;
    for (;;) {
      if (this.peek() === null) throw this.error('unterminated character set', start);
      if (this.peek() === ']' && !first) {
        this.pos += 1;
        break;
      }
      first = false;
      const low = this.classItem();
      if (this.peek() === '-' && ![']', null].includes(this.peek(1))) {
        this.pos += 1;
        const high = this.classItem();
        if (Array.isArray(low) || Array.isArray(high)) throw this.error('bad character range', start);
        const lo = low.codePointAt(0);
        const hi = high.codePointAt(0);
        if (lo > hi) throw this.error(`bad character range ${low}-${high}`, start);
        tests.push((c) => c.codePointAt(0) >= lo && c.codePointAt(0) <= hi);
      } else if (Array.isArray(low)) {
        const test = CLASSES[low[1].toLowerCase()];
        tests.push(low[1] === low[1].toLowerCase() ? test : (c) => !test(c));
      } else {
        tests.push((c) => c === low);
      }
    }
    const source = this.chars.slice(start, this.pos).join('');
    return this.leaf((c) => tests.some((test) => test(c)), source, negate);
  }

  classItem() {
    const ch = this.take();
    return ch === '\\' ? this.escapeChar(true) : ch;
  }
}

/** The pattern's tree over the vocabulary (the end character in no set); PatternError if outside the dialect. */
export function parse(pattern, vocab, endId) {
  return new Parser(pattern, vocab, endId).parse();
}
