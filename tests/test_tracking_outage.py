"""The tracking server lost in the middle of sft: a real `mlflow server` on PostgreSQL (the backend the
manifests deploy) is SIGKILLed while the sft step logs its per-step metrics, and restarted on the same
port 30 s later.

The step (components.launch.train_step, as the KFP component runs it) rides the outage out: its metric
calls retry with backoff (tracking.OUTAGE_RETRY, ~2 minutes in all), training carries on once the
server is back, every step's metrics are stored exactly once, the run ends FINISHED, and the model
version registered before the outage is still there, once, with its alias.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import make_data_dir, start_server, stop_server
from test_postgres_backend import postgres_uri  # noqa: F401 - the fixture: a real PostgreSQL cluster

from mem1_core.config import SFTConfig

REPO = Path(__file__).resolve().parents[1]
OUTAGE_S = 30.0
PRETRAIN_STEPS = 300
RUN_SFT_STEP = """
import sys
from pathlib import Path
from components import launch
uri, parent, data, out, section = sys.argv[1:]
run_id, last = launch.train_step("sft", section, uri, parent, Path(data), None, out, 1, 1, "trainjob")
print("sft run", run_id, flush=True)
"""


def _section() -> str:
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "vocab_size": 400}
    cfg = SFTConfig.model_validate(
        {
            "model": {"base_model": "tiny", "tiny": tiny},
            "batch_size": 2,
            "epochs": 0.5,
            "checkpoint_every": 0,
            "pretrain": {"steps": PRETRAIN_STEPS, "seq_len": 32, "batch_size": 2, "warmup_steps": 1},
        }
    )
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


@pytest.mark.slow
def test_sft_rides_out_a_killed_and_restarted_tracking_server(
    postgres_uri: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    from components.mlflow_runs import start_parent_run

    root = tmp_path / "server"
    proc, url = start_server(root, backend_store_uri=postgres_uri)
    port = int(url.rsplit(":", 1)[1])
    step = None
    try:
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        parent = start_parent_run(url, "outage", "pipeline", {})
        client.create_registered_model("mem1-outage")
        v1 = client.create_model_version("mem1-outage", f"runs:/{parent}/model", parent)
        client.set_registered_model_alias("mem1-outage", "champion", v1.version)

        data = make_data_dir(tmp_path / "data")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("MEM1_CHECKPOINT_ROOT", None)
        cmd = [
            sys.executable,
            "-c",
            RUN_SFT_STEP,
            url,
            parent,
            str(data),
            str(tmp_path / "model"),
            _section(),
        ]
        step = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
        )

        exp = client.get_experiment_by_name("outage").experiment_id
        deadline = time.monotonic() + 150
        while True:  # until sft logs its first pre-training step
            assert step.poll() is None, step.communicate()
            assert time.monotonic() < deadline, "sft logged no pre-training step in time"
            runs = client.search_runs([exp], "attributes.run_name = 'sft'")
            if runs and "pretrain/loss" in runs[0].data.metrics:
                break
            time.sleep(0.2)
        sft_run = runs[0].info.run_id

        os.killpg(proc.pid, signal.SIGKILL)  # the server dies, as an OOM kill or a lost node does
        proc.wait(10)
        killed_at = time.monotonic()
        time.sleep(OUTAGE_S)
        proc, _ = start_server(root, backend_store_uri=postgres_uri, port=port)
        back_after = time.monotonic() - killed_at

        out, err = step.communicate(timeout=240)
        assert step.returncode == 0, err[-3000:]
        assert f"sft run {sft_run}" in out
        retried = re.findall(rf"mlflow: {url} failed while [^\r\n]*", err)  # progress bars share stderr
        assert retried and "retrying for up to 128s" in retried[0], "a metric call met the dead server"

        run = client.get_run(sft_run)
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(sft_run, "pretrain/loss")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, PRETRAIN_STEPS + 1)), "every step's loss stored exactly once"
        assert client.get_metric_history(sft_run, "sft/loss"), "SFT after pre-training was logged too"
        versions = client.search_model_versions("name = 'mem1-outage'")
        assert [v.version for v in versions] == [v1.version], "nothing registered is lost or doubled"
        assert client.get_model_version_by_alias("mem1-outage", "champion").version == v1.version
        client.set_terminated(parent, "FINISHED")  # what the pipeline's exit handler does
        assert not client.search_runs([exp], "attributes.status = 'RUNNING'"), "no run left RUNNING"
        print(f"server back after {back_after:.1f}s; {retried[0]}")
    finally:
        if step is not None and step.poll() is None:
            step.kill()
        stop_server(proc)
