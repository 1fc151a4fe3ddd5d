"""Where Prefect and MLflow keep their state: sqlite files under ``$SLMOPS_HOME`` or a PostgreSQL server."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

from tasks.errors import ConfigError


class Databases(BaseModel):
    """Connection URLs for Prefect's and MLflow's stores, and how to name them in messages."""

    kind: str
    prefect: str
    mlflow: str
    shown: str
    state: str = Field(description="slmops' own state (deployment records and locks, infra/targets/store.py).")


def sqlite_databases(home: Path) -> Databases:
    """sqlite: Prefect's db in the platform folder; MLflow's is the embedded one, so both modes share a registry."""
    return Databases(kind="sqlite", prefect=f"sqlite+aiosqlite:///{home / 'platform' / 'prefect.db'}",
                     mlflow=f"sqlite:///{home / 'mlflow.db'}", shown="sqlite",
                     state=f"sqlite:///{Path(home).resolve() / 'state.db'}")


def postgres_databases(url: str) -> Databases:
    """``postgresql://user[:pw]@host:port/NAME`` → databases ``NAME_prefect``, ``NAME_mlflow`` and ``NAME_slmops``
    (made if absent): one each, because each keeps its own migration history.
    """
    databases = postgres_urls(url)
    parts = urlsplit(url)
    create_databases(urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, "")),
                     [urlsplit(u).path.lstrip("/") for u in (databases.prefect, databases.mlflow, databases.state)])
    return databases


def postgres_urls(url: str) -> Databases:
    """The connection URLs ``postgres_databases`` uses for ``url`` (nothing is created)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(f"--database: expected postgresql://user@host:port/name, got {url!r}")
    name = parts.path.lstrip("/") or "slmops"

    def with_db(scheme: str, db: str) -> str:
        return urlunsplit((scheme, parts.netloc, f"/{db}", parts.query, ""))

    where = (f"{parts.username}@" if parts.username else "") + parts.hostname + (f":{parts.port}" if parts.port else "")
    shown = urlunsplit(("postgresql", where, f"/{name}", "", ""))  # never the password
    return Databases(kind="postgresql", prefect=with_db("postgresql+asyncpg", f"{name}_prefect"),
                     mlflow=with_db("postgresql", f"{name}_mlflow"), shown=shown,
                     state=with_db("postgresql", f"{name}_slmops"))


def create_databases(admin_url: str, names: list[str]) -> None:
    """Create each database in ``names`` that does not exist yet on the server of ``admin_url``."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            existing = {row[0] for row in conn.execute(sqlalchemy.text("SELECT datname FROM pg_database"))}
            for name in names:
                if name not in existing:
                    conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise ConfigError(f"--database: cannot prepare databases on {urlsplit(admin_url).hostname}: "
                          f"{str(exc).splitlines()[0]}") from None
