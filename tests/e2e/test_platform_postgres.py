"""`slmops up --database postgresql://…` against the PostgreSQL on 127.0.0.1:5432: Prefect and MLflow keep their
state there, and an alias set through MLflow's server redeploys the bound target, as on sqlite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform_harness import Platform, none_running, served_version, stable_port, wait_for
from tests.fixtures.postgres import POSTGRES, drop_databases, require_postgres


@pytest.fixture(scope="module")
def pg_platform(tmp_path_factory: pytest.TempPathFactory, tiny_onnx: Path) -> Iterator[tuple[Platform, int, str]]:
    require_postgres()
    name, port = f"slmops_e2e_{uuid.uuid4().hex[:8]}", stable_port()
    plat = Platform(tmp_path_factory.mktemp("pg-platform"),
                    [{"model": "pg-model", "alias": "champion", "target": {"target": "local", "port": port}}],
                    database=f"{POSTGRES}/{name}")
    state = plat.up()
    try:
        plat.register("pg-model", tiny_onnx, versions=2)
        yield plat, port, name
    finally:
        plat.down()
        assert none_running(state)
        drop_databases(f"{name}_prefect", f"{name}_mlflow", f"{name}_slmops")


def test_alias_set_redeploys_with_prefect_and_mlflow_on_postgres(pg_platform) -> None:
    import sqlalchemy

    plat, port, name = pg_platform
    assert plat.state.database == f"{POSTGRES}/{name}" and "postgres" in plat.cli("platform", "status").stdout
    client = plat.mlflow()
    client.set_registered_model_alias("pg-model", "champion", "1")
    wait_for(lambda: served_version(port) == "1", what="version 1 through the webhook")
    client.set_registered_model_alias("pg-model", "champion", "2")
    wait_for(lambda: served_version(port) == "2", what="version 2 through the webhook")
    # the state really is in PostgreSQL: the registry's alias and Prefect's flow runs
    engine = sqlalchemy.create_engine(f"{POSTGRES}/{name}_mlflow")
    with engine.connect() as conn:
        alias = conn.execute(sqlalchemy.text("SELECT version FROM registered_model_aliases WHERE name = 'pg-model' "
                                             "AND alias = 'champion'")).scalar()
    engine.dispose()
    assert str(alias) == "2"
    engine = sqlalchemy.create_engine(f"{POSTGRES}/{name}_prefect")

    def completed_redeploys() -> int:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM flow_run fr JOIN flow f ON fr.flow_id = f.id "
                "WHERE f.name = 'redeploy' AND fr.state_type = 'COMPLETED'")).scalar()

    wait_for(lambda: completed_redeploys() >= 2, what="both redeploy runs recorded as completed in PostgreSQL")
    engine.dispose()
