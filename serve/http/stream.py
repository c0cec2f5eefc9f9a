"""A completion as server-sent events, in OpenAI's format: chunks of text per choice as the ticks produce them,
each choice's last chunk with its finish_reason, the usage when asked, then `data: [DONE]`.

An event carries every character that came since the last one, and a stream pauses between its events (the
service's `pause()`: at least --stream-interval, longer when many streams share the --max-events budget), so
the event rate stays bounded however fast the ticks are and however many clients there are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from serve.http.completion import Completion
from serve.http.responses import DONE, choice_body, envelope, event, usage


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
                await asyncio.sleep(pause())
        if request.include_usage:
            yield event({**head, "choices": [], "usage": usage(completion)})
        yield DONE
    finally:
        if not completion.done:
            cancel(completion)
