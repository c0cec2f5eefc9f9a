"""The ASGI app (Starlette): OpenAI's completions API in front of the scheduler, with /v1/models, /health and
/metrics. Every error is OpenAI's error object with the right status; nothing a client sends ends in a 500."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import secrets
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve.constrain import Automaton
from serve.generation import SamplingOptions, bias_array
from serve.http.beams import BeamWorker
from serve.http.completion import Completion, Notifier
from serve.http.metrics import CONTENT_TYPE, Metrics
from serve.http.protocol import ApiError, CompletionRequest, parse_completion
from serve.http.responses import completion_body, completion_events
from serve.http.scheduler import RETRY_AFTER, Scheduler
from serve.sampler import Sampler, SamplerError

SEED_HEADER = "X-Charlstm-Seed"  # the seed a completion used, so that it can be generated again


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_tokens: int = 4096  # the largest max_tokens
    max_prompt: int = 16384  # the longest prompt, in characters (it is read one character per tick)
    max_body: int = 1 << 20  # bytes of a request body
    stream_interval: float = 0.02  # seconds between a stream's events, at least
    max_events: float = 1000.0  # events per second over all streams: with many streams, each pauses longer
    api_key: str | None = None  # when set, /v1/ needs `Authorization: Bearer <key>`


class Service:
    """The served model, its scheduler and its counters: what the routes share."""

    def __init__(
        self,
        sampler: Sampler,
        model_path: Path,
        scheduler: Scheduler,
        metrics: Metrics,
        limits: Limits,
        beams: BeamWorker | None = None,
    ):
        self.sampler, self.scheduler, self.metrics, self.limits = sampler, scheduler, metrics, limits
        self.beams = beams if beams is not None else BeamWorker(sampler, scheduler.max_queue)
        self.model_id = model_path.name
        self.model_card = model_card(sampler, model_path)
        self.streams = 0  # streaming responses under way

    def pause(self) -> float:
        """Seconds a stream waits after an event: the event loop's work stays bounded with many clients."""
        return max(self.limits.stream_interval, self.streams / self.limits.max_events)

    async def stream(self, completion: Completion) -> AsyncIterator[bytes]:
        self.streams += 1
        try:
            async for chunk in completion_events(completion, self.model_id, self.pause, self.scheduler.cancel):
                yield chunk
        finally:
            self.streams -= 1

    def authorize(self, request: Request) -> None:
        if self.limits.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.limits.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)", code="invalid_api_key")

    async def read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body has {int(declared):,} bytes, over this server's limit of {limit:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"the request body is over this server's limit of {limit:,} bytes")
        return bytes(body)

    def prompt_ids(self, prompt: str, unknown: str):
        """The prompt as ids and as the text the model reads; an empty prompt starts from a newline."""
        if len(prompt) > self.limits.max_prompt:
            raise ApiError(
                400,
                f"the prompt has {len(prompt):,} characters, over --max-prompt {self.limits.max_prompt:,}",
                "prompt",
            )
        try:
            ids = self.sampler.encode(prompt, unknown, what="the prompt")
        except SamplerError as e:
            raise ApiError(400, str(e).replace("use --unknown skip", 'send "unknown": "skip"'), "prompt") from None
        text = "".join(self.sampler.vocab[i] for i in ids)
        return self.sampler.start_ids(ids), text

    def constraint(self, asked: CompletionRequest) -> tuple[Automaton | None, np.ndarray | None]:
        """The request's guided_regex or guided_choice compiled over the vocabulary, and its logit_bias as a
        vector; ApiError 400 for a bad constraint."""
        options = SamplingOptions(regex=asked.regex, choices=asked.choices, end=asked.end)
        try:
            automaton = self.sampler.constraint(options)
        except SamplerError as e:
            raise ApiError(400, str(e), "guided_regex" if asked.regex is not None else "guided_choice") from None
        bias = bias_array(asked.logit_bias, len(self.sampler.vocab))
        return automaton, bias

    def in_model_form(self, asked: CompletionRequest) -> CompletionRequest:
        """Stop sequences in the model's Unicode form, the form of the text it generates."""
        form = self.sampler.normalize
        if form == "none" or not asked.stop:
            return asked
        return dataclasses.replace(asked, stop=tuple(unicodedata.normalize(form, stop) for stop in asked.stop))


