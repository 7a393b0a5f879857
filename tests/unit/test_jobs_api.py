"""The fine-tuning jobs API through the real `openai` client against a live server (fake engine,
fake job process from jobs_fake.py): files, the job lifecycle, events, checkpoints, pagination,
cancel, pause/resume, a bad file's line-numbered error, a restart mid-job, and error envelopes.
Real training runs in tests/unit/test_jobs_child.py (tiny model) and tests/integration."""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from jobs_fake import Server, events, fake_command, upload, wait_status
from serve_fake import BASE, wait_for
CHATS = "".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                         {"role": "assistant", "content": f"answer {i}"}]}) + "\n" for i in range(8))
PAIRS = "".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n" for i in range(6))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(autouse=True)
def fake_jobs(monkeypatch):
    """Every job runs jobs_fake.py instead of prepare + train."""
    from tuneforge.jobs import worker

    monkeypatch.setattr(worker, "child_command", fake_command)
    monkeypatch.setenv("FAKE_STEP_S", "0.02")


@pytest.fixture
def server(tokenizer, tmp_path):
    with Server(tokenizer, tmp_path) as s:
        yield s


def test_the_guide_flow_files_job_events_checkpoints_and_the_model_is_served(server):
    client = server.client
    f = upload(client, CHATS)
    assert (f.object, f.purpose, f.status, f.filename, f.bytes) == ("file", "fine-tune", "processed", "train.jsonl",
                                                                   len(CHATS.encode()))
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).read() == CHATS.encode()
    assert [x.id for x in client.files.list()] == [f.id]

    job = client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 2},
                                         suffix="tickets", seed=7, metadata={"team": "support"})
    assert (job.object, job.status, job.model, job.seed, job.training_file) == (
        "fine_tuning.job", "validating_files", BASE, 7, f.id)
    assert job.fine_tuned_model is None and job.finished_at is None and job.metadata == {"team": "support"}
    done = wait_status(client, job.id, "succeeded", "failed")
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{BASE}:tickets:{job.id}"
    assert done.trained_tokens == 800 and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 8
    assert done.method.type == "supervised"

    # servable at once, under its name, and listed
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content.startswith(f"Hello from {done.fine_tuned_model}.")

    log = events(client, job.id)
    messages = [e.message for e in log]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert "Job queued" in messages and "Fine-tuning job started" in messages
    steps = [e for e in log if e.type == "metrics"]
    assert [e.data["step"] for e in steps] == list(range(1, 9))
    assert steps[0].data["total_steps"] == 8 and steps[0].message == "Step 1/8: training loss=2.0000"
    assert messages[-1] == "The job has successfully completed"
    assert f"New fine-tuned model created: {done.fine_tuned_model}" in messages

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=100))
    assert [c.step_number for c in ckpts] == list(range(8, 0, -1))  # newest first
    assert ckpts[0].object == "fine_tuning.job.checkpoint" and ckpts[0].metrics.train_loss == 0.25
    assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-8"

    results = client.files.retrieve(done.result_files[0])
    assert results.purpose == "fine-tune-results"
    csv = client.files.content(results.id).read().decode().splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(csv) == 9


def test_a_bad_file_is_stored_but_its_job_fails_at_validation_naming_the_lines(server):
    client = server.client
    lines = CHATS.splitlines()
    bad = "\n".join([lines[0], "{not json", lines[1], json.dumps({"messages": []}), lines[2]]) + "\n"
    f = upload(client, bad, "bad.jsonl")
    assert f.status == "error" and "line 2: invalid_json" in f.status_details
    job = client.fine_tuning.jobs.create(training_file=f.id, model=BASE)
    failed = wait_status(client, job.id, "failed", "succeeded")
    assert failed.status == "failed"
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "2 of 5 lines are bad: line 2: invalid_json" in failed.error.message
    assert "line 4: " in failed.error.message
    errors = [e for e in events(client, job.id) if e.level == "error"]
    assert [e.data["line"] for e in errors[:-1]] == [2, 4]  # one event per bad line, then the failure
    assert errors[-1].message.startswith("Fine-tuning job failed")


def test_dpo_needs_preference_data_and_takes_beta(server):
    client = server.client
    chats = upload(client, CHATS)
    job = client.fine_tuning.jobs.create(training_file=chats.id, model=BASE, method={"type": "dpo"})
    failed = wait_status(client, job.id, "failed")
    assert "method dpo needs preference pairs" in failed.error.message

    pairs = upload(client, PAIRS, "pairs.jsonl")
    job = client.fine_tuning.jobs.create(training_file=pairs.id, model=BASE, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "tuneforge_method": "lora"}}})
    done = wait_status(client, job.id, "succeeded", "failed")
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
    spec = json.loads((server.api.folders.run(job.id) / "job.json").read_text())["spec"]
    assert (spec["method"], spec["beta"], spec["n_epochs"]) == ("dpo", 0.2, 1)


