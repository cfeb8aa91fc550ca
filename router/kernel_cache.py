"""Where numba keeps rampart's compiled kernels: a directory named by the source they came from.

numba's on-disk cache (`cache=True`) is keyed by the kernel's own file only. The module-level
constants a kernel reads from other modules (`router.layout`'s offsets and counts, the
guardrails' tables) are compiled into it as they were, and are not part of the key: after a
checkout or an upgrade in place that changes `router/layout.py` and not
`router/recording.py`, numba would load kernels that write the slab at the old offsets (seen
here: segment requests recorded nowhere, rollouts stopped, until the cache was deleted).

So before any kernel is compiled, the cache directory is set to one named by a hash of every
source file of `router/` and `guardrails/`: any change to either makes a fresh directory.
`NUMBA_CACHE_DIR` still chooses where (the hash is a directory under it); by default it is
the user's cache directory (`$XDG_CACHE_HOME` or `~/.cache`) under `rampart/numba/`. A
directory that cannot be made leaves numba's own choice (`__pycache__` beside the source).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGES = ("router", "guardrails")
_configured = False


def source_key(root: Path) -> str:
    """A hash of the kernels' packages' sources under `root` (the project's root)."""
    digest = hashlib.blake2b(digest_size=8)
    for package in PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_dir(root: Path, environ: Mapping[str, str] = os.environ) -> Path:
    key = source_key(root)
    base = environ.get("NUMBA_CACHE_DIR") or ""
    if not base:
        xdg = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "rampart" / "numba")
    if Path(base).name == key:  # set so by this process's parent, on the same source
        return Path(base)
    return Path(base) / key


def configure() -> None:
    """Point numba's cache at this source's directory (once per process; before numba is
    imported it is the environment variable numba reads at import)."""
    global _configured
    if _configured:
        return
    _configured = True
    try:
        path = cache_dir(Path(__file__).resolve().parent.parent)
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    os.environ["NUMBA_CACHE_DIR"] = str(path)  # children (the zygote's, spawned) see it too
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:
        numba_config.CACHE_DIR = str(path)  # type: ignore[attr-defined]
