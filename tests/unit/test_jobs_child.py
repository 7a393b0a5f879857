"""A job through the real job process (prepare + train in a child) on the tiny random model:
the OpenAI hyperparameters reach the train stage's config, real metrics and checkpoints become
events, and the adapter is handed to the engine under its fine_tuned_model."""

from __future__ import annotations

import json

import yaml

from jobs_fake import Server, events, upload, wait_status

CHATS = "".join(json.dumps({"messages": [{"role": "user", "content": f"How do I reset my password {i}?"},
                                         {"role": "assistant", "content": ["billing", "technical"][i % 2]}]}) + "\n"
                for i in range(8))


def test_a_job_trains_for_real_in_a_child_process(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    with Server(AutoTokenizer.from_pretrained(tiny_model), tmp_path, model=tiny_model) as server:
        client = server.client
        f = upload(client, CHATS)
        job = client.fine_tuning.jobs.create(training_file=f.id, model="tiny", seed=5, suffix="unit",
                                             hyperparameters={"n_epochs": 2, "batch_size": 4,
                                                              "learning_rate_multiplier": 0.5})
        done = wait_status(client, job.id, "succeeded", "failed", timeout=240)
        assert done.status == "succeeded", done.error
        run = server.api.folders.run(job.id) / "run"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["epochs"], config["batch_size"], config["seed"], config["method"], config["objective"]) == (
            2, 4, 5, "lora", "sft")
        assert abs(config["learning_rate"] - 1e-4) < 1e-12  # 0.5 x lora's 2e-4
        assert config["model"] == tiny_model
        assert done.hyperparameters.learning_rate_multiplier == 0.5
        assert done.trained_tokens == json.loads((run / "summary.json").read_text())["train_tokens"]
        assert [e.data["step"] for e in events(client, job.id) if e.type == "metrics"] == [1, 2, 3, 4]
        assert server.engine.adapters[done.fine_tuned_model] == str(run / "adapter")
        assert done.fine_tuned_model == f"ft:tiny:unit:{job.id}"
