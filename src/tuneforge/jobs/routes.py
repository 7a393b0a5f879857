"""OpenAI's fine-tuning API in tuneforge's server: /v1/files and /v1/fine_tuning/jobs.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-local")
    f = client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=f.id, model="smollm2-135m", hyperparameters={"n_epochs": 1})
    job = client.fine_tuning.jobs.retrieve(job.id)          # ... until job.status == "succeeded"
    client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])

`install(app, service)` mounts the routes on the serve stage's app and returns the `JobsApi`
(store, folders, worker) whose `start`/`stop` the app's lifespan calls. Routes stay thin:
check the key, parse, call the store or the worker, shape the answer with jobs.protocol;
failures leave as OpenAI error envelopes (serve.errors). A finished job's adapter is loaded
into the same engine under its fine_tuned_model, so /v1/models lists it and
/v1/chat/completions answers with it at once; at start, every succeeded job's adapter is
loaded again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.requests import Request

from tuneforge.errors import TuneforgeError
from tuneforge.jobs import protocol as p
from tuneforge.jobs.config import JobsConfig
from tuneforge.jobs.files import PURPOSES, Folders, save_upload
from tuneforge.jobs.spec import SpecError, from_request
from tuneforge.jobs.store import FileRow, JobRow, Store, UnknownCursor
from tuneforge.jobs.worker import StateError, Worker
from tuneforge.serve.errors import ApiError, bad_request
from tuneforge.serve.routes import read_json, service

log = logging.getLogger("tuneforge.jobs")
FILES_PATH = "/v1/files"
ORGANIZATION = "tuneforge"

router = APIRouter()


@dataclass
class JobsApi:
    config: JobsConfig
    store: Store
    folders: Folders
    worker: Worker

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        self.store.close()


def install(app, serve) -> JobsApi:
    """Mount the jobs routes on the serve app; `serve` is its tuneforge.serve.app.Service."""
    config: JobsConfig = serve.config.jobs
    folders = Folders(config.dir)
    store = Store(folders.db)

    def publish(job: JobRow, run: Path) -> str | None:
        """Serve a finished job's adapter under its fine_tuned_model; why not, when it cannot be."""
        name = job.spec.model_name(job.id)
        artifact = run / "adapter" if (run / "adapter").is_dir() else run
        try:
            serve.engine.load_adapter(name, str(artifact))
        except TuneforgeError as exc:
            return "; ".join(prob.message for prob in exc.problems)
        serve.adapter_paths[name] = str(artifact)
        return None

    worker = Worker(store, folders, publish, concurrency=config.concurrency, poll_s=config.poll_s)
    api = JobsApi(config, store, folders, worker)
    served = set(serve.served())
    for job in store.jobs_in("succeeded"):  # what earlier runs of this server trained, served again
        if job.fine_tuned_model and job.fine_tuned_model not in served:
            why = publish(job, folders.run(job.id) / "run")
            if why:
                log.warning("%s (%s) is not served: %s", job.fine_tuned_model, job.id, why)
    app.state.jobs = api
    app.include_router(router)
    return api


def _api(request: Request) -> JobsApi:
    service(request).keys.caller(request.headers.get("authorization"))  # any valid key may use the jobs API
    return request.app.state.jobs


def _limit(raw: str | None, default: int, most: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise bad_request(f"Invalid value for 'limit': expected a whole number from 1 to {most}.", "limit")
    return int(raw)


def _page(items: list[dict[str, Any]], more: bool) -> JSONResponse:
    page = p.Page(data=items, has_more=more, first_id=items[0]["id"] if items else None,
                  last_id=items[-1]["id"] if items else None)
    return JSONResponse(page.model_dump(mode="json"))


def _listing(fetch, request: Request, default: int, most: int):
    after = request.query_params.get("after")
    try:
        return fetch(after, _limit(request.query_params.get("limit"), default, most))
    except UnknownCursor:
        raise bad_request(f"Invalid value for 'after': no object with id '{after}' in this list.", "after",
                          "invalid_cursor") from None


# ---- files ----------------------------------------------------------------------------------

def file_object(row: FileRow) -> dict[str, Any]:
    return p.FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                        purpose=row.purpose, status=row.status, status_details=row.status_details).model_dump(mode="json")


def _file(api: JobsApi, file_id: str) -> FileRow:
    row = api.store.file(file_id)
    if row is None:
        raise ApiError(404, f"No such File object: {file_id}", "id", "file_not_found")
    return row


@router.post(FILES_PATH)
async def create_file(request: Request) -> JSONResponse:
    api = _api(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("Send the file as multipart/form-data with the fields 'file' and 'purpose'.", "file",
                          "invalid_content_type")
    async with request.form(max_files=1, max_fields=8) as form:
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "Missing required parameter: 'file'.", "file", "missing_required_parameter")
        if not isinstance(purpose, str) or not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter")
        if purpose not in PURPOSES:
            raise bad_request(f"Invalid value for 'purpose': this server stores files for fine-tuning only "
                              f"(purpose {', '.join(PURPOSES)}), got '{purpose}'.", "purpose")
        row = await anyio.to_thread.run_sync(save_upload, api.folders, api.store, upload.filename, upload.file,
                                             purpose)
    return JSONResponse(file_object(row))


