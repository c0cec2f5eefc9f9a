"""OpenAI's completions response objects, whole (a JSON body) and in pieces (server-sent events).

A stream (completion_events) carries chunks of text per choice as the ticks produce them, each choice's last
chunk with its finish_reason, the usage when asked, then `data: [DONE]`. An event carries every character that
came since the last one, and a stream pauses between its events (the service's `pause()`: at least
--stream-interval, longer when many streams share the --max-events budget), so the event rate stays bounded
however fast the ticks are and however many clients there are."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from serve.http.completion import Choice, Completion


def logprobs_object(
    entries: list[tuple[float | None, list[tuple[str, float]] | None]], chars: list[str], offset: int
) -> dict:
    """OpenAI's completions layout for these characters: tokens, token_logprobs, top_logprobs (char ->
    log-probability, best first) and text_offset (where each character starts in the choice's text)."""
    return {
        "tokens": chars,
        "token_logprobs": [logp for logp, _ in entries],
        "top_logprobs": [None if top is None else dict(top) for _, top in entries],
        "text_offset": list(range(offset, offset + len(chars))),
    }


def prompt_logprobs(completion: Completion, choice: Choice) -> dict:
    """The echoed prompt's logprobs: its first character has none (nothing came before it)."""
    chars = list(completion.prompt_text)
    entries = [(None, None), *choice.prompt_logprobs][: len(chars)]
    return logprobs_object(entries, chars, 0)


def merge_logprobs(first: dict, second: dict) -> dict:
    return {key: first[key] + second[key] for key in first}


def choice_body(
    completion: Completion, choice: Choice, start: int, stop: int, finish: str | None, with_prompt: bool
) -> dict:
    """The choice's characters from `start` to `stop` (the prompt first when `with_prompt`), with their logprobs;
    text offsets count from the start of the choice's whole text (which begins with the prompt under echo)."""
    request = completion.request
    chars = choice.chars[start:stop]
    text = "".join(chars)
    logprobs = None
    if request.logprobs is not None:
        offset = start + (len(completion.prompt_text) if request.echo else 0)
        logprobs = logprobs_object(choice.logprobs[start:stop], chars, offset)
        if with_prompt:
            logprobs = merge_logprobs(prompt_logprobs(completion, choice), logprobs)
    body = {
        "index": choice.index,
        "text": (completion.prompt_text + text) if with_prompt else text,
        "logprobs": logprobs,
        "finish_reason": finish,
    }
    if choice.score is not None:  # ours, under beam search: the sum of the characters' log-probabilities
        body["score"] = choice.score
    return body


def usage(completion: Completion) -> dict:
    generated = sum(choice.visible for choice in completion.choices)
    return {
        "prompt_tokens": completion.prompt_chars,
        "completion_tokens": generated,
        "total_tokens": completion.prompt_chars + generated,
    }


def envelope(completion: Completion, model: str) -> dict:
    # `seed` is ours (OpenAI returns none): the one used, so that any text can be generated again
    return {
        "id": completion.id,
        "object": "text_completion",
        "created": completion.created,
        "model": model,
        "seed": completion.seed,
    }


def completion_body(completion: Completion, model: str) -> dict:
    """The whole response of a finished completion."""
    echo = completion.request.echo
    choices = [choice_body(completion, c, 0, c.visible, c.finish, echo) for c in completion.choices]
    return {**envelope(completion, model), "choices": choices, "usage": usage(completion)}


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


async def completion_events(
    completion: Completion, model: str, pause: Callable[[], float], cancel: Callable[[Completion], None]
) -> AsyncIterator[bytes]:
    """The events of one completion; if the client goes away (the generator is closed or cancelled), its
    sequences leave the batch at the next tick."""
    request = completion.request
    head = envelope(completion, model)
    if request.include_usage:
        head["usage"] = None  # OpenAI: every chunk has the field; only the last one fills it
    sent = [0] * len(completion.choices)  # characters sent per choice
    ended = [False] * len(completion.choices)
    echoed = [not request.echo] * len(completion.choices)
    try:
        while not all(ended):
            await completion.notifier.wait()
            for choice in completion.choices:
                i = choice.index
                if ended[i]:
                    continue
                finish = choice.finish  # read before `visible`: once set, `visible` is final
                visible = choice.visible
                if not echoed[i] and choice.fed < len(choice.prompt_ids) and finish is None:
                    continue  # under echo, the prompt goes first, with its logprobs once all are known
                if visible == sent[i] and finish is None and echoed[i]:
                    continue
                body = choice_body(completion, choice, sent[i], visible, finish, with_prompt=not echoed[i])
                yield event({**head, "choices": [body]})
                sent[i], echoed[i], ended[i] = visible, True, finish is not None
            if not all(ended):
                await completion.notifier.pause(pause())
        if request.include_usage:
            yield event({**head, "choices": [], "usage": usage(completion)})
        yield DONE
    finally:
        if not completion.done:
            cancel(completion)
