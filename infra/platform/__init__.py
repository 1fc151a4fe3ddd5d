"""The local platform: ``slmops up``/``down`` (Prefect server, MLflow server, webhook receiver, worker) and bindings."""
