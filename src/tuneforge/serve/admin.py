"""Admin routes (admin key only): adapters and rollout routes at run time, config reload.

    curl -H "Authorization: Bearer $ADMIN" -d '{"name": "tickets-v2", "path": "tickets-v2"}' \\
         http://127.0.0.1:8000/v1/adapters                       # loads models_dir/tickets-v2
    curl -X DELETE -H "Authorization: Bearer $ADMIN" http://127.0.0.1:8000/v1/adapters/tickets-v2
    curl -X PUT -H "Authorization: Bearer $ADMIN" -d '{"variants": {"smollm2-135m": 50, "tickets-v2": 50}}' \\
         http://127.0.0.1:8000/v1/routes/support
    curl -X POST -H "Authorization: Bearer $ADMIN" http://127.0.0.1:8000/admin/reload   # or: kill -HUP <pid>

A run-time adapter path must lie inside the configured models_dir: `..` is refused outright,
and the path is resolved (symlinks followed) and checked again, so a link cannot lead out.
A reload takes the file's routes and keys (replacing routes set with PUT) and says which
other changed keys need a restart.
"""

from __future__ import annotations

from pathlib import Path, PurePath

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import Request

from tuneforge.errors import TuneforgeError
from tuneforge.serve import protocol as p
from tuneforge.serve.app import Service
from tuneforge.serve.config import NAME, NAME_RULE, RouteConfig
from tuneforge.serve.errors import ApiError, bad_request, from_validation
from tuneforge.serve.routes import read_json, service

router = APIRouter()


def _admin(request: Request) -> Service:
    s = service(request)
    s.keys.require_admin(request.headers.get("authorization"))
    return s


def confine(models_dir: Path | None, raw: str) -> Path:
    """The adapter folder `raw` names, provided it lies inside `models_dir`."""
    if models_dir is None:
        raise ApiError(403, "Run-time adapter loading is off: set models_dir in the server's config.",
                       code="adapter_loading_disabled")
    if not raw or "\x00" in raw:
        raise bad_request("path is empty or holds a NUL byte.", "path")
    given = PurePath(raw)
    if ".." in given.parts:
        raise bad_request("path may not contain '..': give a folder inside the server's models_dir.", "path",
                          "path_outside_models_dir")
    root = Path(models_dir).resolve()
    candidate = Path(given) if given.is_absolute() else root / given
    outside = bad_request("path lies outside the server's models_dir.", "path", "path_outside_models_dir")
    if not candidate.is_relative_to(root):  # checked before touching the disk: no probing outside
        raise outside
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise bad_request(f"no adapter folder at '{raw}' under the server's models_dir.", "path",
                          "adapter_not_found") from None
    if not resolved.is_relative_to(root):  # a symlink inside that points out
        raise outside
    if not resolved.is_dir():
        raise bad_request(f"'{raw}' is not a folder.", "path", "adapter_not_found")
    return resolved


def _adapter_card(s: Service, name: str) -> dict:
    return {"id": name, "object": "adapter", "path": s.adapter_paths.get(name)}


@router.get("/v1/adapters")
async def list_adapters(request: Request) -> JSONResponse:
    s = _admin(request)
    return JSONResponse({"object": "list", "data": [_adapter_card(s, n) for n in s.served()[1:]]})


@router.post("/v1/adapters")
async def load_adapter(request: Request) -> JSONResponse:
    s = _admin(request)
    body = await read_json(request, p.AdapterLoad)
    if not NAME.match(body.name):
        raise bad_request(f"an adapter name is {NAME_RULE}.", "name")
    if body.name in s.served() or body.name in s.rollout:
        raise ApiError(409, f"'{body.name}' is already a served model or route; unload it first or pick another "
                       "name.", "name", "name_taken")
    path = confine(s.config.models_dir, body.path)
    try:
        # loading weights takes a while: off the event loop, so streams keep flowing
        await anyio.to_thread.run_sync(s.engine.load_adapter, body.name, str(path))
    except TuneforgeError as exc:  # not_a_model, not_an_adapter, base_mismatch, ...
        raise bad_request("; ".join(prob.message for prob in exc.problems), "path", exc.problems[0].code) from None
    s.adapter_paths[body.name] = str(path)
    return JSONResponse(_adapter_card(s, body.name), status_code=201)


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, request: Request) -> JSONResponse:
    s = _admin(request)
    served = s.served()
    if name not in served:
        raise ApiError(404, f"No adapter named '{name}' is loaded.", "name", "adapter_not_found")
    if name == served[0]:
        raise bad_request("the base model cannot be unloaded.", "name")
    users = [route for route, variants in s.rollout.table().items() if name in variants]
    if users:
        raise ApiError(409, f"'{name}' is a variant of route(s) {', '.join(users)}; change those first.", "name",
                       "adapter_in_use")
    await anyio.to_thread.run_sync(s.engine.unload_adapter, name)
    s.adapter_paths.pop(name, None)
    return JSONResponse({"id": name, "object": "adapter", "deleted": True})


@router.get("/v1/routes")
async def list_routes(request: Request) -> JSONResponse:
    s = _admin(request)
    return JSONResponse({"object": "list", "data": [{"id": n, "object": "route", "variants": v}
                                                    for n, v in s.rollout.table().items()]})


@router.put("/v1/routes/{name}")
async def put_route(name: str, request: Request) -> JSONResponse:
    s = _admin(request)
    body = await read_json(request, p.RouteUpdate)
    if not NAME.match(name):
        raise bad_request(f"a route name is {NAME_RULE}.", "name")
    try:
        route = RouteConfig(variants=body.variants)
    except ValidationError as exc:
        raise from_validation(exc) from None
    try:
        s.check_routes({name: route})
    except TuneforgeError as exc:
        raise bad_request("; ".join(prob.message for prob in exc.problems), "variants", exc.problems[0].code) from None
    s.rollout.set(name, route)
    return JSONResponse({"id": name, "object": "route", "variants": route.variants})


@router.delete("/v1/routes/{name}")
async def delete_route(name: str, request: Request) -> JSONResponse:
    s = _admin(request)
    if name not in s.rollout:
        raise ApiError(404, f"No route named '{name}'.", "name", "route_not_found")
    s.rollout.replace({k: RouteConfig(variants=v) for k, v in s.rollout.table().items() if k != name})
    return JSONResponse({"id": name, "object": "route", "deleted": True})


@router.post("/admin/reload")
async def reload(request: Request) -> JSONResponse:
    s = _admin(request)
    return JSONResponse(reload_config(s))


def reload_config(s: Service) -> dict:
    """Re-read the config file and apply its routes and keys (also what SIGHUP does)."""
    if s.reload is None:
        raise bad_request("this server was not started from a config file; nothing to reload.", None,
                          "no_config_file")
    try:
        restart = s.apply(s.reload())
    except TuneforgeError as exc:
        raise ApiError(400, "the config was not applied: " + "; ".join(prob.line() for prob in exc.problems),
                       None, exc.problems[0].code) from None
    return {"object": "reload", "routes": s.rollout.table(), "restart_required": restart}
