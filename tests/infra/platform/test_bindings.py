"""Bindings: validated like every config (bad keys named), ordered so approvals come last."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from infra.platform.bindings import bindings_for, load_bindings
from tasks.errors import ConfigError


def test_bindings_validate_and_order(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("""bindings:
- {model: m, alias: champion, approval: required, target: {target: local, port: 9001}}
- {model: m, alias: champion, target: {target: ollama, host: "http://127.0.0.1:11434", name: m-ollama}}
- {model: other, target: {target: local}}
""")
    found = bindings_for(path, "m", "champion")
    assert [b.key for b in found] == ["m@champion → ollama/m-ollama", "m@champion → local/m"]
    assert load_bindings(tmp_path / "missing.yaml") == []


@pytest.mark.parametrize(("text", "expected"), [
    ("bindings:\n- {model: m, target: {target: local, port: 70000}}", "bindings.0.target.local.port: Input should be"),
    ("bindings:\n- {model: m, target: {target: gpu}}", "bindings.0.target: Input tag 'gpu' found using 'target'"),
    ("bindings:\n- {model: m, aproval: required, target: {target: local}}", "bindings.0.aproval: unknown key"),
    ("bindings: [", "not valid YAML"),
])
def test_a_bad_bindings_file_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        load_bindings(path)


def test_up_refuses_a_bad_bindings_file_before_starting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    path = tmp_path / "b.yaml"
    path.write_text("bindings:\n- {model: m, target: {target: local, port: 0}}")
    assert main(["up", "--bindings", str(path)]) == 2
    assert "bindings.0.target.local.port" in capsys.readouterr().err
    assert not (tmp_path / "home" / "platform.json").exists() and not (tmp_path / "home" / "platform").exists()
