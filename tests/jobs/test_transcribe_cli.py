"""`parakeet-ray transcribe` as a user runs it: argument errors fail fast, and a driver killed
mid-job (SIGKILL, its embedded Ray with it) is resumed by rerunning the same command."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jobs.cli import build_parser, main
from jobs.transcribe import DEFAULT_MODEL, UsageError, build_config
from pipeline.sink import committed_files, read_output
from tests.pipeline.conftest import model_dir  # noqa: F401 - the tiny saved model fixture

REPO = Path(__file__).resolve().parents[2]
AUDIO = REPO / "tests" / "data" / "audio"


def cli(*argv: str, timeout: float = 300, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", "transcribe", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def test_help_lists_the_options():
    text = build_parser()._subparsers._group_actions[0].choices["transcribe"].format_help()
    for opt in ("--model", "--address", "--actors", "--gpus-per-actor", "--batch-seconds", "--extensions", "--limit",
                "--storage-options"):
        assert opt in text


def test_missing_input_fails_fast_naming_it(tmp_path, capsys, model_dir):
    assert main(["transcribe", str(tmp_path / "nope"), str(tmp_path / "out"), "--model", model_dir]) == 2
    assert "nope does not exist" in capsys.readouterr().err


def test_unwritable_output_fails_fast_naming_it(tmp_path, capsys, model_dir):
    (tmp_path / "blocker").write_text("a file, not a folder")
    assert main(["transcribe", str(AUDIO), str(tmp_path / "blocker" / "out"), "--model", model_dir]) == 2
    assert "blocker/out is not writable" in capsys.readouterr().err


def test_bad_options_are_usage_errors(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["transcribe", str(AUDIO), str(tmp_path), "--model", str(tmp_path / "missing-model")])
    with pytest.raises(UsageError, match="missing-model does not exist"):
        build_config(args)
    args = parser.parse_args(["transcribe", str(AUDIO), str(tmp_path), "--model", str(tmp_path), "--storage-options", "{bad"])
    with pytest.raises(UsageError, match="not valid JSON"):
        build_config(args)
    args = parser.parse_args(["transcribe", str(AUDIO), str(tmp_path), "--model", str(tmp_path), "--batch-seconds", "0"])
    with pytest.raises(UsageError, match="batch_seconds must be positive"):
        build_config(args)


def test_confidence_and_decoding_options(tmp_path):
    from model.confidence import ConfidenceConfig

    parser = build_parser()
    base = ["transcribe", str(AUDIO), str(tmp_path), "--model", str(tmp_path)]
    cfg = build_config(parser.parse_args(base))
    assert cfg.confidence == ConfidenceConfig() and cfg.decoding is None  # NeMo's defaults; the checkpoint's strategy
    cfg = build_config(parser.parse_args(base + [
        "--confidence", "entropy", "--confidence-entropy-type", "renyi", "--confidence-alpha", "0.5",
        "--confidence-entropy-norm", "lin", "--confidence-aggregation", "mean", "--confidence-include-blank",
        "--confidence-tdt-duration", "--decoding", "greedy"]))
    assert cfg.confidence == ConfidenceConfig(name="entropy", entropy_type="renyi", alpha=0.5, entropy_norm="lin",
                                              aggregation="mean", exclude_blank=False, tdt_include_duration=True)
    assert cfg.decoding == "greedy"
    assert build_config(parser.parse_args(base + ["--confidence", "none"])).confidence is None
    with pytest.raises(UsageError, match="alpha"):
        build_config(parser.parse_args(base + ["--confidence-alpha", "0"]))


def test_default_model_is_the_bundled_demo(tmp_path):
    args = build_parser().parse_args(["transcribe", str(AUDIO), str(tmp_path)])
    assert args.model == DEFAULT_MODEL and DEFAULT_MODEL.endswith("model/pretrained/parakeet-tdt-demo")
    if os.path.exists(DEFAULT_MODEL):
        assert build_config(args).model_uri == DEFAULT_MODEL
    else:
        with pytest.raises(UsageError, match="bundled demo model is not built"):
            build_config(args)


def test_killed_driver_is_resumed_exactly_once(model_dir, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    clips = sorted(p for p in AUDIO.iterdir() if p.suffix in (".wav", ".flac"))
    for copy in range(10):  # enough work that the first commit comes well before the last
        for clip in clips:
            shutil.copy(clip, inp / f"{copy}-{clip.name}")
    inputs = sorted(str(p) for p in inp.iterdir())
    out = tmp_path / "out"
    argv = (str(inp), str(out), "--model", model_dir, "--rows-per-file", "1", "--no-progress", "--window-rows", "1",
            "--threads-per-actor", "1")
    proc = cli(*argv)
    deadline = time.monotonic() + 240
    while not (out.exists() and committed_files(str(out))) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
    proc.communicate()
    partial = read_output(str(out)).column("audio_uri").to_pylist()
    assert 0 < len(partial) < len(inputs), "the driver should have been killed mid-job"
    proc = cli(*argv)  # the killed driver's lease is fresh, but its process is gone: taken over at once
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "took over a stale lease" in stderr
    uris = read_output(str(out)).column("audio_uri").to_pylist()
    assert Counter(uris) == Counter(inputs)  # every input exactly once
    summary = json.loads(stdout.strip().splitlines()[-1])
    # Workers of the killed job may still commit a file or two while they wind down: never twice.
    assert summary["skipped_already_done"] >= len(partial)
    assert summary["skipped_already_done"] + summary["files"] == len(inputs)
