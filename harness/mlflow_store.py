"""A private MLflow model registry for the scenarios: a sqlite:/// tracking and registry store
and a local artifact directory, used directly by MlflowClient (no server process).

`rampart scenario train --registry-backend mlflow` runs the release train on it: the shipped
champion is registered as `@champion`, each candidate as `rampart models register FILE
--start` does (a new version with `@challenger`, tagged queued), the server's `[registry]`
section points at it, and the verdict reads the outcomes back from MLflow's version tags and
aliases. Needs `rampart[mlflow]` and, for the sqlite store, SQLAlchemy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

MODEL_NAME = "ctr"
POLL_S = 0.5  # how often the server reads @challenger: a queued candidate waits at most this


class MlflowStore:
    """One registered model in a fresh MLflow store under `root`."""

    def __init__(self, root: Path) -> None:
        from router.mlflow_registry import EXPERIMENT, client

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = client(self.uri)
        # The artifacts next to the database, not in the working directory's ./mlruns.
        if self.client.get_experiment_by_name(EXPERIMENT) is None:
            self.client.create_experiment(
                EXPERIMENT, artifact_location=(root / "artifacts").as_uri()
            )

    def config(self) -> str:
        """The `[registry]` section a server on this store runs with."""
        return (
            f'\n[registry]\nbackend = "mlflow"\ntracking_uri = "{self.uri}"\n'
            f'model_name = "{MODEL_NAME}"\npoll_s = {POLL_S}\n'
        )

    def register(self, path: Path, *, start: bool = False) -> int:
        """`rampart models register FILE [--start]` on this store: the new version number."""
        from router.config import RegistryConfig
        from router.mlflow_registry import MlflowRegistry

        registry = MlflowRegistry(
            RegistryConfig("mlflow", self.uri, MODEL_NAME, POLL_S),
            self.root / "cli-state",
            sync=False,
        )
        try:
            return registry.register(path, start=start)
        finally:
            registry.close()

    def outcomes(self, versions: list[int], timeout_s: float = 15.0) -> dict[str, Any]:
        """What MLflow says of `versions` once each has an outcome (`rampart.status` failed
        or promoted, and `@challenger` off them: the server writes MLflow off its tick, a
        little after the rollout ends), or at `timeout_s`: each one's rampart.* tags, and
        the aliases."""
        deadline = time.monotonic() + timeout_s
        while True:
            model = self.client.get_registered_model(MODEL_NAME)
            tags = {
                str(v): {
                    k: t
                    for k, t in self.client.get_model_version(MODEL_NAME, str(v)).tags.items()
                    if k.startswith("rampart.") and k not in ("rampart.sha256", "rampart.queued_at")
                }
                for v in versions
            }
            aliases = {alias: int(v) for alias, v in (model.aliases or {}).items()}
            ended = all(t.get("rampart.status") in ("failed", "promoted") for t in tags.values())
            ended = ended and aliases.get("challenger") not in versions  # the last write
            if ended or time.monotonic() > deadline:
                return {"versions": tags, "aliases": aliases}
            time.sleep(0.2)
