"""Runs left RUNNING by a dead process are found by their owner tags and marked KILLED; live ones are not.

Real processes open real runs (MLflow on SQLite): one is SIGKILLed, one keeps running with a fast
heartbeat. Runs "on another host" (a pod) are written with the tags such a process writes, one with
a stale heartbeat and one with a fresh one, plus a run with no owner at all (a notebook's). Then
`mem1 runs list` and `mem1 runs clean` judge and close them as their --help says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mem1_core.cli import main
from mem1_core.tracking import TAG_HEARTBEAT, TAG_OWNER

REPO = Path(__file__).resolve().parents[1]
OPEN_A_RUN = """
import sys, time
from mem1_core.tracking import Tracker
with Tracker(sys.argv[1], "orphans").step_run(sys.argv[2], {}) as run:
    print(run.run_id, flush=True)
    time.sleep(600)
"""


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture()
def owners(store: str) -> Iterator[dict[str, tuple[str, subprocess.Popen[str]]]]:
    """Two real processes each holding a run open: 'dead' (to be SIGKILLed) and 'live' (beats every 0.5 s)."""
    env = {**os.environ, "MEM1_HEARTBEAT_S": "0.5"}
    procs = {}
    for name in ("dead", "live"):
        cmd = [sys.executable, "-c", OPEN_A_RUN, store, name]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        procs[name] = (proc.stdout.readline().strip(), proc)  # type: ignore[union-attr]
    try:
        yield procs
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def test_runs_of_dead_processes_are_marked_killed_and_live_ones_left_alone(
    store: str, owners: dict[str, tuple[str, subprocess.Popen[str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("orphans").experiment_id
    now = int(time.time())

    def pod(name: str, beat: int) -> str:
        """A run a pod's process opened, as its owner tags say (another host, a heartbeat at `beat`)."""
        tags = {TAG_OWNER: "trainer-pod-7/1/1.00", TAG_HEARTBEAT: str(beat)}
        return str(client.create_run(exp, run_name=name, tags=tags).info.run_id)

    stale, fresh = pod("pod-stale", now - 900), pod("pod-fresh", now)
    notebook = client.create_run(exp, run_name="notebook").info.run_id
    dead, live = owners["dead"][0], owners["live"][0]
    first_beat = int(client.get_run(live).data.tags[TAG_HEARTBEAT])
    owners["dead"][1].send_signal(signal.SIGKILL)
    owners["dead"][1].wait(10)
    time.sleep(1.5)
    assert int(client.get_run(live).data.tags[TAG_HEARTBEAT]) > first_beat, "the live run's heartbeat renews"

    assert main(["runs", "list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "gone: its process" in listed[dead] and "is no longer running" in listed[dead]
    assert "alive: process" in listed[live]
    assert "gone: no heartbeat for" in listed[stale] and "alive: heartbeat" in listed[fresh]
    assert "unknown: no owner tag" in listed[notebook]

    assert main(["runs", "clean", "--dry-run"]) == 0
    assert "2 run(s) to mark KILLED; 3 left RUNNING" in capsys.readouterr().out
    assert {client.get_run(r).info.status for r in (dead, stale)} == {"RUNNING"}, "a dry run changes nothing"

    assert main(["runs", "clean"]) == 0
    assert "2 run(s) marked KILLED; 3 left RUNNING" in capsys.readouterr().out
    status = {r: client.get_run(r).info.status for r in (dead, live, stale, fresh, notebook)}
    assert status == {dead: "KILLED", stale: "KILLED", live: "RUNNING", fresh: "RUNNING", notebook: "RUNNING"}
    tags = client.get_run(dead).data.tags
    assert tags["mem1.killed_reason"].startswith("found by `mem1 runs clean`: its process ")
    assert tags["mem1.killed_at"].endswith("Z") and "last heartbeat" in tags["mem1.killed_reason"]
    assert "no heartbeat for" in client.get_run(stale).data.tags["mem1.killed_reason"]
    assert client.get_run(stale).info.end_time == (now - 900) * 1000, "ended at its last heartbeat"

    assert main(["runs", "clean", "--run-id", notebook]) == 0  # what mem1 cannot judge, closed by hand
    assert client.get_run(notebook).info.status == "KILLED"
    assert main(["runs", "clean", "--run-id", "no-such-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --run-id no-such-run: not a RUNNING run")


def test_runs_help_explains_how_runs_are_judged(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["runs", "clean", "--help"])
    out = capsys.readouterr().out
    for words in ("mem1.owner", "mem1.heartbeat", "alive", "gone", "unknown", "KILLED", "--stale-after"):
        assert words in out


def test_runs_with_the_server_down_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["runs", "list", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: MLflow tracking server at {uri} is unreachable"), err
    assert not [line for line in err if line.startswith("Traceback")]
