"""OpenAI's fine-tuning jobs API, served by `tuneforge serve` (on by default; `jobs.enabled: false` turns it off).

    files.py     uploads: stored by id, validated with the prepare stage's validator
    spec.py      what a job asks for, and how it maps onto prepare and train
    store.py     files, jobs, events, checkpoints in SQLite (WAL)
    worker.py    runs queued jobs, each in a child process (child.py: prepare + train)
    routes.py    /v1/files and /v1/fine_tuning/jobs over the store and the worker
    protocol.py  the OpenAI request and response shapes
"""
