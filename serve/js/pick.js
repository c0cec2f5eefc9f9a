// The generator and the pick every sampler shares: serve/pick.py does the same, step for step, so a seed gives
// one text in Python, Node.js and the browser.

const MASK64 = (1n << 64n) - 1n;

/** The draw of `sample` at `position` for `seed`: SplitMix64's finalizer of a key made of the three, as a
 * float64 in [0, 1) (53 bits). Counter-based: nothing is carried from one draw to the next. */
export function uniform(seed, sample, position) {
  let z = (BigInt.asUintN(64, BigInt(seed)) ^ ((BigInt(sample) * 0x9E3779B97F4A7C15n) & MASK64)
    ^ ((BigInt(position) * 0xBF58476D1CE4E5B9n) & MASK64)) & MASK64;
  z = (z + 0x9E3779B97F4A7C15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & MASK64;
  z ^= z >> 31n;
  return Number(z >> 11n) * 2 ** -53;
}

/** One token from the logits of one sample (a Float32Array of V) and a uniform draw in [0, 1): greedy (argmax,
 * the lowest id among ties), or the inverse CDF of the tempered softmax over the candidates sorted by
 * (logit desc, id asc), restricted to the top k and then to the shortest prefix holding top p of the mass,
 * in float64. `allowed` (a Uint8Array of V with at least one set, a constraint's mask): only those take part. */
export function pick(logits, topK, temperature, topP, draw, allowed = null) {
  const V = logits.length;
  let ids = Array.from({ length: V }, (_, i) => i);
  if (allowed) ids = ids.filter((i) => allowed[i]); // a constraint's mask: only these take part
  if (topK === 1 || temperature === 0) {
    let best = ids[0];
    for (const i of ids) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let order = ids.sort((a, b) => logits[b] - logits[a] || a - b);
  if (topK) order = order.slice(0, topK);
  const first = logits[order[0]];
  const cumulative = [];
  let sum = 0;
  for (const id of order) {
    sum += Math.exp((logits[id] - first) / temperature);
    cumulative.push(sum);
  }
  let count = order.length;
  if (topP !== null && topP < 1) {
    count = 0;
    while (count < order.length && (count === 0 ? 0 : cumulative[count - 1]) < topP * sum) count++;
  }
  const target = draw * cumulative[count - 1];
  let index = 0;
  while (index < count - 1 && cumulative[index] <= target) index++;
  return order[index];
}
