"""An MLflow model registry as Rampart's registry (`[registry] backend = "mlflow"`).

The same interface as the local `Registry` (the evaluator's `ModelRegistry` seam), over one
registered model of an MLflow tracking server or store:

    champion     the version with alias `champion`
    candidate    a version with alias `challenger` (or named on `rollout start`)
    outcome      version tags `rampart.status` (`failed` | `promoted`), `rampart.reason`,
                 `rampart.rollout_id`; a promotion moves `@champion`, either outcome removes
                 `@challenger` (if it still names that version)

Rampart's integer versions are MLflow's version numbers. A version is used only through a
verified local copy: its artifact is downloaded *by version number* (an alias is resolved
once, never followed while it moves), must hold one ONNX file that loads and passes the
probe (router/models.py), and its sha256 is pinned in the tag `rampart.sha256` on first
download and checked on every later one. The copy goes into the local registry
(`Registry.mirror`), where workers load it as any local model; local statuses mirror
MLflow's, so the evaluator reads only SQLite on its tick.

MLflow is reached off the tick: `watch()` starts one thread that writes status changes to
MLflow (retrying while it is unreachable; a rollback never waits for it) and reads the
`@challenger` alias every `poll_s`, queueing each new version that gets it. `mlflow-skinny`
is imported here only, lazily: workers never load it.
"""

from __future__ import annotations

import hashlib
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from router.config import RegistryConfig
from router.models import Model, ModelError
from router.registry import ModelRecord, Registry, Status

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_STATUS = "rampart.status"
TAG_REASON = "rampart.reason"
TAG_ROLLOUT = "rampart.rollout_id"
TAG_SHA = "rampart.sha256"
TAG_QUEUED = "rampart.queued_at"  # when it was queued: the queue's order
TAG_RETIRED = "rampart.retired"  # a former champion, and why
EXPERIMENT = "rampart"  # where `rampart models register` logs a model file


def client(tracking_uri: str) -> Any:
    """An MlflowClient on `tracking_uri` for both tracking and registry (a sqlite:/// store
    is used directly, no server)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:  # pragma: no cover - depends on the install
        raise ModelError(
            "[registry] backend = 'mlflow' needs mlflow-skinny: pip install 'rampart[mlflow]'"
        ) from None
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def status_of(tags: dict[str, str], is_champion: bool) -> Status:
    """A version's Rampart status from its aliases and tags."""
    if is_champion:
        return Status.CHAMPION
    tag = tags.get(TAG_STATUS, "")
    if tag == "failed":
        return Status.FAILED
    if tag == "promoted" or TAG_RETIRED in tags:
        return Status.RETIRED
    if tag == Status.CHALLENGER.value:
        return Status.CHALLENGER
    if tag == Status.QUEUED.value:
        return Status.QUEUED
    return Status.CANDIDATE


def remote_writes(
    version: int, status: Status, reason: str, rollout_id: str
) -> list[tuple[str, Any]]:
    """What a status change writes to MLflow: ("tag", (key, value)), ("alias", name) to
    point an alias at the version, ("unalias", name) to drop it if it names the version."""
    if status == Status.CHAMPION:
        status_tag = "promoted"
    elif status == Status.RETIRED:
        return [("tag", (TAG_RETIRED, reason or "retired"))]
    else:
        status_tag = status.value
    writes: list[tuple[str, Any]] = []
    if status == Status.QUEUED:
        # Before the status: a reader that sees "queued" sees its place in the queue too.
        writes.append(("tag", (TAG_QUEUED, f"{time.time():.6f}")))
    writes += [("tag", (TAG_STATUS, status_tag)), ("tag", (TAG_REASON, reason))]
    if rollout_id:
        writes.append(("tag", (TAG_ROLLOUT, rollout_id)))
    if status == Status.CHAMPION:
        writes.append(("alias", CHAMPION))
    if status in (Status.CHAMPION, Status.FAILED):
        writes.append(("unalias", CHALLENGER))
    return writes


