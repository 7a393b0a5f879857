"""The serve stage: an OpenAI-compatible server over one base model and its adapters.

    tuneforge serve --model smollm2-135m --adapter tickets=runs/lora

config.py (ServeConfig), protocol.py (OpenAI request/response models), routes.py and admin.py
(thin routes), generate.py (requests -> engine -> answers), app.py (create_app), runner.py
(uvicorn, graceful shutdown), errors.py (the OpenAI error envelope), gate.py (body limit,
drain), sse.py (streams, disconnects), auth.py, rollout.py, log.py (SQLite log, export),
abtest.py (logs stats), metrics.py (Prometheus). The engine is tuneforge.inference's.
"""
