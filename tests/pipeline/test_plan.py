"""The job sizes itself from the machine and the inputs (pipeline.job.size_to_inputs / node_cores)."""
import os

import pyarrow as pa

from pipeline.job import (MAX_WINDOW_ROWS, WINDOW_BATCHES, TranscribeConfig, describe_plan, node_cores, size_to_inputs,
                          typical_duration)
from tests.pipeline.conftest import AUDIO, CLIPS

CFG = TranscribeConfig("in", "out", "m", batch_seconds=600)


def test_the_window_fills_batch_seconds_with_short_clips_and_shrinks_with_long_ones():
    short = size_to_inputs(CFG, 2.0, 1, 1.0, 16)
    medium = size_to_inputs(CFG, 15.0, 1, 1.0, 16)
    hour = size_to_inputs(CFG, 3600.0, 1, 1.0, 16)
    assert short.window_rows == min(MAX_WINDOW_ROWS, WINDOW_BATCHES * 600 // 2)
    assert medium.window_rows == WINDOW_BATCHES * 600 // 15 and medium.window_rows * 15 >= 600  # GPU batches fill
    assert hour.window_rows == 1 and hour.decode_rows == 1  # memory stays bounded: one hour-long file at a time
    assert short.decode_rows > medium.decode_rows > hour.decode_rows
    assert size_to_inputs(CFG, None, 1, 1.0, 16).window_rows == 32  # no header says: the fixed fallback
    fixed = TranscribeConfig("in", "out", "m", window_rows=7, decode_rows=3, threads_per_actor=5)
    assert size_to_inputs(fixed, 2.0, 1, 0.0, 16) == fixed  # given values are kept


def test_the_default_plan_uses_every_cpu_of_the_local_node(ray_cluster):
    cores, nodes = node_cores()
    assert nodes == 1 and cores == min(4, os.cpu_count())  # the test cluster advertises 4 logical CPUs
    cfg = size_to_inputs(TranscribeConfig("in", "out", "m"), 3.0, 1, 0.0, cores, nodes)
    assert cfg.threads_per_actor == cores  # one CPU actor: all the node's cores
    two = size_to_inputs(TranscribeConfig("in", "out", "m"), 3.0, 2, 0.0, cores, nodes)
    assert two.threads_per_actor * 2 <= max(2, cores)  # two actors share them
    assert "CPU thread(s)" in describe_plan(cfg, 1, 0.0) and f"{cfg.window_rows} inputs per actor call" in describe_plan(cfg, 1, 0.0)
    assert size_to_inputs(TranscribeConfig("in", "out", "m"), 3.0, 2, 1.0, cores, nodes).threads_per_actor == 1  # GPU actors


def test_typical_duration_reads_headers_only():
    inputs = pa.array([str(AUDIO / c) for c in CLIPS] + [str(AUDIO / "missing.wav")])
    d = typical_duration(TranscribeConfig("in", "out", "m"), inputs)
    assert 1.0 < d < 6.0
