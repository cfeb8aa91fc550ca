"""MLflow as a fleet's registry (`[registry] backend = "mlflow"` with `[fleet] url`).

Only the fleet's leader talks to MLflow, so the fleet makes one decision and MLflow hears of
it once. `FleetMlflow` runs on a thread of the leader's evaluator process while it leads:

    MLflow -> fleet   `@champion` resolved once, when the fleet has no champion yet (before
                      the leader's first decision); each version MLflow has queued (tagged by
                      `models register --start`, or given `@challenger`) downloaded by number,
                      verified (router.mlflow_registry.download), stored in the fleet
                      registry by sha256 under MLflow's version number, where every host
                      fetches it as any fleet model, and put in the fleet's queue
                      (guardrails.release_train starts it); a broken artifact is tagged failed
                      in MLflow and never queued
    fleet -> MLflow   each status a rollout gave a version (challenger, failed, promoted,
                      retired; the fleet store keeps the rollout id with it) written as
                      version tags and aliases, compared with what MLflow holds first

The fleet store is the truth for outcomes and the queue; MLflow is brought in line with it
each `poll_s`. Writing only what differs makes every write idempotent: a leader that dies
between a rollback and its MLflow write leaves the tags to the next leader, which finds
them missing and writes them, and a write that already landed is never repeated.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any

from guardrails.fleet_leader import Deposed, FleetRegistry
from guardrails.fleet_store import FleetStore
from router.config import Config
from router.mlflow_registry import (
    CHAMPION,
    TAG_SHA,
    MlflowRegistry,
    download,
    remote_writes,
    set_tag,
)
from router.models import ModelError
from router.registry import Status

# Statuses Rampart gives a version on its own, with no rollout: a candidate that could not
# start is failed, and a challenger is one; the champion and the retired are MLflow's
# business unless a rollout made them.
_WITHOUT_ROLLOUT = (Status.FAILED, Status.CHALLENGER)


class FleetMlflow:
    def __init__(self, config: Config, store: FleetStore, epoch: int) -> None:
        self.config = config.registry
        self.name = config.registry.model_name
        self.scratch = config.state_path  # downloads pass through here
        self.store = store
        self.epoch = epoch
        self.errors: list[str] = []  # the last failures the thread saw (logs, tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @functools.cached_property
    def mlflow(self) -> MlflowRegistry:
        """MLflow, reached when first needed: on the thread, or for a fleet's first champion.
        Not in the tick that takes over (a client on a sqlite store takes seconds to make,
        longer than a lease)."""
        return MlflowRegistry(self.config, self.scratch, sync=False)

    # -- MLflow -> fleet ----------------------------------------------------------------------
    def bootstrap(self) -> None:
        """A fleet without a champion takes MLflow's `@champion` (resolved once, verified)."""
        if any(m["status"] == Status.CHAMPION.value for m in self.store.models()):
            return
        champion = self.mlflow.aliases().get(CHAMPION)
        if champion is not None:
            self._import(self.mlflow.client, champion, Status.CHAMPION)

    def _import(self, via: Any, version: int, status: Status) -> dict[str, Any]:
        """The fleet's record of MLflow version `version`, downloaded, verified and stored if
        new. A fleet version of that number that is another model (registered in the fleet
        store itself) raises ModelError: it is never taken for MLflow's."""
        try:
            model: dict[str, Any] | None = self.store.get_model(version)
        except KeyError:
            model = None
        pinned = via.get_model_version(self.name, str(version)).tags.get(TAG_SHA)
        if model is not None and pinned == model["sha256"]:
            return model
        record, data, _ = download(via, self.config, version, self.scratch)  # checks the pin
        if model is None:
            stored = {
                "version": version,
                "name": record.name,
                "features": list(record.features),
                "registered_at": record.registered_at,
                "status": status.value,
            }
            model = self.store.put_model(stored, data)  # ValueError: the number taken meanwhile
        elif model["sha256"] != record.sha256:
            raise ModelError(
                f"fleet version {version} is another model (sha256 {model['sha256']}): with "
                "MLflow as the fleet's registry, register models in MLflow only"
            )
        if not pinned:
            set_tag(via, self.name, version, TAG_SHA, record.sha256)
        return model

    def poll(self, via: Any) -> list[int]:
        """Queue in the fleet what MLflow has queued, in MLflow's order; unqueue what it no
        longer has. Returns the versions newly queued."""
        waiting = self.mlflow.waiting(via)
        models = {int(m["version"]): m for m in self.store.models()}
        added = []
        for version in waiting:
            if models.get(version, {}).get("status") not in (None, Status.CANDIDATE.value):
                continue  # queued here already, or past it
            try:
                model = self._import(via, version, Status.CANDIDATE)
            except ModelError as e:  # a broken artifact never reaches a rollout
                why = f"artifact failed verification: {e}"
                self._to_mlflow(via, version, Status.FAILED, why, "", {}, {})
                continue
            if model["status"] == Status.CANDIDATE.value:
                self.store.queue_model(version)
                added.append(version)
        for version, model in models.items():
            if model["status"] == Status.QUEUED.value and version not in waiting:
                registry = FleetRegistry(self.store, self.epoch)
                registry.set_status(version, Status.CANDIDATE, "no longer queued in MLflow")
        return added

    # -- fleet -> MLflow ----------------------------------------------------------------------
    def reconcile(self, via: Any) -> int:
        """Write to MLflow every outcome the fleet holds that MLflow does not show yet.
        Returns how many writes that took (0 once MLflow is in line)."""
        tags = {int(mv.version): dict(mv.tags) for mv in self.mlflow.versions(via)}
        aliases = self.mlflow.aliases(via)
        written = 0
        for m in self.store.models():
            version, status, rollout = int(m["version"]), Status(m["status"]), m["rollout_id"]
            if rollout or status in _WITHOUT_ROLLOUT:
                have = tags.get(version, {})
                written += self._to_mlflow(
                    via, version, status, m["reason"], rollout, have, aliases
                )
        return written

    def _to_mlflow(
        self,
        via: Any,
        version: int,
        status: Status,
        reason: str,
        rollout: str,
        have: dict[str, str],
        aliases: dict[str, int],
    ) -> int:
        todo = [
            (kind, arg)
            for kind, arg in remote_writes(version, status, reason, rollout)
            if not (
                (kind == "tag" and have.get(arg[0]) == arg[1])
                or (kind == "alias" and aliases.get(arg) == version)
                or (kind == "unalias" and aliases.get(arg) != version)
            )
        ]
        if todo:
            self.mlflow.write(via, version, todo)
            for kind, arg in todo:  # what the next version of this round compares with
                if kind == "alias":
                    aliases[arg] = version
                elif kind == "unalias":
                    aliases.pop(arg, None)
        return len(todo)

    # -- the thread ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fleet-mlflow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        if "mlflow" in self.__dict__:  # made
            self.mlflow.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                via = self.mlflow.client  # the thread's own, once bootstrap() is done with it
                self.poll(via)
                self.reconcile(via)
            except Deposed:
                return  # another host leads, and talks to MLflow now
            except Exception as e:  # MLflow or the store unreachable: next round
                self.errors = [*self.errors[-9:], str(e)]
                print(f"rampart fleet: mlflow: {e}", file=sys.stderr, flush=True)
            self._stop.wait(self.config.poll_s)


def leader_registry(config: Config, store: FleetStore, epoch: int) -> FleetRegistry:
    """The registry a new leader decides with: the fleet's, linked to MLflow when `[registry]`
    names it (its champion taken first, so the leader's first decision serves it)."""
    if config.registry.backend != "mlflow":
        return FleetRegistry(store, epoch)
    link = FleetMlflow(config, store, epoch)
    try:
        link.bootstrap()
    except BaseException:
        link.stop()
        raise
    return FleetRegistry(store, epoch, link)