class MlflowRegistry:
    def __init__(self, config: RegistryConfig, state_dir: Path, *, sync: bool = True) -> None:
        """`sync`: resolve `@champion` now and keep its verified copy (the evaluator); the
        CLI's `register` does not need it."""
        self.config = config
        self.name = config.model_name
        self.state_dir = Path(state_dir)
        self.local = Registry(self.state_dir)
        self.client = client(config.tracking_uri)
        self._outbox: queue.Queue[tuple[int, list[tuple[str, Any]]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []  # the last MLflow failures the thread saw (for tests, logs)
        if sync:
            self._sync_champion()

    # -- the ModelRegistry seam (local reads; MLflow written off the tick) ----------------------
    def get(self, version: int) -> ModelRecord:
        try:
            return self.local.get(version)
        except KeyError:
            return self.fetch(version)

    def all(self) -> list[ModelRecord]:
        return self.local.all()

    def with_status(self, status: Status) -> list[ModelRecord]:
        return self.local.with_status(status)

    def queued(self) -> list[ModelRecord]:
        return self.local.queued()

    def set_status(
        self, version: int, status: Status, reason: str = "", rollout_id: str = ""
    ) -> None:
        self.local.set_status(version, status, reason, rollout_id)
        self._send(version, remote_writes(version, status, reason, rollout_id))

    def queue(self, version: int, *, replace: bool = False, reason: str = "") -> list[int]:
        self.get(version)  # a verified local copy first
        replaced = self.local.queue(version, replace=replace, reason=reason)
        self._send(version, remote_writes(version, Status.QUEUED, reason, ""))
        for old in replaced:
            why = f"replaced in the queue by {version}"
            self._send(old, remote_writes(old, Status.CANDIDATE, why, ""))
        return replaced

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10.0)
        else:
            self._flush(self.client, self.local)
        self.local.close()

    # -- MLflow ------------------------------------------------------------------------------------
    def aliases(self, via: Any = None) -> dict[str, int]:
        model = (via or self.client).get_registered_model(self.name)
        return {alias: int(v) for alias, v in (model.aliases or {}).items()}

    def versions(self, via: Any = None) -> list[Any]:
        found = (via or self.client).search_model_versions(f"name = '{self.name}'")
        return sorted(found, key=lambda mv: int(mv.version))

    def fetch(self, version: int, via: Any = None, local: Registry | None = None) -> ModelRecord:
        """Download version `version`'s ONNX file (by number), verify it, keep a local copy."""
        mlflow_client = via or self.client
        record, data, pinned = download(mlflow_client, self.config, version, self.state_dir)
        mirrored = (local or self.local).mirror(record, data)
        if not pinned:
            set_tag(mlflow_client, self.name, version, TAG_SHA, record.sha256)
        return mirrored

    def register(self, source: Path, *, start: bool = False, replace: bool = False) -> int:
        """`rampart models register FILE`: log the file as a run's artifact, register it as a
        new version (its sha256 pinned); the first becomes `@champion`. With `start` it gets
        `@challenger` and is queued (after, or with `replace` instead of, the queued ones)."""
        from mlflow.exceptions import MlflowException

        source = source.resolve()
        Model(source)  # validates, as the local registry does
        sha = hashlib.sha256(source.read_bytes()).hexdigest()
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        )
        run = self.client.create_run(experiment_id, run_name=f"register {source.name}")
        self.client.log_artifact(run.info.run_id, str(source), "model")
        self.client.set_terminated(run.info.run_id)
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = self.client.create_model_version(
            self.name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={TAG_SHA: sha}
        )
        version = int(mv.version)
        if CHAMPION not in self.aliases():
            self.client.set_registered_model_alias(self.name, CHAMPION, str(version))
        elif start:
            if replace:
                for other in self.versions():
                    if other.tags.get(TAG_STATUS) == Status.QUEUED.value:
                        why = f"replaced in the queue by {version}"
                        self.write(
                            self.client,
                            int(other.version),
                            remote_writes(int(other.version), Status.CANDIDATE, why, ""),
                        )
            self.write(self.client, version, remote_writes(version, Status.QUEUED, "", ""))
            self.client.set_registered_model_alias(self.name, CHALLENGER, str(version))
        return version

    def _sync_champion(self) -> None:
        """Resolve `@champion` once, keep its verified copy, and make it the local champion."""
        try:
            champion = self.aliases().get(CHAMPION)
        except Exception as e:
            if _missing(e):
                return  # no registered model yet: no champion, as an empty local registry
            raise
        if champion is None:
            return
        record = self.get(champion)
        for stale in self.local.with_status(Status.CHAMPION):
            if stale.version != champion:
                self.local.set_status(stale.version, Status.RETIRED, f"@champion is {champion}")
        if record.status != Status.CHAMPION:
            self.local.set_status(champion, Status.CHAMPION, record.reason, record.rollout_id)

    # -- the thread: writes out, candidates in ----------------------------------------------------
    def watch(self) -> None:
        """Start the thread that writes status changes and polls `@challenger`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mlflow-registry", daemon=True)
            self._thread.start()

    def _send(self, version: int, writes: list[tuple[str, Any]]) -> None:
        self._outbox.put((version, writes))
        if self._thread is None:  # no thread (the CLI, tests): write now
            self._flush(self.client, self.local)

    def _run(self) -> None:
        mlflow_client = client(self.config.tracking_uri)  # one per thread
        local = Registry(self.state_dir)
        next_poll = 0.0
        try:
            while not self._stop.is_set():
                self._flush(mlflow_client, local)
                if time.monotonic() >= next_poll:
                    try:
                        self.poll(mlflow_client, local)
                    except Exception as e:
                        self._error(f"polling @{CHALLENGER}: {e}")
                    next_poll = time.monotonic() + self.config.poll_s
                self._stop.wait(min(0.2, self.config.poll_s))
            self._flush(mlflow_client, local)
        finally:
            local.close()

    def _flush(self, mlflow_client: Any, local: Registry) -> None:
        pending: list[tuple[int, list[tuple[str, Any]]]] = []
        while True:
            try:
                pending.append(self._outbox.get_nowait())
            except queue.Empty:
                break
        for i, (version, writes) in enumerate(pending):
            try:
                self.write(mlflow_client, version, writes)
            except Exception as e:
                self._error(f"writing version {version}: {e}")
                for item in pending[i:]:  # in order, on the next round
                    self._outbox.put(item)
                return

    def write(self, mlflow_client: Any, version: int, writes: list[tuple[str, Any]]) -> None:
        for kind, arg in writes:
            if kind == "tag":
                set_tag(mlflow_client, self.name, version, arg[0], arg[1])
            elif kind == "alias":
                mlflow_client.set_registered_model_alias(self.name, arg, str(version))
            elif self.aliases(mlflow_client).get(arg) == version:
                mlflow_client.delete_registered_model_alias(self.name, arg)

    def waiting(self, mlflow_client: Any) -> list[int]:
        """What MLflow says waits for a rollout, first to start first: the versions tagged
        queued (`models register --start`), and the `@challenger` version if it has no
        status yet (tagged queued now)."""
        challenger = self.aliases(mlflow_client).get(CHALLENGER)
        waiting: list[tuple[float, int]] = []
        for mv in self.versions(mlflow_client):
            version, tags = int(mv.version), mv.tags
            if version == challenger and TAG_STATUS not in tags:
                self.write(mlflow_client, version, remote_writes(version, Status.QUEUED, "", ""))
                tags = mlflow_client.get_model_version(self.name, str(version)).tags
            if tags.get(TAG_STATUS) == Status.QUEUED.value:
                waiting.append((queued_at(mv, tags), version))
        return [v for _, v in sorted(waiting)]

    def poll(self, mlflow_client: Any = None, local: Registry | None = None) -> list[int]:
        """Queue what MLflow says waits: the `@challenger` version if it has no status yet,
        and versions tagged queued (`models register --start` elsewhere); unqueue locally
        what MLflow no longer has queued. Returns the versions newly queued."""
        mlflow_client = mlflow_client or self.client
        local = local or self.local
        waiting = self.waiting(mlflow_client)
        added = []
        already = {r.version for r in local.queued()}
        for version in waiting:
            if version in already:
                continue
            try:
                record = local.get(version)
            except KeyError:
                try:
                    record = self.fetch(version, mlflow_client, local)
                except ModelError as e:  # a broken artifact never reaches a rollout
                    why = f"artifact failed verification: {e}"
                    self.write(
                        mlflow_client, version, remote_writes(version, Status.FAILED, why, "")
                    )
                    continue
            if record.status == Status.QUEUED:  # copied with MLflow's tag, not yet in line here
                local.set_status(version, Status.CANDIDATE)
            elif record.status != Status.CANDIDATE:
                continue
            local.queue(version)
            added.append(version)
        for record in local.queued():
            if record.version not in waiting:
                local.set_status(record.version, Status.CANDIDATE, "no longer queued in MLflow")
        return added

    def _error(self, text: str) -> None:
        self.errors = [*self.errors[-9:], text]
        print(f"rampart: mlflow registry: {text}", file=sys.stderr, flush=True)


def queued_at(mv: Any, tags: dict[str, str]) -> float:
    """When a queued version was queued: its tag, or, without one (being written, or
    queued by hand), when it was registered; never 0, which would put it first."""
    try:
        return float(tags[TAG_QUEUED])
    except (KeyError, ValueError):
        return float(mv.creation_timestamp or 0) / 1000.0


TAG_WRITE_ATTEMPTS = 3


def set_tag(mlflow_client: Any, name: str, version: int, key: str, value: str) -> None:
    """Set a version's tag, last writer wins. MLflow's SQL store sets a tag by reading it and
    then inserting or updating it, so when another process (the CLI, the evaluator's
    thread, a fleet leader) sets the same new tag in between, the insert fails on the
    table's unique key; the next attempt reads the row and updates it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(TAG_WRITE_ATTEMPTS):
        try:
            mlflow_client.set_model_version_tag(name, str(version), key, value)
            return
        except MlflowException as e:
            if "UNIQUE constraint" not in str(e) or attempt == TAG_WRITE_ATTEMPTS - 1:
                raise


