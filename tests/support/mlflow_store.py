"""A real MLflow model registry for tests: a sqlite:/// tracking and registry database with a
local artifact directory, used directly by MlflowClient (no server process). Models are
logged as run artifacts and registered with `create_model_version`, as an ML team's
pipeline does. The `template_store` fixture (tests/conftest.py) makes the empty database
once; each `Store` starts from a copy of it."""

from __future__ import annotations

import shutil
from pathlib import Path

from router.config import RegistryConfig
from router.mlflow_registry import client

NAME = "ctr"


def make_template(root: Path) -> Path:
    """An empty MLflow database: creating its tables takes seconds, so it is made once."""
    client(f"sqlite:///{root}/mlflow.db").search_experiments()
    return root / "mlflow.db"


class Store:
    """A fresh MLflow store (a copy of the template) and its artifact directory."""

    def __init__(self, root: Path, template: Path) -> None:
        shutil.copyfile(template, root / "mlflow.db")
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.client = client(self.uri)
        self.experiment = self.client.create_experiment(
            "rampart", artifact_location=(root / "artifacts").as_uri()
        )
        self.client.create_registered_model(NAME)
        self.root = root

    def log(self, model: Path, alias: str = "") -> int:
        """Log `model` as a run's artifact and register it: the new version number."""
        run = self.client.create_run(self.experiment)
        self.client.log_artifact(run.info.run_id, str(model), "model")
        mv = self.client.create_model_version(
            NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        if alias:
            self.client.set_registered_model_alias(NAME, alias, mv.version)
        return int(mv.version)

    def tags(self, version: int) -> dict[str, str]:
        return dict(self.client.get_model_version(NAME, str(version)).tags)

    def aliases(self) -> dict[str, int]:
        return {a: int(v) for a, v in self.client.get_registered_model(NAME).aliases.items()}

    def config(self, poll_s: float = 10.0) -> RegistryConfig:
        return RegistryConfig("mlflow", self.uri, NAME, poll_s)

    def registry_config(self, poll_s: float = 0.2) -> str:
        """The `[registry]` section of a server on this store."""
        return (
            f'[registry]\nbackend = "mlflow"\ntracking_uri = "{self.uri}"\n'
            f'model_name = "{NAME}"\npoll_s = {poll_s}\n'
        )