def test_list_pagination_newest_first_with_has_more(server):
    client = server.client
    f = upload(client, CHATS)
    created = [client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 1}).id
               for _ in range(5)]
    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == created[:-3:-1] and first.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, after=created[3]).data] == [created[2], created[1]]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2, after=created[1]).data] == [created[0]]
    assert not client.fine_tuning.jobs.list(limit=2, after=created[1]).has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == created[::-1]
    for job_id in created:
        wait_status(client, job_id, "succeeded")
    page = client.fine_tuning.jobs.list_events(created[0], limit=3)
    assert len(page.data) == 3 and page.has_more
    older = client.fine_tuning.jobs.list_events(created[0], limit=3, after=page.data[-1].id)
    assert older.data[0].created_at <= page.data[-1].created_at
    everything = [e.id for e in client.fine_tuning.jobs.list_events(created[0], limit=3)]
    assert len(everything) == len(set(everything)) == len(events(client, created[0]))


def test_jobs_run_one_at_a_time_in_queue_order(server, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    client = server.client
    f = upload(client, CHATS)
    ids = [client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 1}).id
           for _ in range(3)]
    seen_running = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = [client.fine_tuning.jobs.retrieve(i).status for i in ids]
        assert statuses.count("running") <= 1
        seen_running |= {i for i, s in zip(ids, statuses) if s == "running"}
        if all(s == "succeeded" for s in statuses):
            break
        time.sleep(0.02)
    finished = [client.fine_tuning.jobs.retrieve(i).finished_at for i in ids]
    assert finished == sorted(finished)


def test_cancel_stops_a_running_job_at_once_and_keeps_its_events(server, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    client = server.client
    f = upload(client, CHATS)
    job = client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 10})
    wait_for(lambda: any(e.type == "metrics" for e in events(client, job.id)), 20, "a training step")
    started = time.monotonic()
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and time.monotonic() - started < 5
    assert server.api.worker.running == {}
    messages = [e.message for e in events(client, job.id)]
    assert messages[-1] == "Job cancelled" and any(m.startswith("Step 1/40") for m in messages)
    with pytest.raises(openai.BadRequestError) as again:
        client.fine_tuning.jobs.cancel(job.id)
    assert again.value.code == "invalid_job_state"
    steps = len([m for m in messages if m.startswith("Step ")])
    time.sleep(0.8)
    assert len([e for e in events(client, job.id) if e.type == "metrics"]) == steps  # nothing trains on


def test_pause_keeps_the_checkpoint_and_resume_continues_from_it(server, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.15")
    client = server.client
    f = upload(client, CHATS)
    job = client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 2})
    wait_for(lambda: len(list(client.fine_tuning.jobs.checkpoints.list(job.id))) >= 2, 20, "two checkpoints")
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    at = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100))
    time.sleep(0.5)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_status(client, job.id, "succeeded", "failed")
    assert done.status == "succeeded"
    messages = [e.message for e in events(client, job.id)]
    assert f"Resuming training from checkpoint at step {at}" in messages
    steps = [e.data["step"] for e in events(client, job.id) if e.type == "metrics"]
    assert steps == list(range(1, 9))  # every step once: none lost, none repeated


def test_a_restart_puts_the_running_job_back_and_it_resumes(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.15")
    with Server(tokenizer, tmp_path) as first:
        f = upload(first.client, CHATS)
        running = first.client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 2})
        waiting = first.client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 1})
        wait_for(lambda: len(list(first.client.fine_tuning.jobs.checkpoints.list(running.id))) >= 2, 20, "checkpoints")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    with Server(tokenizer, tmp_path) as second:
        client = second.client
        first_done = wait_status(client, running.id, "succeeded", "failed")
        assert first_done.status == "succeeded"
        second_done = wait_status(client, waiting.id, "succeeded", "failed")
        assert second_done.finished_at >= first_done.finished_at  # the queue kept its order
        messages = [e.message for e in events(client, running.id)]
        assert any(m.startswith("The server is stopping") for m in messages)
        assert any(m.startswith("Resuming training from checkpoint at step") for m in messages)
        assert [e.data["step"] for e in events(client, running.id) if e.type == "metrics"] == list(range(1, 9))
    with Server(tokenizer, tmp_path) as third:  # succeeded jobs' models are served again after a restart
        assert first_done.fine_tuned_model in [m.id for m in third.client.models.list()]


def test_a_crashing_job_fails_without_taking_the_server_down(server):
    client = server.client
    crash = upload(client, CHATS.replace("question 1", "crash"))
    job = client.fine_tuning.jobs.create(training_file=crash.id, model=BASE)
    failed = wait_status(client, job.id, "failed")
    assert failed.error.code == "training_crashed" and "status 3" in failed.error.message
    refused = upload(client, CHATS.replace("question 1", "refuse"))
    job = client.fine_tuning.jobs.create(training_file=refused.id, model=BASE)
    failed = wait_status(client, job.id, "failed")
    assert (failed.error.code, failed.error.message) == ("too_long", "train.jsonl:2: too_long: 5000 tokens")
    assert any(e.message == "train.jsonl:3: too_long: 6000 tokens" for e in events(client, job.id))
    assert client.models.list().data  # still serving


