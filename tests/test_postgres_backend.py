"""The tracking backend the manifests deploy: a real `mlflow server` on PostgreSQL.

The test starts its own PostgreSQL cluster (initdb into a temp dir, 127.0.0.1 on a free port; as the
`postgres` user when run as root, since postgres refuses to run as root), creates a database, starts
`mlflow server --backend-store-uri postgresql://...`, and runs log, register, alias and load through
it. `.ci/run` installs Debian's `postgresql` (`make postgres`), so CI runs it; it skips, saying so,
only where the binaries are absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import free_port, make_data_dir, make_model_dir, start_server, stop_server
from test_registry import QUESTIONS, answers_before_registration, eval_dir

from mem1_core.config import RegisterConfig
from mem1_core.registry import aliases, registration, serving
from mem1_core.tracking import Tracker

NAME = "mem1-agent-pg"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_cluster_owner(cmd: list[str]) -> list[str]:
    """postgres will not run as root: there, run the command as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (`make postgres` installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="mem1-pg-"))  # not under pytest's 0700 root: postgres reads it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    run = lambda cmd: subprocess.run(_as_cluster_owner(cmd), check=True, capture_output=True, timeout=120)  # noqa: E731
    run([str(bin_dir / "initdb"), "-D", str(data), "-U", "mem1", "--auth=trust", "-E", "UTF8"])
    opts = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"])
    try:
        run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mem1", "mlflow"])
        yield f"postgresql://mem1@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_cluster_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_log_register_alias_load_through_a_postgres_backed_server(postgres_uri: str, tmp_path: Path) -> None:
    import psycopg

    proc, url = start_server(tmp_path / "server", backend_store_uri=postgres_uri)
    try:
        data = make_data_dir(tmp_path / "data")
        model = make_model_dir(tmp_path / "model", data, seed=5)
        tracker = Tracker(url, experiment="pg")
        with tracker.step_run("smoke", {"lr": 0.1}) as run:  # log: params, metrics, an artifact
            run.log({"loss": 1.5}, 0)
            run.log({"loss": 0.5}, 1)
        history = tracker.client.get_metric_history(run.run_id, "loss")
        assert [m.value for m in history] == [1.5, 0.5]

        cfg = RegisterConfig(model_name=NAME, gate_objectives=2, gate_mode="mem1", gate_floor=0.0)
        # register + alias
        result = registration.run(cfg, model, eval_dir(tmp_path, "ev", 0.5), data, tracker)
        assert result.created and result.promoted
        assert str(tracker.client.get_model_version_by_alias(NAME, "champion").version) == "1"

        agent = aliases.load_registered(f"models:/{NAME}@champion", url)  # load through the server
        got = serving.answer_tasks(
            serving.tasks_from_input({"questions": QUESTIONS}),
            agent.model,
            agent.tokenizer,
            agent.grammar,
            agent.agent_cfg,
            agent._backend(None),
        )
        want = answers_before_registration(model, data)
        assert [(g["answer"], g["trajectory"]) for g in got] == [(w["answer"], w["trajectory"]) for w in want]
    finally:
        stop_server(proc)

    # and it all lives in PostgreSQL, not in a SQLite file next to the server
    with psycopg.connect(postgres_uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT name FROM registered_models")
        assert [r[0] for r in cur.fetchall()] == [NAME]
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (NAME,))
        assert ("champion", 1) in cur.fetchall()
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s", (run.run_id,))
        assert cur.fetchone()[0] == 2
    assert not list((tmp_path / "server").glob("*.db"))