@router.get(FILES_PATH)
async def list_files(request: Request) -> JSONResponse:
    api = _api(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("Invalid value for 'order': expected asc or desc.", "order")
    purpose = request.query_params.get("purpose")
    rows, more = _listing(lambda after, limit: api.store.files(purpose, after, limit, order), request, 10000, 10000)
    return _page([file_object(r) for r in rows], more)


@router.get(FILES_PATH + "/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> JSONResponse:
    return JSONResponse(file_object(_file(_api(request), file_id)))


@router.get(FILES_PATH + "/{file_id}/content")
async def file_content(file_id: str, request: Request) -> FileResponse:
    api = _api(request)
    row = _file(api, file_id)
    return FileResponse(api.folders.file(row), media_type="application/octet-stream", filename=row.filename)


@router.delete(FILES_PATH + "/{file_id}")
async def delete_file(file_id: str, request: Request) -> JSONResponse:
    api = _api(request)
    row = _file(api, file_id)
    users = api.store.jobs_using(file_id)
    if users:
        raise ApiError(409, f"File {file_id} is used by unfinished fine-tuning job(s) {', '.join(users)}; cancel "
                       "them or wait for them to finish.", "id", "file_in_use")
    api.store.delete_file(file_id)
    api.folders.file(row).unlink(missing_ok=True)
    return JSONResponse(p.FileDeleted(id=file_id, deleted=True).model_dump(mode="json"))


# ---- jobs -----------------------------------------------------------------------------------

def job_object(job: JobRow) -> dict[str, Any]:
    spec = job.spec
    return p.Job(
        id=job.id, created_at=job.created_at, error=job.error, fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at, hyperparameters=spec.hyperparameters(job.resolved), model=spec.model,
        organization_id=ORGANIZATION, result_files=job.result_files, seed=spec.seed, status=job.status,
        trained_tokens=job.trained_tokens, training_file=spec.training_file, validation_file=spec.validation_file,
        estimated_finish=job.estimated_finish, metadata=spec.metadata, method=spec.method_out(job.resolved),
        user_provided_suffix=spec.suffix).model_dump(mode="json")


def _job(api: JobsApi, job_id: str) -> JobRow:
    job = api.store.job(job_id)
    if job is None:
        raise ApiError(404, f"No fine-tuning job with id '{job_id}'.", "fine_tuning_job_id", "job_not_found")
    return job


@router.post("/v1/fine_tuning/jobs")
async def create_job(request: Request) -> JSONResponse:
    api = _api(request)
    body = await read_json(request, p.JobCreate)
    s = service(request)
    try:
        spec = from_request(body, s.engine.base, s.config.model)
    except SpecError as exc:
        raise ApiError(400, str(exc), exc.param, "model_not_available" if exc.param == "model" else "invalid_value")
    for param, file_id in (("training_file", spec.training_file), ("validation_file", spec.validation_file)):
        if file_id is None:
            continue
        row = api.store.file(file_id)
        if row is None:
            raise bad_request(f"invalid {param}: {file_id} (no such file; upload it with purpose fine-tune first).",
                              param, "file_not_found")
        if row.purpose != "fine-tune":
            raise bad_request(f"invalid {param}: {file_id} has purpose {row.purpose}, not fine-tune.", param)
    job = api.store.create_job(spec)
    api.store.add_event(job.id, f"Created fine-tuning job: {job.id}")
    api.worker.wake()
    return JSONResponse(job_object(job))


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request) -> JSONResponse:
    api = _api(request)
    jobs, more = _listing(api.store.jobs, request, 20, 100)
    return _page([job_object(j) for j in jobs], more)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: str, request: Request) -> JSONResponse:
    return JSONResponse(job_object(_job(_api(request), job_id)))


async def _control(request: Request, job_id: str, action: str) -> JSONResponse:
    api = _api(request)
    _job(api, job_id)
    try:
        job = await anyio.to_thread.run_sync(getattr(api.worker, action), job_id)
    except StateError as exc:
        raise bad_request(str(exc), "fine_tuning_job_id", "invalid_job_state") from None
    return JSONResponse(job_object(job))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    return await _control(request, job_id, "cancel")


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
async def pause_job(job_id: str, request: Request) -> JSONResponse:
    return await _control(request, job_id, "pause")


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def resume_job(job_id: str, request: Request) -> JSONResponse:
    return await _control(request, job_id, "resume")


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def list_events(job_id: str, request: Request) -> JSONResponse:
    api = _api(request)
    _job(api, job_id)
    events, more = _listing(lambda after, limit: api.store.events(job_id, after, limit), request, 20, 1000)
    return _page([p.Event(**e).model_dump(mode="json") for e in events], more)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(job_id: str, request: Request) -> JSONResponse:
    api = _api(request)
    job = _job(api, job_id)
    found, more = _listing(lambda after, limit: api.store.checkpoints(job_id, after, limit), request, 10, 100)
    name = job.spec.model_name(job.id)
    return _page([p.Checkpoint(id=c["id"], created_at=c["created_at"], fine_tuned_model_checkpoint=f"{name}:ckpt-step-"
                               f"{c['step']}", fine_tuning_job_id=job_id, metrics=c["metrics"],
                               step_number=c["step"]).model_dump(mode="json") for c in found], more)
