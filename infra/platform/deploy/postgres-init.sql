-- Two databases, as `slmops up --database postgresql://…/slmops` makes: Prefect and MLflow both keep an
-- alembic_version table, so they cannot share one.
CREATE DATABASE slmops_prefect;
CREATE DATABASE slmops_mlflow;
