"""The janitor: removes what a run made, as its record says, and reports what it freed.

In order: stop the run's prebuilds (flakebot.prebuild: a runner records what its build added as it
ends, so it ends first) and remove their exports, stop its services, remove its GC roots, delete
the store paths its builds added (by name, one by one: a path still rooted elsewhere, e.g. by
another run that built the same thing, is reported and kept, and one that another run recorded
too, e.g. dependencies its prebuild found built, is left for that run), remove its deployed flake
sources and workspaces, and remove the target dirs no other run still uses. With
`keep_deployment` the services, GC roots, store paths and the deployed flake sources stay (the
manifest's commands keep working). Cleaning is idempotent: what is already gone is skipped. Runs
whose lease is older than the TTL are cleaned by `clean_expired`.

A service is stopped only if the process at its recorded pid is still that service (same start
time, same program), and a prebuild only if it is still that runner: a pid the kernel has since
reused is left alone. `clean_all` and `clean_expired` skip runs that are still in progress (a live
process holds their run lock) unless forced, and say which they skipped.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import structlog

from flakebot import services
from flakebot.errors import CommandFailed
from flakebot.nix import Nix
from flakebot.prebuild import stop_runner
from flakebot.runstate import Resource, RunRecord, all_runs
from flakebot.settings import Settings
from flakebot.trees import disk_usage, remove_tree
from flakebot.verified import VerifiedResults
from messages import CleanupFailure, CleanupReport, CleanupRequest, RemovedItem
from messages.deploy import CleanupReason

log = structlog.get_logger()
CLEAN_PASSES = 3  # clean --all: passes over the runs that still have something left
IN_USE_WAITS_S = (0.5, 1.0, 2.0)  # store paths in use: waits before trying again
WORKERS_WAIT_S = 30.0  # a whole run's clean: how long coders still at work may take to end


class Janitor:
    """Cleans runs of one Flakebot home."""

    def __init__(self, settings: Settings, *, nix: Nix | None = None) -> None:
        self.settings = settings
        self._nix = nix

    @property
    def nix(self) -> Nix:
        if self._nix is None:
            self._nix = Nix()
        return self._nix

    def clean(self, request: CleanupRequest) -> CleanupReport:
        record = RunRecord(self.settings.home, request.run_id)
        with record.cleaning():
            if request.candidate_id is not None:  # its coder was ended before
                return self._clean(record, request)
            with record.workers_gone(WORKERS_WAIT_S) as gone:
                if not gone:
                    log.warning("run_workers_still_running", run_id=request.run_id)
                return self._clean(record, request)

    def _clean(self, record: RunRecord, request: CleanupRequest) -> CleanupReport:
        removed: list[RemovedItem] = []
        failures: list[CleanupFailure] = []
        for prebuild in record.items("prebuild", request.candidate_id):
            if prebuild.pid is not None and stop_runner(prebuild.pid, prebuild.started):
                log.info("prebuild_stopped", candidate=prebuild.candidate_id, pid=prebuild.pid)
        mine = record.items(candidate_id=request.candidate_id)  # with what the prebuilds added
        deployment_kinds = ("service", "gc_root", "store_path", "deployment")
        kinds = ("prebuild", "service", "gc_root", "store_path", "deployment", "workspace")
        for kind in (*kinds, "target_dir"):
            if request.keep_deployment and kind in deployment_kinds:
                continue
            items = [item for item in mine if item.kind == kind]
            if kind == "store_path":
                self._delete_store_paths(record, items, removed, failures)
                continue
            for item in items:
                outcome = self._remove(record, item)
                if isinstance(outcome, RemovedItem):
                    removed.append(outcome)
                elif isinstance(outcome, CleanupFailure):
                    failures.append(outcome)
        if request.candidate_id is None and not request.keep_deployment and not failures:
            self._forget_run(record)
        report = CleanupReport(
            run_id=request.run_id,
            candidate_id=request.candidate_id,
            reason=request.reason,
            removed=removed,
            failures=failures,
        )
        log.info(
            "run_cleaned",
            run_id=request.run_id,
            candidate=request.candidate_id,
            removed=len(removed),
            failures=len(failures),
            bytes_freed=report.bytes_freed,
        )
        return report

    def clean_all(
        self, reason: CleanupReason = "requested", *, force: bool = False
    ) -> tuple[list[CleanupReport], list[str]]:
        """Clean every run, and forget the verified results kept for later runs; returns the
        reports and the runs skipped because they are running."""
        forgotten = VerifiedResults(self.settings.home).clear()
        if forgotten:
            log.info("verified_results_removed", count=forgotten)
        return self._clean_runs(all_runs(self.settings.home), reason, force=force)

    def clean_expired(
        self, ttl_seconds: float, *, force: bool = False
    ) -> tuple[list[CleanupReport], list[str]]:
        expired = [run for run in all_runs(self.settings.home) if run.lease_age() > ttl_seconds]
        return self._clean_runs(expired, "expired", force=force)

    def _clean_runs(
        self, runs: list[RunRecord], reason: CleanupReason, *, force: bool
    ) -> tuple[list[CleanupReport], list[str]]:
        skipped = [run.run_id for run in runs if not force and run.in_progress()]
        todo = [run for run in runs if run.run_id not in skipped]
        reports: dict[str, CleanupReport] = {}
        # Runs of one home share store paths: one run's derivation may reference a path another
        # run recorded, which Nix keeps until that one is gone. What failed is tried again
        # while a pass still removes something.
        for _ in range(CLEAN_PASSES):
            progressed = False
            for run in todo:
                report = self.clean(CleanupRequest(run_id=run.run_id, reason=reason))
                progressed = progressed or bool(report.removed)
                earlier = reports.get(run.run_id)
                if earlier is not None:
                    report = report.model_copy(update={"removed": earlier.removed + report.removed})
                reports[run.run_id] = report
            todo = [run for run in todo if reports[run.run_id].failures]
            if not todo or not progressed:
                break
        return list(reports.values()), skipped

    def _remove(self, record: RunRecord, item: Resource) -> RemovedItem | CleanupFailure | None:
        path = Path(item.path)
        try:
            if item.kind == "service":
                stopped = item.pid is not None and services.stop(item.pid, item.started)
                record.remove(item)
                return (
                    RemovedItem(what="service", path=item.path, bytes_freed=0) if stopped else None
                )
            if item.kind == "target_dir" and self._used_elsewhere(record, item):
                record.remove(item)
                return None
            if item.kind == "prebuild" and item.pid is not None:
                record.remove(item)  # its runner was stopped; its log goes with its directory
                return None
            if not path.exists() and not path.is_symlink():
                record.remove(item)
                return None
            size = disk_usage(path) or 0
            remove_tree(path)  # at any depth a build nested it, never following a symlink
            record.remove(item)
            return RemovedItem(what=item.kind, path=item.path, bytes_freed=size)
        except OSError as exc:
            return CleanupFailure(path=item.path, reason=exc.strerror or str(exc))

    def _used_elsewhere(self, record: RunRecord, item: Resource) -> bool:
        """Does another run (or another candidate of this one, when cleaning one) use it?"""
        for other in all_runs(self.settings.home):
            for resource in other.items(item.kind):
                if resource.path != item.path:
                    continue
                if other.run_id != record.run_id or resource.candidate_id != item.candidate_id:
                    return True
        return False

    def _delete_store_paths(
        self,
        record: RunRecord,
        items: list[Resource],
        removed: list[RemovedItem],
        failures: list[CleanupFailure],
    ) -> None:
        # Delete outputs before what they were built from; each on its own, so one path still in
        # use (rooted by another run) does not keep the others.
        present = [
            item
            for item in items
            if Path(item.path).exists() and not self._used_elsewhere(record, item)
        ]  # a store path another run deployed too (a reused result) stays for that run
        for item in items:
            if item not in present:
                record.remove(item)
        pending = sorted(present, key=lambda item: item.path.endswith(".drv"))
        # A path referenced by another of ours goes once that one is gone: passes go on while
        # they remove something. Nix also counts what a running process uses as a root, so a
        # process of the run that is still exiting holds paths for a moment: a pass that removes
        # nothing waits a little and tries again, a few times.
        waits = list(IN_USE_WAITS_S)
        while pending:
            still: list[Resource] = []
            for item in pending:
                size = disk_usage(Path(item.path)) or 0
                try:
                    self.nix.delete([item.path])
                except CommandFailed:
                    still.append(item)
                    continue
                record.remove(item)
                removed.append(RemovedItem(what="store_path", path=item.path, bytes_freed=size))
            if len(still) == len(pending):
                if not waits:
                    break
                time.sleep(waits.pop(0))
            pending = still
        for item in pending:
            failures.append(
                CleanupFailure(
                    path=item.path, reason="still in use (rooted or referenced elsewhere)"
                )
            )

    def _forget_run(self, record: RunRecord) -> None:
        if record.items():
            return
        shutil.rmtree(record.directory, ignore_errors=True)
        for directory in (
            self.settings.workspaces_dir,
            self.settings.gcroots_dir,
            self.settings.home / "deployments",
            self.settings.home / "prebuilds",
        ):
            run_dir = directory / record.run_id
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
