"""numba's compiled kernels are cached under a directory named by the whole source of
`router/` and `guardrails/`: a constant changed in one module cannot leave a kernel of
another module compiled with its old value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.kernel_cache import cache_dir, source_key

ROOT = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> Path:
    for package in ("router", "guardrails"):
        (root / package).mkdir(parents=True)
    (root / "router" / "layout.py").write_text("OFFSET = 8\n")
    (root / "router" / "recording.py").write_text("from router.layout import OFFSET\n")
    (root / "guardrails" / "checks.py").write_text("LIMIT = 1\n")
    return root


def test_any_source_change_in_either_package_names_a_new_directory(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = source_key(root)
    assert source_key(root) == before  # stable
    (root / "router" / "layout.py").write_text("OFFSET = 16\n")  # recording.py unchanged
    after_layout = source_key(root)
    (root / "guardrails" / "checks.py").write_text("LIMIT = 2\n")
    assert len({before, after_layout, source_key(root)}) == 3
    (root / "guardrails" / "notes.txt").write_text("not source")
    assert source_key(root) == source_key(root)


def test_the_directory_is_under_numba_cache_dir_once(tmp_path: Path) -> None:
    root = _tree(tmp_path / "src")
    key = source_key(root)
    assert cache_dir(root, {"NUMBA_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c" / key
    # A child of a process that set it already: not nested again.
    assert cache_dir(root, {"NUMBA_CACHE_DIR": str(tmp_path / "c" / key)}) == tmp_path / "c" / key
    default = cache_dir(root, {"XDG_CACHE_HOME": str(tmp_path / "x")})
    assert default == tmp_path / "x" / "rampart" / "numba" / key


@pytest.mark.parametrize("numba_first", [False, True], ids=["router first", "numba first"])
def test_a_kernel_compiled_in_a_fresh_process_is_cached_in_that_directory(
    tmp_path: Path, numba_first: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    imports = ["import numba", "from router import codec"]
    code = "\n".join(
        [
            *(imports[::-1] if not numba_first else imports),
            "import numpy as np",
            "assert codec.all_finite(np.ones((2, 3), dtype=np.float32))",
            "print(numba.config.CACHE_DIR)",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    expected = tmp_path / "rampart" / "numba" / source_key(ROOT)
    assert out.stdout.strip() == str(expected)
    assert list(expected.rglob("codec.all_finite-*.nbi"))
