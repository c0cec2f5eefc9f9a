// The characters a pattern's escapes and classes stand for, by the rules serve/constrain/charsets.py applies:
// \d is Unicode category Nd, \w the categories L* and N* and "_" (Python's own \w), \s the 29 characters of
// Python's str.isspace; under (?i) a character also matches when its lowercase or uppercase (where that is
// one character) does. And the constructs the dialect refuses, by name.

import { SamplerError } from './errors.js';

export const MAX_REPEAT = 1000;
export const SPACES = new Set(Array.from('\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004'
  + '\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000'));
export const SIMPLE_ESCAPES = { n: '\n', t: '\t', r: '\r', f: '\f', v: '\v', a: '\x07', 0: '\0' };
export const REFUSED_ESCAPES = {
  b: 'word boundaries (\\b) are outside the dialect',
  B: 'word boundaries (\\B) are outside the dialect',
  N: 'named characters (\\N{...}) are outside the dialect; write the character or \\uXXXX',
  z: '\\z is not Python syntax; the whole text must match anyway',
};
export const REFUSED_GROUPS = {
  '=': 'lookahead (?=...) is outside the dialect',
  '!': 'negative lookahead (?!...) is outside the dialect',
  '<=': 'lookbehind (?<=...) is outside the dialect',
  '<!': 'negative lookbehind (?<!...) is outside the dialect',
  'P=': 'backreferences (?P=name) are outside the dialect',
  '>': 'atomic groups (?>...) are outside the dialect',
  '(': 'conditional groups (?(...)...) are outside the dialect',
};
export const COUNTS = /^\{([0-9]*)(?:(,)([0-9]*))?\}/;
const ND = /^\p{Nd}$/u;
const WORD = /^[\p{L}\p{N}_]$/u;
export const CLASSES = { d: (c) => ND.test(c), w: (c) => WORD.test(c), s: (c) => SPACES.has(c) };

/** A pattern outside the dialect, or a constraint the model's vocabulary cannot meet. */
export class PatternError extends SamplerError {}

const single = (s) => Array.from(s).length === 1;
export const isAsciiLetter = (c) => /^[A-Za-z]$/.test(c);

/** The character, its lowercase and its uppercase, where each is one character. */
export function caseVariants(ch) {
  const out = [ch];
  for (const other of [ch.toLowerCase(), ch.toUpperCase()]) if (single(other) && other !== ch) out.push(other);
  return out;
}

// Python's repr of a str, for messages that read the same in every runtime.
export function pyRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch === '\\' || ch === quote) out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return out + quote;
}
