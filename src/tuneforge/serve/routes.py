"""The OpenAI routes: /v1/models, /v1/chat/completions, /v1/completions; plus /v1/feedback,
/health and /metrics. Each route: check the key, parse the body into its protocol model,
route to a variant, hand a `Call` to serve.generate, shape the answer.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")
    client.chat.completions.create(model="support", user="alice", messages=[{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import threading
import time
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from jinja2.exceptions import TemplateError
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from tuneforge.models.template import encode_prompt
from tuneforge.serve import protocol as p
from tuneforge.serve.app import Service, new_id, prompt_json
from tuneforge.serve.errors import ApiError, bad_request, from_validation, model_not_found
from tuneforge.serve.generate import Call, Target, chat_response, complete, completion_response, open_streams, sse
from tuneforge.serve.metrics import CONTENT_TYPE
from tuneforge.serve.sse import EventStream, until_done_or_gone

M = TypeVar("M", bound=BaseModel)
MAX_CHOICES = 64  # prompts x n in one request: each is a sequence in the engine's batch
# Prompts are tokenised in worker threads (keeping the event loop free), one at a time: a
# Hugging Face fast tokenizer may fail ("Already borrowed") when two threads call it at once.
_TOKENIZE = threading.Lock()


def _tokenize(fn, *args) -> Any:
    with _TOKENIZE:
        return fn(*args)

router = APIRouter()


def service(request: Request) -> Service:
    return request.app.state.serve


async def read_json(request: Request, model: type[M]) -> M:
    """The body as `model`; malformed JSON, wrong types and unknown fields are one 400.
    Reading goes through serve.gate's size limit (413)."""
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


def _info(request: Request, **values) -> None:
    request.state.info.update(values)


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    s = service(request)
    caller = s.keys.caller(request.headers.get("authorization"))
    names = [*s.served(), *s.rollout.names()]
    cards = p.ModelList(data=[p.ModelCard(id=n) for n in names if caller.may_use(n)])
    return JSONResponse(cards.model_dump(mode="json"))


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    s = service(request)
    caller = s.keys.caller(request.headers.get("authorization"))
    if not caller.may_use(model_id) or model_id not in [*s.served(), *s.rollout.names()]:
        raise model_not_found(model_id)
    return JSONResponse(p.ModelCard(id=model_id).model_dump(mode="json"))


def _call(s: Service, endpoint: str, target: Target, prompts: list[list[int]], prompt_log: str, body) -> Call:
    default = p.COMPLETIONS_DEFAULT_MAX_TOKENS if endpoint == "completions" else None
    return Call(id=new_id(endpoint), endpoint=endpoint, target=target, prompts=prompts, prompt_log=prompt_log,
                n=body.n, max_tokens=s.budget(body.completion_budget(), _budget_param(body), default),
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, stop=body.stops(),
                user=body.rollout_key(), timeout_s=s.config.request_timeout_s,
                include_usage=body.include_usage(), stream=bool(body.stream))


def _budget_param(body) -> str:
    return "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"


def _check_prompt(s: Service, ids: list[int], what: str) -> None:
    limit = s.config.max_prompt_tokens
    if len(ids) > limit:
        raise ApiError(400, f"This server's maximum prompt length is {limit} tokens. However, your {what} resulted "
                       f"in {len(ids)} tokens. Please shorten it.", "messages" if what == "messages" else "prompt",
                       "context_length_exceeded")


async def _answer(request: Request, s: Service, call: Call) -> Response:
    _info(request, id=call.id)
    headers = {"x-tuneforge-variant": call.target.served, "x-request-id": call.id}
    if call.stream:
        primed = await open_streams(call, s.engine)  # refusals (429, 503) still get their status here
        events, abandon = sse(call, primed, s.finish)
        s.streaming.add(call.id)
        return EventStream(events, headers, on_close=abandon)
    choices = await until_done_or_gone(request.receive, complete(call, s.engine))
    s.finish(call, 200, choices, None)
    shaped = chat_response(call, choices) if call.endpoint == "chat" else completion_response(call, choices)
    return JSONResponse(shaped.model_dump(mode="json"), headers=headers)


async def _accept(request: Request, model):
    """The steps every generation route starts with: the service, the caller's key, the parsed body."""
    s = service(request)
    caller = s.keys.caller(request.headers.get("authorization"))
    body = await read_json(request, model)
    _info(request, model=body.model, user=body.rollout_key(), stream=bool(body.stream))
    return s, caller, body


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    s, caller, body = await _accept(request, p.ChatCompletionRequest)
    if len(body.messages) > s.config.max_messages:
        raise bad_request(f"Too many messages: {len(body.messages)}. This server takes at most "
                          f"{s.config.max_messages} per request (max_messages).", "messages")
    target = s.resolve(body.model, caller, body.rollout_key())
    turns = [m.as_turn() for m in body.messages]
    _info(request, route=target.route, variant=target.served, prompt=prompt_json(turns))
    tokenizer = s.engine.tokenizer(target.served)  # the template the served adapter was trained with
    try:
        # off the event loop: a long conversation takes a while to render and tokenize
        ids = await anyio.to_thread.run_sync(_tokenize, encode_prompt, tokenizer, turns)
    except (TemplateError, ValueError) as exc:
        raise bad_request(f"The model's chat template refused these messages: {exc}", "messages",
                          "template_error") from None
    _check_prompt(s, ids, "messages")
    call = _call(s, "chat", target, [ids], request.state.info["prompt"], body)
    return await _answer(request, s, call)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    s, caller, body = await _accept(request, p.CompletionRequest)
    prompts = body.prompts()
    if len(prompts) * body.n > MAX_CHOICES:
        raise bad_request(f"Too many completions in one request: {len(prompts)} prompts x n={body.n}; at most "
                          f"{MAX_CHOICES}.", "prompt")
    target = s.resolve(body.model, caller, body.rollout_key())
    _info(request, route=target.route, variant=target.served, prompt=prompt_json(prompts))
    tokenizer = s.engine.tokenizer(target.served)
    # special tokens added as `tuneforge generate` adds them to a plain prompt (BOS where the model has one)
    ids = await anyio.to_thread.run_sync(_tokenize, lambda: [tokenizer(text)["input_ids"] for text in prompts])
    for one in ids:
        _check_prompt(s, one, "prompt")
    call = _call(s, "completions", target, ids, request.state.info["prompt"], body)
    return await _answer(request, s, call)


@router.post("/v1/feedback")
async def feedback(request: Request) -> JSONResponse:
    s = service(request)
    s.keys.caller(request.headers.get("authorization"))
    body = await read_json(request, p.Feedback)
    row = await anyio.to_thread.run_sync(s.log.feedback, body.id, body.score, body.label, body.correction,
                                         body.id in s.streaming)
    if row is None:
        raise ApiError(404, f"No completion with id '{body.id}' in the request log.", "id", "not_found")
    return JSONResponse({"object": "feedback", "id": row, "completion_id": body.id, "created": int(time.time())})


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    s = service(request)
    if s.life.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ok", "models": s.served(), "routes": s.rollout.names()})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(service(request).metrics.render(), media_type=CONTENT_TYPE)
