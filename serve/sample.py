"""`python -m serve.sample MODEL.onnx --prime TEXT --length N --top-k K`: stream generated text to stdout.

The seed's `sample(net, 1000, prime='El libro empieza años', top_k=5)` is
`python -m serve.sample model.onnx --prime 'El libro empieza años' --length 1000 --top-k 5`.
"""

from __future__ import annotations

import argparse
import sys

from serve.options import add_constraint_options, add_unknown_option, bias_option, character
from serve.pretrained import model_or_pretrained
from serve.sampler import Generation, Sampler, SamplerError, SamplingOptions
from serve.score import read_text


def sample(net: Sampler, size: int, prime: str = "The", top_k: int | None = None, **options) -> str:
    """The seed's call, `sample(net, 1000, prime='El libro empieza años', top_k=5)`: the prime followed by
    `size` generated characters. `options` go to Sampler.generate (temperature, top_p, seed)."""
    return prime + net.generate(prime, size, top_k=top_k, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve.sample", description="Generate text from a charlstm .onnx.")
    parser.add_argument(
        "model", nargs="?", help="an .onnx exported by export.onnx (default: the bundled shakespeare model)"
    )
    parser.add_argument("--prime", default="", help="text to start from (default: a fresh start)")
    parser.add_argument("--prime-file", help="read the prime from this UTF-8 file instead")
    parser.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the K most likely (1 = greedy)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus: the smallest set with mass P")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; <1 safer, >1 wilder")
    parser.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    parser.add_argument("--num-samples", type=int, default=1, help="samples generated together (batched)")
    add_unknown_option(parser, "prime characters")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    add_constraint_options(parser)
    args = parser.parse_args(argv)
    try:
        if args.prime_file and args.prime:
            raise SamplerError("give --prime or --prime-file, not both")
        prime = read_text(args.prime_file) if args.prime_file else args.prime
        model = model_or_pretrained(args.model, "charlstm-sample")
        sampler = Sampler(model, device=args.device, threads=args.threads)
        options = SamplingOptions(
            args.top_k,
            args.temperature,
            args.top_p,
            args.seed,
            args.num_samples,
            args.unknown,
            regex=args.regex,
            choices=args.choices,
            end=None if args.end is None else character(args.end, "--end"),
            beam_width=args.beam,
            logit_bias=bias_option(args.bias, sampler.index, sampler.normalize),
        )
        write(sampler, prime, args.length, options)
    except SamplerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


def write(sampler: Sampler, prime: str, length: int, options: SamplingOptions) -> None:
    """The prime and the text to stdout, a character at a time where one text is sampled; a note on stderr for
    a constrained text that reached the length limit before it was complete."""
    if options.num_samples == 1 and options.beam_width is None:
        finishes: list[str] = []
        pieces = sampler.stream(prime, length, options, finishes=finishes)
        sys.stdout.write(prime)  # stream() has checked the options, the constraint and the prime
        for ch in pieces:
            sys.stdout.write(ch)
            sys.stdout.flush()
        sys.stdout.write("\n")
        generations = [Generation("", finish) for finish in finishes]
    else:
        generations = sampler.complete(prime, length, options)
        for i, generation in enumerate(generations):
            score = f" (score {generation.score:.4f})" if generation.score is not None else ""
            sys.stdout.write(
                f"--- {'beam' if options.beam_width else 'sample'} {i + 1}{score}\n{prime}{generation.text}\n"
            )
    sys.stdout.flush()
    if options.regex is not None or options.choices is not None:
        cut = [i + 1 for i, g in enumerate(generations) if g.finish == "length"]
        if cut:
            which = "the text" if len(generations) == 1 else f"text(s) {', '.join(map(str, cut))}"
            print(f"note: {which} reached --length {length} before the constraint was met in full", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
