"""Promote and rollback with an append-only history; unknown names, versions and aliases are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from registry.errors import RegistryError
from registry.history import aliases, history, move_alias, rollback_alias
from registry.tracking import setup_tracking


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path))
    setup_tracking(tmp_path)
    c = MlflowClient()
    c.create_registered_model("m")
    src = tmp_path / "model"
    src.mkdir()
    (src / "weights.txt").write_text("w")
    for _ in range(3):
        c.create_model_version("m", source=str(src))
    return c


def test_promote_and_rollback_walk_the_history(client: MlflowClient) -> None:
    for v in ("1", "2", "3"):
        move_alias(client, "m", "champion", v, reason="test")
    assert rollback_alias(client, "m", "champion")["version"] == "2"
    assert rollback_alias(client, "m", "champion")["version"] == "1"
    with pytest.raises(RegistryError, match="no earlier version"):
        rollback_alias(client, "m", "champion")
    entries = history(client, "m")
    assert [(e["action"], e["version"], e["previous"]) for e in entries] == [
        ("promote", "1", None), ("promote", "2", "1"), ("promote", "3", "2"),
        ("rollback", "2", "3"), ("rollback", "1", "2")]
    assert aliases(client, "m") == {"champion": "1"}


def test_unknown_names_versions_aliases_list_what_exists(client: MlflowClient) -> None:
    with pytest.raises(RegistryError, match=r"unknown registered model 'nope'; registered: \['m'\]"):
        move_alias(client, "nope", "champion", "1", reason="t")
    with pytest.raises(RegistryError, match="m has no version '9'; versions: 1, 2, 3"):
        move_alias(client, "m", "champion", "9", reason="t")
    move_alias(client, "m", "champion", "1", reason="t")
    with pytest.raises(RegistryError, match="m has no alias 'staging'; aliases: champion"):
        rollback_alias(client, "m", "staging")


def test_cli_promote_rollback(client: MlflowClient, capsys: pytest.CaptureFixture) -> None:
    assert main(["promote", "m", "1"]) == 0
    assert main(["promote", "m", "3", "--alias", "champion"]) == 0
    assert "m@champion: 1 → 3" in capsys.readouterr().out
    assert main(["rollback", "m"]) == 0
    assert "m@champion: 3 → 1 (rolled back)" in capsys.readouterr().out
    assert main(["promote", "m", "7"]) == 2
    assert "versions: 1, 2, 3" in capsys.readouterr().err
    assert main(["rollback", "ghost"]) == 2
    assert "unknown registered model 'ghost'" in capsys.readouterr().err
    assert main(["models", "m"]) == 0
    assert "aliases: champion=1" in capsys.readouterr().out


def test_concurrent_promotes_never_lose_an_entry_and_the_alias_follows_the_last(client: MlflowClient,
                                                                                  tmp_path: Path) -> None:
    import concurrent.futures as cf
    import threading

    # given eight versions and eight writers promoting one each at the same moment
    src = tmp_path / "model"
    for _ in range(5):
        client.create_model_version("m", source=str(src))
    start = threading.Barrier(8)

    def promote(version: str) -> dict:
        start.wait(timeout=30)
        return move_alias(client, "m", "champion", version, reason=f"writer {version}")

    with cf.ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(promote, [str(v) for v in range(1, 9)]))
    # then the history holds eight distinct entries, one per writer, and the alias is the last entry's version
    recorded = history(client, "m")
    assert len(recorded) == 8 and len({e["id"] for e in recorded}) == 8
    assert sorted(e["version"] for e in recorded) == [str(v) for v in range(1, 9)]
    assert aliases(client, "m")["champion"] == recorded[-1]["version"]
    # and each writer got back its own entry, with the version the alias held just before it in the history
    assert {e["id"] for e in entries} == {e["id"] for e in recorded}
    assert [e["previous"] for e in recorded] == [None, *[e["version"] for e in recorded[:-1]]]
