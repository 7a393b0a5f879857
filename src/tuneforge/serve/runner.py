"""`tuneforge serve`: build the engine and the app, run uvicorn, shut down gracefully.

    tuneforge serve --model smollm2-135m --adapter tickets=runs/lora --api-key sk-local
    tuneforge serve --config serve.yaml            # routes, hashed keys, limits (serve.config)

Signals: the first SIGTERM or SIGINT starts a drain: new requests get 503 (and /health says
"draining", so a load balancer stops sending), requests in flight run to the end, for up to
shutdown_grace_s; then uvicorn stops and the engine closes. A second signal stops at once.
SIGHUP re-reads the config file's routes and keys, like POST /admin/reload.

Backends (`--backend`, `backend:` in the config): `tuneforge` (default) is our own engine
(inference.scheduler: continuous batching, every adapter's LoRA terms mixed in one batch,
on CPU or GPU). `vllm` runs the same API on vLLM's async engine with its LoRA support
(inference.vllm_engine: max_batch -> max_num_seqs, max_adapters -> max_loras, the
adapters' largest rank -> max_lora_rank) when vLLM is installed and a CUDA GPU is visible;
otherwise it stops with `vllm_unavailable`, naming what is missing. The vLLM engine was
written against vLLM's v1 API and tested with a fake of it; it has not yet been run on a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import signal
import threading
import time
from collections.abc import Callable

import uvicorn

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.serve.config import ServeConfig

log = logging.getLogger("tuneforge.serve")


def check_vllm() -> None:
    """`--backend vllm` needs vLLM and a CUDA GPU; say which is missing."""
    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("vllm is not installed (pip install vllm)")
    try:
        import torch

        gpu = torch.cuda.is_available()
    except Exception:
        gpu = False
    if not gpu:
        missing.append("no CUDA GPU is visible")
    if missing:
        raise TuneforgeError(Problem("vllm_unavailable", "--backend vllm needs vLLM and a GPU: " + "; ".join(missing)
                                     + "; on this machine use the default --backend tuneforge", "--backend"))


def build_engine(config: ServeConfig):
    """The generation engine the config asks for (tuneforge.inference.api.Engine)."""
    adapters = {name: str(path) for name, path in config.adapters.items()}
    limits = dict(name=config.model_name, max_batch=config.max_batch, max_queue=config.max_queue,
                  max_adapters=config.max_adapters)
    if config.backend == "vllm":
        check_vllm()
        from tuneforge.inference.vllm_engine import VllmEngine

        return VllmEngine(config.model, adapters, **limits)
    from tuneforge.inference.scheduler import Scheduler

    return Scheduler(config.model, adapters, **limits)


class GracefulServer(uvicorn.Server):
    """uvicorn with a drain before its own shutdown, and SIGHUP for a config reload."""

    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self.service = service
        self.drain_started: float | None = None
        self.reload_requested = False

    def begin_drain(self) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.service.life.start_drain()
            log.info("draining: %d request(s) in flight; new requests get 503", self.service.life.in_flight)

    def handle_exit(self, sig: int, frame) -> None:
        if self.drain_started is None:
            self.begin_drain()
            return
        super().handle_exit(sig, frame)  # a second signal: uvicorn's own, immediate shutdown

    @contextlib.contextmanager
    def capture_signals(self):
        hup = getattr(signal, "SIGHUP", None)
        if hup is None or threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        previous = signal.signal(hup, lambda *_: setattr(self, "reload_requested", True))
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(hup, previous)

    async def on_tick(self, counter: int) -> bool:
        if self.reload_requested:
            self.reload_requested = False
            self._reload()
        if self.drain_started is not None and not self.should_exit:
            waited = time.monotonic() - self.drain_started
            if self.service.life.in_flight == 0 or waited > self.service.config.shutdown_grace_s:
                self.should_exit = True
        return await super().on_tick(counter)

    def _reload(self) -> None:
        from tuneforge.serve.admin import reload_config
        from tuneforge.serve.errors import ApiError

        try:
            result = reload_config(self.service)
        except ApiError as exc:
            log.error("SIGHUP: %s", exc.message)
            return
        log.info("SIGHUP: config reloaded; routes %s; restart needed for: %s", result["routes"],
                 ", ".join(result["restart_required"]) or "nothing")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def make_server(config: ServeConfig, engine, reload: Callable[[], ServeConfig] | None = None,
                log_level: str = "info") -> GracefulServer:
    from tuneforge.serve.app import create_app

    app = create_app(config, engine, reload=reload)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, lifespan="on",
                        timeout_graceful_shutdown=5, access_log=False)
    return GracefulServer(uv, app.state.serve)


def serve(config: ServeConfig, reload: Callable[[], ServeConfig] | None = None, say=print) -> None:
    engine = build_engine(config)
    server = make_server(config, engine, reload)
    if not _is_loopback(config.host) and not config.api_keys:
        say(f"warning: listening on {config.host} with no API keys: anyone who can reach it can use it")
    say(f"serving {', '.join(engine.models())} on http://{config.host}:{config.port}/v1 "
        f"(log: {config.log_db})")
    server.run()
