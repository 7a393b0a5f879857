"""The serve stage's typed config: `tuneforge serve --config serve.yaml`, flags override it.

    model: smollm2-135m
    adapters: {tickets-v1: runs/lora}        # loaded at start (trusted: the operator's paths)
    models_dir: runs                          # POST /v1/adapters may load only from under here
    api_keys:
      - sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
        models: [support]                     # this key may call only these models/routes
    admin_key_sha256: ...                     # for /v1/adapters, /v1/routes, /admin/reload
    routes:
      support: {variants: {smollm2-135m: 90, tickets-v1: 10}}
    monitor: {drift_p: 0.01, max_invalid_rate: 0.1, min_feedback: 20}   # see tuneforge/monitor/config.py

Keys are kept in files only as the sha256 of the key (`printf %s KEY | sha256sum`); a plain
key is given with `--api-key` / `--admin-key` and hashed at once, so no plain key is ever held
in the config. Unknown keys are errors, like every tuneforge config.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tuneforge.config import Strict, build_config
from tuneforge.jobs.config import JobsConfig
from tuneforge.models.resolve import DEFAULT_MODEL
from tuneforge.monitor.config import MonitorConfig
from tuneforge.paths import home

# long enough for a fine-tuning job's model, ft:<base>:<suffix>:<job id> (tuneforge.jobs); never a path
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,191}$")
NAME_RULE = "1-192 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def default_log_db() -> Path:
    return home() / "serve" / "log.db"


class ApiKey(Strict):
    sha256: str = Field(description="hex sha256 of the key (printf %s KEY | sha256sum)")
    models: list[str] | None = Field(None, description="models or routes this key may call; none: all")

    @model_validator(mode="before")
    @classmethod
    def _no_plain_keys(cls, data: Any) -> Any:
        if isinstance(data, str):  # a bare digest is shorthand for {sha256: ...}
            return {"sha256": data}
        if isinstance(data, dict) and "key" in data:
            raise ValueError("plain keys are not kept in config files: store the key's sha256 "
                             "(printf %s KEY | sha256sum) under 'sha256', or pass the key with --api-key")
        return data

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not HEX64.match(value):
            raise ValueError("expected 64 hex digits (the sha256 of the key)")
        return value


class RouteConfig(Strict):
    """A rollout: requests for the route's name go to its variants in these percentages."""

    variants: dict[str, float] = Field(description="served model (base or adapter) -> percent; sums to 100")

    @field_validator("variants")
    @classmethod
    def _percentages(cls, variants: dict[str, float]) -> dict[str, float]:
        if not variants:
            raise ValueError("a route needs at least one variant")
        bad = [f"{name}={pct}" for name, pct in variants.items() if not 0 <= pct <= 100]
        if bad:
            raise ValueError(f"percentages lie between 0 and 100, got {', '.join(bad)}")
        total = sum(variants.values())
        if abs(total - 100) > 1e-6:
            raise ValueError(f"percentages must sum to 100, these sum to {total:g}")
        return variants


class ServeConfig(Strict):
    model: str = Field(DEFAULT_MODEL, description="base model: built-in name, model folder or hub id")
    model_name: str | None = Field(None, description="the name clients use for the base model (default: model)")
    adapters: dict[str, Path] = Field(default_factory=dict, description="adapters loaded at start: name -> run folder")
    models_dir: Path | None = Field(None, description="run-time adapter loads must resolve inside this folder; "
                                    "unset: run-time loading is off")
    backend: Literal["tuneforge", "vllm"] = "tuneforge"
    host: str = Field("127.0.0.1", description="bind address; loopback unless you mean to expose it")
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[ApiKey] = Field(default_factory=list, description="none: no key needed")
    admin_key_sha256: str | None = Field(None, description="sha256 of the admin key; unset: admin routes are off")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_queue: int = Field(256, ge=1, description="requests waiting in the engine; more get 429")
    max_batch: int = Field(32, ge=1, description="sequences decoded together")
    max_adapters: int = Field(8, ge=1, description="adapters held in memory (least recently used go first)")
    request_timeout_s: float = Field(300.0, gt=0, description="a request still generating after this gets 504")
    max_tokens_cap: int = Field(2048, ge=1, description="largest max_tokens a request may ask for (more: 400)")
    max_messages: int = Field(1000, ge=1, description="most messages in one chat request (more: 400)")
    max_prompt_tokens: int = Field(8192, ge=1, description="longest rendered prompt (more: 400)")
    shutdown_grace_s: float = Field(60.0, ge=0, description="how long a shutdown waits for in-flight requests")
    routes: dict[str, RouteConfig] = Field(default_factory=dict, description="rollouts: name -> variants")
    log_db: Path = Field(default_factory=default_log_db, description="SQLite file logging every request")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="tuneforge monitor's thresholds and "
                                   "retrain's promotion steps (tuneforge.monitor.config)")
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="the fine-tuning jobs API (tuneforge.jobs)")

    @field_validator("admin_key_sha256")
    @classmethod
    def _admin_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not HEX64.match(value):
            raise ValueError("expected 64 hex digits (the sha256 of the admin key)")
        return value

    @field_validator("adapters", "routes")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [name for name in value if not NAME.match(name)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: a name is {NAME_RULE}")
        return value

    @model_validator(mode="after")
    def _routes_do_not_shadow_models(self) -> "ServeConfig":
        clash = sorted(set(self.routes) & (set(self.adapters) | {self.model_name or self.model}))
        if clash:
            raise ValueError(f"route names must differ from model and adapter names: {', '.join(clash)}")
        for name, route in self.routes.items():
            nested = sorted(set(route.variants) & set(self.routes))
            if nested:
                raise ValueError(f"routes.{name}: a variant is a served model, not another route ({', '.join(nested)})")
        return self


def load_serve_config(path: Path | None = None, overrides: list[str] | None = None,
                      values: dict[str, Any] | None = None, api_keys: list[str] | tuple[str, ...] = (),
                      admin_key: str | None = None) -> ServeConfig:
    """YAML < flags < --set, then plain keys from the command line, hashed on the spot and added to
    the file's keys. Called again on a reload, so the flags keep applying."""
    config = build_config(ServeConfig, path, overrides, values)
    if api_keys:
        config.api_keys = [*config.api_keys, *(ApiKey(sha256=sha256_hex(k)) for k in api_keys)]
    if admin_key:
        config.admin_key_sha256 = sha256_hex(admin_key)
    return config
