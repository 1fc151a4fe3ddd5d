"""``slmops multi-lora``: build a base that serves several adapters, add one later, refuse mistakes in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from tasks.served_folder import adapter_files


def test_build_then_add_an_adapter(multi_lora: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "served"
    base = str(multi_lora["base"])
    assert main(["multi-lora", base, str(out), "--adapter", f"alpha={multi_lora['alpha']}",
                 "--int4-block-size", "16"]) == 0
    assert f"{out}: serves adapters ['alpha'] beside the base" in capsys.readouterr().out
    assert main(["multi-lora", base, str(out), "--add", "--adapter", f"beta={multi_lora['beta']}",
                 "--int4-block-size", "16"]) == 0
    assert sorted(adapter_files(out)) == ["alpha", "beta"]
    # the adapter file is the same whether added later or built with the base (the fixture built both at once)
    assert (out / "adapters" / "beta.onnx_adapter").read_bytes() == (
        multi_lora["served"] / "adapters" / "beta.onnx_adapter").read_bytes()


@pytest.mark.parametrize(("args", "expected"), [
    (["--adapter", "alpha"], "error: --adapter 'alpha': expected NAME=DIR where DIR is a peft adapter folder"),
    (["--adapter", "alpha=/nonexistent"], "error: --adapter 'alpha=/nonexistent': expected NAME=DIR"),
    (["--add", "--adapter", "alpha=ALPHA"], "error: --add: OUT is not a multi-LoRA folder; build it first"),
    (["--adapter", "../a=ALPHA"], "error: adapter name '../a': use 1–64 letters"),
])
def test_mistakes_are_one_line_errors(multi_lora: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                      args: list[str], expected: str) -> None:
    out = tmp_path / "out"
    args = [a.replace("ALPHA", str(multi_lora["alpha"])) for a in args]
    assert main(["multi-lora", str(multi_lora["base"]), str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.replace(str(out), "OUT").startswith(expected) and "\n" not in err and "Traceback" not in err
    assert not out.exists(), "nothing was written"


def test_an_existing_folder_is_never_overwritten(multi_lora: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["multi-lora", str(multi_lora["base"]), str(tmp_path), "--adapter",
                 f"alpha={multi_lora['alpha']}"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"
