// For tests/test_constrain.py: the JavaScript core's masks, errors and character rules on the cases Python gives.
//   node constrain_masks.mjs walks CASES.json   -> per case: the mask before each step of its walk, or the error
//   node constrain_masks.mjs classes FROM TO    -> the code points each class rule holds, and the case variants
import { readFileSync } from 'node:fs';
import { compileConstraint } from '../serve/js/automaton.js';
import { caseVariants, CLASSES } from '../serve/js/charsets.js';

const [mode, ...args] = process.argv.slice(2);
if (mode === 'walks') {
  const { vocab, end, cases } = JSON.parse(readFileSync(args[0], 'utf-8'));
  const out = cases.map(({ regex, choices, walk }) => {
    try {
      const automaton = compileConstraint(vocab, { regex: regex ?? null, choices: choices ?? null, end });
      let state = automaton.start;
      const masks = [];
      for (const token of [...walk, null]) {
        masks.push(Array.from(automaton.allowed(state)).join(''));
        if (token !== null) state = automaton.advance(state, token);
      }
      return { masks };
    } catch (e) {
      return { error: e.message, kind: e.constructor.name };
    }
  });
  process.stdout.write(JSON.stringify(out));
} else if (mode === 'classes') {
  const [from, to] = args.map(Number);
  const classes = { d: [], w: [], s: [] };
  const variants = {};
  for (let cp = from; cp < to; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const ch = String.fromCodePoint(cp);
    for (const name of Object.keys(classes)) if (CLASSES[name](ch)) classes[name].push(cp);
    const v = caseVariants(ch);
    if (v.length > 1) variants[cp] = v.slice(1).map((x) => x.codePointAt(0));
  }
  process.stdout.write(JSON.stringify({ classes, variants }));
}