def test_requests_are_checked_with_openai_error_envelopes(server):
    client = server.client
    f = upload(client, CHATS)
    cases = [
        (dict(training_file=f.id, model="gpt-4o-mini"), openai.BadRequestError, "model", "model_not_available"),
        (dict(training_file="file-nope", model=BASE), openai.BadRequestError, "training_file", "file_not_found"),
        (dict(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 0}), openai.BadRequestError,
         "hyperparameters.n_epochs", "invalid_value"),
        (dict(training_file=f.id, model=BASE, hyperparameters={"n_epochs": "3"}), openai.BadRequestError,
         "hyperparameters.n_epochs", None),
        (dict(training_file=f.id, model=BASE, hyperparameters={"tuneforge_method": "magic"}), openai.BadRequestError,
         "hyperparameters.tuneforge_method", "invalid_value"),
        (dict(training_file=f.id, model=BASE, method={"type": "reinforcement"}), openai.BadRequestError, "method",
         "invalid_value"),
        (dict(training_file=f.id, model=BASE, suffix="a/b"), openai.BadRequestError, "suffix", "invalid_value"),
        (dict(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 2},
              method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}),
         openai.BadRequestError, "method.supervised.hyperparameters", "invalid_value"),
    ]
    for kwargs, error, param, code in cases:
        with pytest.raises(error) as caught:
            client.fine_tuning.jobs.create(**kwargs)
        assert caught.value.body["param"] == param, kwargs
        if code:
            assert caught.value.code == code, kwargs
    with pytest.raises(openai.BadRequestError) as unknown:
        client.fine_tuning.jobs.create(training_file=f.id, model=BASE, extra_body={"epochs": 3})
    assert unknown.value.code == "unknown_parameter"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", io.BytesIO(CHATS.encode())), purpose="assistants")
    assert purpose.value.body["param"] == "purpose"
    with pytest.raises(openai.APIStatusError) as big:
        upload(client, "x" * (70 * 1024))
    assert big.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as cursor:
        client.fine_tuning.jobs.list(after="ftjob-nope")
    assert cursor.value.body["param"] == "after"


def test_file_names_are_labels_never_paths_and_files_in_use_stay(server):
    client = server.client
    f = upload(client, CHATS, "../../etc/evil.jsonl")
    assert f.filename == "evil.jsonl"
    stored = list((server.api.folders.files).iterdir())
    assert [p.name for p in stored] == [f"{f.id}.jsonl"]
    job = client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 1})
    client.fine_tuning.jobs.pause(job.id)
    with pytest.raises(openai.ConflictError):
        client.files.delete(f.id)
    client.fine_tuning.jobs.cancel(job.id)
    deleted = client.files.delete(f.id)
    assert (deleted.id, deleted.deleted) == (f.id, True)
    assert not (server.api.folders.files / f"{f.id}.jsonl").exists()


def test_the_jobs_cli_lists_shows_follows_and_cancels_over_http(server, run_cli, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    client = server.client
    f = upload(client, CHATS)
    job = client.fine_tuning.jobs.create(training_file=f.id, model=BASE, hyperparameters={"n_epochs": 5})
    url = ["--base-url", server.live.url + "/v1"]
    code, out, err = run_cli("jobs", "list", *url)
    assert code == 0 and job.id in out, err
    wait_status(client, job.id, "running")
    code, out, _ = run_cli("jobs", "show", job.id, *url)
    assert code == 0 and "status: running" in out and f"training_file: {f.id}" in out
    code, out, _ = run_cli("jobs", "events", job.id, *url)
    assert code == 0 and f"[info] Created fine-tuning job: {job.id}" in out.splitlines()[0]
    code, out, _ = run_cli("jobs", "cancel", job.id, *url)
    assert (code, out.strip()) == (0, f"{job.id}: cancelled")
    code, out, err = run_cli("jobs", "cancel", job.id, *url)
    assert code == 2 and err.startswith("invalid_job_state: ") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("jobs", "show", "ftjob-nope", *url)
    assert code == 2 and err.startswith("job_not_found: ")
    code, _, err = run_cli("jobs", "list", "--base-url", "http://127.0.0.1:9/v1")
    assert code == 2 and err.startswith("--base-url: jobs_unreachable: ")


def test_the_jobs_api_can_be_turned_off(tokenizer, tmp_path, run_cli):
    from serve_fake import FakeEngine, live_server
    from tuneforge.jobs.config import JobsConfig
    from tuneforge.serve.config import ServeConfig

    config = ServeConfig(model=BASE, log_db=tmp_path / "log.db", jobs=JobsConfig(enabled=False, dir=tmp_path / "j"))
    with live_server(config, FakeEngine(tokenizer)) as live:
        with pytest.raises(openai.NotFoundError):
            upload(live.client(), CHATS)
        code, _, err = run_cli("jobs", "list", "--base-url", live.url + "/v1")
        assert code == 2 and err.startswith("--base-url: jobs_not_served: ")
    assert not (tmp_path / "j").exists()