def download(
    mlflow_client: Any, config: RegistryConfig, version: int, scratch: Path
) -> tuple[ModelRecord, bytes, bool]:
    """Version `version`'s ONNX file, downloaded by number into `scratch` and verified (it
    loads and passes the probe; its sha256 is the pinned one, if pinned): its record (status
    from MLflow's aliases and tags), its bytes, and whether its sha256 was pinned already."""
    from mlflow.artifacts import download_artifacts

    name = config.model_name
    mv = mlflow_client.get_model_version(name, str(version))
    uri = mlflow_client.get_model_version_download_uri(name, str(version))
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".mlflow-") as tmp:
        path = Path(
            download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=config.tracking_uri)
        )
        onnx = _onnx_file(path, f"{name} version {version}")
        data = onnx.read_bytes()
        model = Model(onnx, version)  # loads and passes the probe, or ModelError
    sha = hashlib.sha256(data).hexdigest()
    pinned = mv.tags.get(TAG_SHA)
    if pinned and pinned != sha:
        raise ModelError(
            f"{name} version {version}: artifact sha256 {sha} is not the pinned {pinned}"
        )
    aliases = mlflow_client.get_registered_model(name).aliases or {}
    champion = int(aliases.get(CHAMPION, 0) or 0) == version
    record = ModelRecord(
        version=version,
        name=model.name,
        file="",
        sha256=sha,
        features=model.features,
        status=status_of(mv.tags, champion),
        reason=mv.tags.get(TAG_REASON, ""),
        registered_at=mv.creation_timestamp / 1000.0,
    )
    return record, data, bool(pinned)


def _onnx_file(path: Path, what: str) -> Path:
    if path.is_file():
        return path
    found = sorted(path.rglob("*.onnx"))
    if len(found) != 1:
        raise ModelError(f"{what}: the artifact holds {len(found)} .onnx files, expected one")
    return found[0]


def _missing(e: Exception) -> bool:
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"
