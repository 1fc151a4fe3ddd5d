"""Alembic migrations of the deployment-state database (infra/targets/store.py runs them)."""