def model_card(sampler: Sampler, path: Path) -> dict:
    """GET /v1/models's entry: OpenAI's fields, then what the model's metadata says."""
    metadata = sampler.metadata
    val_loss = metadata.get("val_loss")
    int8 = sampler.weights == "int8"
    return {
        "id": path.name,
        "object": "model",
        "created": int(path.stat().st_mtime),
        "owned_by": "charlstm",
        "vocab_size": len(sampler.vocab),
        "layers": sampler.layers,
        "hidden": sampler.hidden,
        "step": int(metadata["step"]) if metadata.get("step", "").isdigit() else None,
        "val_loss": float(val_loss) if val_loss else None,
        "normalize": sampler.normalize,
        "weights": sampler.weights,
        "device": sampler.device,
        # fp32 on the CPU: a row's logits do not depend on the rows beside it, so a seed gives the same text
        # whatever else is generating; int8 (scales per batch) and CUDA kernels depend on the batch
        "batch_invariant": not int8 and sampler.device == "cpu",
    }


def api_error(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER)} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_done(completion: Completion, request: Request) -> bool:
    """Wait for every choice to finish; False if the client went away first."""
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        while not completion.done:
            woken = asyncio.ensure_future(completion.notifier.wait())
            await asyncio.wait({woken, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                woken.cancel()
                return False
        return True
    finally:
        gone.cancel()


async def complete(service: Service, request: Request) -> Response:
    """POST /v1/completions: check, submit, then stream the events or wait for the whole answer."""
    try:
        service.authorize(request)
        raw = await service.read_body(request)
        vocab = len(service.sampler.vocab)
        asked = parse_completion(raw, vocab, service.limits.max_tokens, service.scheduler.max_batch)
        if asked.model is not None and asked.model != service.model_id:
            raise ApiError(
                404,
                f"model {asked.model!r} does not exist here; this server serves {service.model_id!r}",
                "model",
                "model_not_found",
            )
        ids, text = service.prompt_ids(asked.prompt, asked.unknown)
        asked = service.in_model_form(asked)
        if asked.regex is not None or asked.choices is not None:  # a large pattern compiles off the event loop
            automaton, bias = await asyncio.to_thread(service.constraint, asked)
        else:
            automaton, bias = service.constraint(asked)
        seed = asked.seed if asked.seed is not None else secrets.randbelow(1 << 53)  # exact in JavaScript too
        completion = Completion(asked, ids, text, seed, Notifier(asyncio.get_running_loop()), automaton, bias)
        (service.beams if asked.beam_width is not None else service.scheduler).submit(completion)
    except ApiError as e:
        return api_error(e)
    except ClientDisconnect:
        return Response(status_code=499)
    headers = {SEED_HEADER: str(seed)} if asked.beam_width is None else {}  # a beam search draws nothing
    if asked.stream:
        return StreamingResponse(service.stream(completion), media_type="text/event-stream", headers=headers)
    if not await wait_done(completion, request):
        service.scheduler.cancel(completion)
        return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
    return JSONResponse(completion_body(completion, service.model_id), headers=headers)


def build_app(service: Service) -> Starlette:
    async def completions(request: Request) -> Response:
        return await complete(service, request)

    async def models(request: Request) -> Response:
        try:
            service.authorize(request)
        except ApiError as e:
            return api_error(e)
        return JSONResponse({"object": "list", "data": [service.model_card]})

    async def health(request: Request) -> Response:
        draining = service.scheduler.draining
        return JSONResponse({"status": "draining" if draining else "ok"}, status_code=503 if draining else 200)

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return api_error(ApiError(404, f"no route {request.method} {request.url.path}"))
        return api_error(ApiError(exc.status_code, f"{request.method} is not allowed on {request.url.path}"))

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(ApiError(500, f"internal error ({type(exc).__name__})").body(), status_code=500)

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    return CountRequests(app, service.metrics)


class CountRequests:
    """ASGI middleware: every HTTP answer counted by route and status (charlstm_requests_total)."""

    ROUTES = ("/v1/completions", "/v1/models", "/health", "/metrics")

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.ROUTES else "other"
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
