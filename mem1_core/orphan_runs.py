"""MLflow runs left RUNNING by a process that died: find them and mark them KILLED, saying when and why.

Why: a SIGKILLed pipeline (a closed laptop, an OOM kill, a preempted node) never reaches the code that
ends its runs, and MLflow shows them as live forever. Every run mem1 opens carries its owner (tracking:
host/pid/start-time) and a heartbeat renewed every minute. On the owner's host the process table says
whether it lives; elsewhere a heartbeat older than `stale_after` says it died. A run with neither is
left alone ("unknown"): it may be someone's notebook. MLflow's own status for this case is KILLED.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil

from mem1_core.tracking import TAG_HEARTBEAT, TAG_OWNER, Tracker

TAG_KILLED_AT = "mem1.killed_at"  # when the run was found dead (UTC, ISO 8601)
TAG_KILLED_REASON = "mem1.killed_reason"  # why: which owner is gone, its last heartbeat, who marked it
STALE_AFTER_S = 300.0  # five missed heartbeats (tracking.HEARTBEAT_S)


@dataclass(frozen=True)
class OpenRun:
    """A RUNNING run and what its owner tags say: state is 'alive', 'gone' or 'unknown'."""

    run_id: str
    experiment: str
    name: str
    started: float  # unix seconds
    owner: str
    heartbeat: float | None
    state: str
    reason: str


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _process_alive(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def judge(owner: str, heartbeat: float | None, now: float, host: str, stale_after: float) -> tuple[str, str]:
    """(state, reason) of a run from its owner tag and heartbeat, seen from `host` at `now`."""
    o_host, pid, started = [*owner.rsplit("/", 2), "", ""][:3] if owner else ("", "", "")
    if o_host == host and pid.isdigit():
        if _process_alive(int(pid), float(started or 0)):
            return "alive", f"process {pid} on {host} is running"
        return "gone", f"its process {pid} on {host} is no longer running"
    if heartbeat is not None:
        age = now - heartbeat
        if age <= stale_after:
            return "alive", f"heartbeat {age:.0f}s ago"
        return "gone", f"no heartbeat for {age:.0f}s (over {stale_after:.0f}s) from {owner or 'its owner'}"
    if owner:
        return "unknown", f"owned by {owner} on another host, which sends no heartbeat"
    return "unknown", "no owner tag: started outside mem1, or before mem1 recorded owners"


def open_runs(
    tracker: Tracker, experiments: list[str] | None = None, stale_after: float = STALE_AFTER_S
) -> list[OpenRun]:
    """Every RUNNING run of the named experiments (all when None), judged, oldest first."""
    client = tracker.client
    found = tracker.call(lambda: client.search_experiments(), "listing experiments")
    by_id = {e.experiment_id: e.name for e in found if experiments is None or e.name in experiments}
    if not by_id:
        return []
    runs = tracker.call(
        lambda: client.search_runs(list(by_id), "attributes.status = 'RUNNING'", max_results=10_000),
        "listing RUNNING runs",
    )
    now, host = time.time(), socket.gethostname()
    out = []
    for r in runs:
        tags = r.data.tags
        owner = tags.get(TAG_OWNER, "")
        beat = float(tags[TAG_HEARTBEAT]) if tags.get(TAG_HEARTBEAT, "").isdigit() else None
        state, reason = judge(owner, beat, now, host, stale_after)
        started = (r.info.start_time or 0) / 1000
        exp = by_id[r.info.experiment_id]
        out.append(OpenRun(r.info.run_id, exp, r.info.run_name or "", started, owner, beat, state, reason))
    return sorted(out, key=lambda o: o.started)


def mark_killed(tracker: Tracker, run: OpenRun, why: str) -> None:
    """KILLED, ended at its last heartbeat (else now), with tags saying when it was found and why."""
    now = time.time()
    last = f"; last heartbeat {_iso(run.heartbeat)}" if run.heartbeat else ""
    reason = f"{why}: {run.reason}{last}"
    client = tracker.client
    tracker.call(lambda: client.set_tag(run.run_id, TAG_KILLED_AT, _iso(now)), "tagging a dead run")
    tracker.call(lambda: client.set_tag(run.run_id, TAG_KILLED_REASON, reason), "tagging a dead run")
    end_ms = int((run.heartbeat or now) * 1000)
    tracker.call(lambda: client.set_terminated(run.run_id, "KILLED", end_ms), "marking a dead run KILLED")


def close_orphans(
    tracker: Tracker, experiments: list[str] | None, why: str, stale_after: float = STALE_AFTER_S
) -> list[OpenRun]:
    """Mark KILLED every RUNNING run of these experiments whose owner is gone; returns them."""
    gone = [r for r in open_runs(tracker, experiments, stale_after) if r.state == "gone"]
    for run in gone:
        mark_killed(tracker, run, why)
    return gone


def summary_line(closed: list[OpenRun]) -> str:
    """One line for a console: how many runs were marked KILLED, and which."""
    names = ", ".join(f"{r.name or '?'} {r.run_id[:12]}" for r in closed)
    return f"marked {len(closed)} MLflow run(s) KILLED whose process is gone: {names}"
