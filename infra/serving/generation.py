"""From a validated request body to engine events on the event loop: tokenize off-loop, fit the window, submit.

A request is cancelled in the engine as soon as its client goes away: ``collect`` watches for the disconnect
while it waits; ``EventStream`` cancels whatever it has not finished when its response ends, which Starlette
makes happen when a streaming client leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from infra.serving import tools
from infra.serving.errors import ApiError, ClientGone
from infra.serving.schemas import ChatRequest, CompletionRequest
from infra.serving.state import ServingState
from tasks.data.chat import render_ids
from tasks.engine.protocol import Delta, Done, Event, Failed, GenerationRequest, QueueFullError, Sampling, TokenLogprob
from tasks.engine.structured import GrammarError, RowConstraint, format_grammar


async def prepare(state: ServingState, body: ChatRequest | CompletionRequest) -> GenerationRequest:
    """The engine request for ``body``: prompt ids, a max_tokens that fits the window, sampling, stops, and the
    LoRA adapter when ``model`` names one."""
    engine = state.engine
    adapter = resolve_adapter(state, body.model)
    if isinstance(body, ChatRequest):
        messages = tools.template_messages([m.as_template_input() for m in body.messages], body, tools.mode(body))
        ids = await state.off_loop(render_ids, engine.tokenizer, messages, True)
    else:
        ids = (await state.off_loop(lambda: engine.tokenizer(body.text, add_special_tokens=False)))["input_ids"]
    room = engine.context_length - len(ids)
    if room < 1:
        raise ApiError(400, f"the prompt has {len(ids)} tokens and leaves no room in the context window of "
                       f"{engine.context_length} tokens", param="messages" if isinstance(body, ChatRequest)
                       else "prompt", code="context_length_exceeded")
    max_tokens = min(body.requested_max_tokens() or state.settings.default_max_tokens, room)
    temperature = float(body.temperature or 0.0)
    sampling = Sampling(temperature, float(body.top_p or 1.0), body.seed, min(body.min_tokens, max_tokens))
    constraint = await structured_output(state, body)
    return GenerationRequest(ids, max_tokens, sampling, body.stop or [], top_logprobs=body.top_logprobs_k(),
                             adapter=adapter, constraint=constraint)


async def structured_output(state: ServingState, body: ChatRequest | CompletionRequest) -> RowConstraint | None:
    """The grammar state of a tool call (infra/serving/tools.py) or of a ``response_format`` other than text
    (compiled off the event loop), else None; a schema the compiler refuses, or an engine that cannot mask
    tokens, is a 400."""
    how = tools.mode(body)
    fmt = getattr(body, "response_format", None)
    if how is not None:
        param, wanted = "tools", {"type": "json_schema",
                                  "json_schema": {"name": "tool_call", "schema": tools.answer_schema(body, how)}}
    elif fmt is not None and fmt.structured:
        param, wanted = "response_format", fmt.model_dump(by_alias=True)
    else:
        return None
    constraints = getattr(state.engine, "constraints", None)
    if constraints is None:
        raise ApiError(400, f"{'tool calls' if how else 'structured output'} need the continuous scheduler, which "
                       "this model's decoder does not support (it is served with onnxruntime-genai batches)",
                       param=param)
    try:
        grammar = await state.off_loop(format_grammar, wanted)
        return await state.off_loop(constraints.matcher, grammar)
    except GrammarError as exc:
        raise ApiError(400, str(exc).replace("response_format", param, 1), param=param) from None


def resolve_adapter(state: ServingState, model: str | None) -> str | None:
    """The LoRA adapter ``model`` asks for: the served name (or no ``model``) means the adapter of that same name
    where there is one (a registry adapter-only release), else the base alone; an adapter's name means that
    adapter; a name this server does not serve is a 404 that lists what it does."""
    adapters = state.engine.adapters
    if model in (None, *state.settings.served_names()):
        return state.settings.name if state.settings.name in adapters else None
    if model in adapters:
        return model
    others = [a for a in adapters if a != state.settings.name]
    also = f" and the LoRA adapters {others}" if others else ""
    raise ApiError(404, f"unknown model {model!r}; this server serves {state.settings.name!r}{also}",
                   param="model", code="model_not_found")


@dataclass
class Result:
    """A finished request: its Done event and every token's logprobs."""

    done: Done
    logprobs: list[TokenLogprob] = field(default_factory=list)


class Generation:
    """A submitted request seen from the event loop: its events as an async iterator, and cancel."""

    def __init__(self, state: ServingState, request: GenerationRequest,
                 on_done: Callable[[Done], None] | None = None):
        self.state, self.request, self.finished, self.on_done = state, request, False, on_done
        loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        request.emit = lambda event: loop.call_soon_threadsafe(self._events.put_nowait, event)
        try:
            state.engine.submit(request)
        except QueueFullError:
            raise ApiError(503, "server busy: request queue is full", "server_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None

    async def events(self) -> AsyncIterator[Delta | Done]:
        """Deltas, then Done; Failed raises a 500. Leaving early cancels the request in the engine."""
        try:
            while True:
                event = await self._events.get()
                if isinstance(event, Failed):
                    self.finished = True
                    raise ApiError(500, event.message, "server_error")
                if isinstance(event, Done):
                    self.finished = True
                    self._count(event)
                    if self.on_done:
                        self.on_done(event)
                yield event
                if self.finished:
                    return
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop generating unless the answer is complete (idempotent)."""
        if not self.finished:
            self.finished = True
            self.state.engine.cancel(self.request)

    async def result(self) -> Result:
        """Wait for the whole answer."""
        logprobs: list[TokenLogprob] = []
        async for event in self.events():
            if isinstance(event, Delta):
                logprobs += event.logprobs
            else:
                return Result(event, logprobs)
        raise ApiError(500, "generation ended without a result", "server_error")

    async def collect(self, receive: Receive) -> Result:
        """The whole answer, or ClientGone (and the request cancelled) if the client disconnects first."""
        answer = asyncio.ensure_future(self.result())
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if answer.done():
            return answer.result()
        answer.cancel()
        self.cancel()
        raise ClientGone

    def _count(self, done: Done) -> None:
        metrics = self.state.metrics
        metrics.tokens.labels("prompt").inc(done.prompt_tokens)
        metrics.tokens.labels("completion").inc(done.completion_tokens)
        metrics.ttft.observe(done.ttft_s)


class EventStream(StreamingResponse):
    """Server-sent events of one generation; however the response ends, an unfinished generation is cancelled.

    Cancelling here rather than in the event generator's ``finally`` matters: Starlette cancels a stream while it
    may be suspended at a ``yield``, and such a generator is only closed whenever it is garbage-collected.
    """

    def __init__(self, events: AsyncIterator[str], generation: Generation):
        super().__init__(events, media_type="text/event-stream")
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
