"""The serve stage's app: `create_app(config, engine)` returns a FastAPI app speaking OpenAI's API.

    from tuneforge.serve.app import create_app
    app = create_app(ServeConfig(model="smollm2-135m"), engine)   # any tuneforge.inference.api.Engine
    uvicorn.run(app, host="127.0.0.1", port=8000)                 # or: tuneforge serve (serve.runner)

`Service` holds what the routes share: the config, the engine, keys, rollout table, request
log, metrics and the shutdown state. Routes (serve.routes, serve.admin) stay thin: parse,
check the key, call the service, shape the answer; serve.errors makes every failure an
OpenAI error envelope. The app never builds an engine: the CLI does (serve.runner), tests
pass a fake one.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
from fastapi import FastAPI
from starlette.requests import Request

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.serve import errors
from tuneforge.serve.auth import Caller, Keys
from tuneforge.serve.config import ServeConfig
from tuneforge.serve.gate import Gate, Lifecycle
from tuneforge.serve.generate import Call, Choice, Target
from tuneforge.serve.log import Interaction, InteractionLog
from tuneforge.serve.metrics import Metrics
from tuneforge.serve.rollout import Rollout

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-"}


def new_id(endpoint: str) -> str:
    return ID_PREFIX.get(endpoint, "req-") + secrets.token_hex(12)


@dataclass
class Service:
    config: ServeConfig
    engine: Any  # tuneforge.inference.api.Engine
    keys: Keys
    rollout: Rollout
    log: InteractionLog
    metrics: Metrics
    life: Lifecycle
    reload: Callable[[], ServeConfig] | None = None  # re-reads the config file (POST /admin/reload, SIGHUP)
    adapter_paths: dict[str, str] = field(default_factory=dict)
    # ids of streams still running: the client has the id from the first chunk and may send
    # feedback before the answer (and so its log row) is complete
    streaming: set[str] = field(default_factory=set)

    def served(self) -> list[str]:
        return list(self.engine.models())

    def resolve(self, name: str, caller: Caller, user: str | None) -> Target:
        """Which served model answers a request for `name` (a route picks a variant)."""
        if not caller.may_use(name):
            raise errors.model_not_found(name)
        if name in self.rollout:
            return Target(name, self.rollout.pick(name, user), name)
        if name in self.served():
            return Target(name, name)
        raise errors.model_not_found(name)

    def budget(self, requested: int | None, param: str, default: int | None = None) -> int:
        """Tokens an answer may have: what the request asked for, else `default` (else the cap)."""
        cap = self.config.max_tokens_cap
        if requested is None:
            return min(default or cap, cap)
        if requested > cap:  # refused, not silently cut: the caller asked for something we will not do
            raise errors.bad_request(f"{param} is too large: {requested}. This server generates at most {cap} "
                                     f"tokens per answer (max_tokens_cap).", param)
        return requested

    def finish(self, call: Call, status: int, choices: list[Choice], error: str | None) -> None:
        """A call ended (answered, failed, abandoned): log it and count it."""
        self.log.record(call.interaction(status, choices, error))
        self.streaming.discard(call.id)  # after the record: feedback sent from now on queues behind its row
        self.metrics.observe(call.endpoint, call.target.requested, call.target.served, status,
                             latency_s=time.monotonic() - call.started, prompt_tokens=call.prompt_tokens(),
                             completion_tokens=sum(c.tokens for c in choices), first_token_s=call.first_token_s)

    def refused(self, request: Request, error: errors.ApiError) -> None:
        """A request that failed before or instead of an answer: log it (API endpoints) and count it."""
        info: dict[str, Any] = getattr(request.state, "info", {})
        endpoint = ENDPOINTS.get(request.url.path)
        self.metrics.observe(endpoint or "other", info.get("model"), info.get("variant"), error.status)
        if endpoint is None:
            return
        started = getattr(request.state, "started", None)
        self.log.record(Interaction(
            id=info.get("id") or new_id("refused"), time=info.get("arrived", time.time()), endpoint=endpoint,
            status=error.status, model=info.get("model"), route=info.get("route"), variant=info.get("variant"),
            user=info.get("user"), prompt=info.get("prompt"), error=error.message,
            latency_ms=(time.monotonic() - started) * 1000.0 if started else None, stream=bool(info.get("stream"))))

    def refused_at_gate(self, path: str, error: errors.ApiError) -> None:
        endpoint = ENDPOINTS.get(path)
        self.metrics.observe(endpoint or "other", None, None, error.status)
        if endpoint is not None:
            self.log.record(Interaction(id=new_id("refused"), time=time.time(), endpoint=endpoint,
                                        status=error.status, error=error.message))

    def check_routes(self, routes) -> None:
        """Every variant must be served, and no route may shadow a served model."""
        served = set(self.served())
        problems = []
        for name, route in routes.items():
            if name in served:
                problems.append(Problem("route_shadows_model", f"route '{name}' has the name of a served model",
                                        f"routes.{name}"))
            missing = [v for v in route.variants if v not in served]
            if missing:
                problems.append(Problem("unknown_variant", f"{', '.join(missing)} not served; served models: "
                                        f"{', '.join(sorted(served))}", f"routes.{name}"))
        if problems:
            raise TuneforgeError(problems)

    def apply(self, config: ServeConfig) -> list[str]:
        """Take a re-read config's routes and keys; returns the changed keys that need a restart."""
        self.check_routes(config.routes)
        self.rollout.replace(config.routes)
        self.keys = Keys(config.api_keys, config.admin_key_sha256)
        live = {"routes", "api_keys", "admin_key_sha256"}
        old, new = self.config.model_dump(), config.model_dump()
        self.config = config
        return sorted(k for k in new if k not in live and new[k] != old[k])


def create_app(config: ServeConfig, engine, reload: Callable[[], ServeConfig] | None = None) -> FastAPI:
    from tuneforge.serve import admin, routes

    life = Lifecycle()
    service = Service(config=config, engine=engine, keys=Keys(config.api_keys, config.admin_key_sha256),
                      rollout=Rollout(), log=InteractionLog(config.log_db),
                      metrics=Metrics(engine.stats, life, config.log_db), life=life, reload=reload)
    service.check_routes(config.routes)
    service.rollout.replace(config.routes)
    jobs = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if jobs is not None:
            jobs.start()
        yield
        if jobs is not None:
            await anyio.to_thread.run_sync(jobs.stop)  # running jobs go back to the queue
        # uvicorn gets here once connections have closed (serve.runner drains first)
        life.start_drain()
        try:
            await engine.close()
        finally:
            service.log.close()

    app = FastAPI(title="tuneforge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = service
    errors.install(app, on_error=service.refused)

    app.include_router(routes.router)
    app.include_router(admin.router)
    if config.jobs.enabled:  # the fine-tuning jobs API: /v1/files, /v1/fine_tuning/jobs
        from tuneforge.jobs.routes import FILES_PATH, install

        jobs = install(app, service)

    def body_limit(path: str) -> int:
        if jobs is not None and path == FILES_PATH:
            return service.config.jobs.max_upload_bytes
        return service.config.max_body_bytes

    # outermost: drain and body-size checks happen before any routing or body reading
    app.add_middleware(Gate, life=life, max_body_bytes=body_limit, on_refused=service.refused_at_gate)
    return app


def prompt_json(turns: list[dict[str, str]] | list[str]) -> str:
    return json.dumps(turns, ensure_ascii=False)
