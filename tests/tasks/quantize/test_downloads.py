"""Run-time downloads are pinned by version and sha256: a changed file or an unpinned version is refused.

These tests fetch from the package registry (the only network this project uses at run time).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import SlmopsError
from tasks.quantize import downloads
from tasks.quantize.downloads import pinned_pip


def test_a_file_whose_sha256_differs_from_the_pin_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    # given a pin that no published file has
    monkeypatch.setitem(downloads.PINNED, "llama-cpp-python==0.3.36", ("0" * 64,))
    # when the sdist is fetched, the real file's hash is named and nothing is kept
    with pytest.raises(SlmopsError, match=r"has sha256 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
                                          r", not a pinned one; refusing to use it"):
        pinned_pip("llama-cpp-python==0.3.36", ["download", "--no-binary", "llama-cpp-python", "-d", str(tmp_path)],
                   "converter")
    assert list(tmp_path.iterdir()) == []


def test_the_pinned_file_is_fetched(tmp_path: Path) -> None:
    pinned_pip("llama-cpp-python==0.3.36", ["download", "--no-binary", "llama-cpp-python", "-d", str(tmp_path)],
               "converter")
    assert [p.name for p in tmp_path.iterdir()] == ["llama_cpp_python-0.3.36.tar.gz"]


def test_an_unpinned_version_is_never_fetched(tmp_path: Path) -> None:
    with pytest.raises(SlmopsError, match=r"llama-cpp-python==0.3.35 has no pinned sha256 in slmops; pinned: "
                                          r"llama-cpp-python==0.3.36"):
        pinned_pip("llama-cpp-python==0.3.35", ["download", "-d", str(tmp_path)], "converter")
