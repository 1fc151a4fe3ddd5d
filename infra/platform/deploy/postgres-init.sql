-- Three databases, as `slmops up --database postgresql://…/slmops` makes: Prefect, MLflow and slmops' own state
-- (deployment records and locks) each keep their own migration history, so they cannot share one.
CREATE DATABASE slmops_prefect;
CREATE DATABASE slmops_mlflow;
CREATE DATABASE slmops_slmops;
