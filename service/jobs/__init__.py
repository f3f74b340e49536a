"""Asynchronous jobs: the store (SQLite rows and a folder per job), the runner that runs one job
through the segmentation use case, and the dispatchers that hand accepted jobs to it (a thread
in the API process, or Redis and `python -m service.jobs.queue_worker` processes)."""
