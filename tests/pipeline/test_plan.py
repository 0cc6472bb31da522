"""The job sizes itself from the machine and the inputs (pipeline.job.size_to_inputs / node_shape / resolve_resources)."""
import dataclasses
import os

import pyarrow as pa

from pipeline.batching import DEFAULT_BATCH_SECONDS
from pipeline.job import (CPU_BATCH_SECONDS, MAX_WINDOW_ROWS, WINDOW_BATCHES,
                          MIN_AUDIO_PER_ACTOR_S, NodeShape, TranscribeConfig, cpu_actor_bytes, cpu_actors_per_node, decode_concurrency, describe_plan, node_shape,
                          resolve_resources, size_to_inputs, typical_duration, worthwhile_actors, balanced_window,
                          largest_divisor, MAX_BLOCK_ROWS, attention_bytes, ATTENTION_BYTES_PER_SCORE,
                          DECODERS_PER_GPU_ACTOR, gpu_decoders, measure_decode_rate, sampled_durations)
from model.config import preset
from tests.pipeline.conftest import AUDIO, CLIPS

CFG = TranscribeConfig("in", "out", "m", batch_seconds=600)


def test_the_window_fills_batch_seconds_with_short_clips_and_shrinks_with_long_ones():
    short = size_to_inputs(CFG, 2.0, 1, 1.0, 16)
    medium = size_to_inputs(CFG, 15.0, 1, 1.0, 16)
    hour = size_to_inputs(CFG, 3600.0, 1, 1.0, 16)
    assert short.window_rows == min(MAX_WINDOW_ROWS, WINDOW_BATCHES * 600 // 2)
    w0 = WINDOW_BATCHES * 600 // 15  # whole decode tasks of it (test_each_stage_takes_whole_blocks_of_the_one_before)
    assert w0 - medium.decode_rows < medium.window_rows <= w0 and medium.window_rows * 15 >= 600  # GPU batches fill
    assert hour.window_rows == 1 and hour.decode_rows == 1  # memory stays bounded: one hour-long file at a time
    assert short.decode_rows > medium.decode_rows > hour.decode_rows
    assert size_to_inputs(CFG, None, 1, 1.0, 16).window_rows == 32  # no header says: the fixed fallback
    fixed = TranscribeConfig("in", "out", "m", window_rows=7, decode_rows=3, threads_per_actor=5, decode_tasks=2,
                             batch_seconds=50)
    assert size_to_inputs(fixed, 2.0, 1, 0.0, 16) == fixed  # given values are kept


def test_the_default_plan_uses_every_cpu_of_the_local_node(ray_cluster):
    shape = node_shape()
    assert shape.nodes == 1 and shape.cores == min(4, os.cpu_count()) and shape.cpus == 4  # the test cluster: 4 logical
    default = TranscribeConfig("in", "out", "m")
    actors, gpus = resolve_resources(default, {"CPU": 4.0}, shape, 8 * 1024**2)  # a small checkpoint
    cfg = size_to_inputs(default, 3.0, actors, gpus, shape.cores, shape.nodes)
    # single-thread actors up to the cores (and the logical CPUs the commits leave: 4 - 0.25)
    assert actors == min(shape.cores, 2) and gpus == 0.0
    assert actors * cfg.threads_per_actor <= shape.cores < actors * (cfg.threads_per_actor + 1)  # every core used
    assert cfg.threads_per_actor == 1 and cfg.decode_tasks == 0  # each single-thread actor decodes its own inputs
    line = describe_plan(cfg, actors, gpus)
    assert f"{actors} model actor(s) x 1 CPU thread(s), decoding inside the model actors" in line
    assert f"{cfg.window_rows} inputs per actor call" in line
    assert size_to_inputs(default, 3.0, 2, 1.0, shape.cores, shape.nodes).threads_per_actor == 1  # GPU actors
    assert resolve_resources(default, {"CPU": 4.0, "GPU": 2.0}, shape) == (2, 1.0)  # one per GPU, whatever the cores


def test_cpu_actors_are_one_per_core_as_far_as_memory_and_cpus_allow():
    cfg, GiB = TranscribeConfig("in", "out", "m"), 1024**3
    big = NodeShape(cores=16, cpus=16.0, memory=64 * GiB, nodes=3)
    assert cpu_actors_per_node(cfg, big, 8 * 1024**2) == 15  # 16 CPUs - the commits' 0.25
    per_06b = cpu_actor_bytes(cfg, int(2.5 * GiB))
    assert cpu_actors_per_node(cfg, big, int(2.5 * GiB)) == int(64 * GiB // per_06b) == 11  # memory: 16 copies do not fit
    assert cpu_actors_per_node(cfg, big, None) == int(64 * GiB // cpu_actor_bytes(cfg, None)) == 8
    assert cpu_actors_per_node(cfg, NodeShape(16, 16.0, 1 * GiB, 1), 8 * 1024**2) == 1  # never none
    assert cpu_actors_per_node(TranscribeConfig("in", "out", "m", cpus_per_actor=4), big, 0) == 3  # (16 - 1.25) // 4
    # decode tasks of their own keep a CPU free for one, or none would ever be scheduled beside 15 actors
    for separate in (TranscribeConfig("in", "out", "m", decode_tasks=4), TranscribeConfig("in", "out", "m", threads_per_actor=2)):
        assert decode_concurrency(separate, 14, 0.0) > 0
        assert cpu_actors_per_node(separate, big, 8 * 1024**2) == 14  # (16 - 0.25 - 1) // 1
    assert cpu_actors_per_node(TranscribeConfig("in", "out", "m", decode_tasks=0), big, 8 * 1024**2) == 15
    small = NodeShape(2, 2.0, 64 * 1024**3, 1)  # 0.75 CPU each: two actors and a commit would leave 0.25
    assert cpu_actors_per_node(TranscribeConfig("in", "out", "m", decode_tasks=1, cpus_per_actor=0.75), small, 0) == 1
    actors, _ = resolve_resources(cfg, {"CPU": 48.0}, big, 8 * 1024**2)
    assert actors == 3 * 15  # every CPU node
    sized = size_to_inputs(cfg, 3.0, actors, 0.0, big.cores, big.nodes)
    assert sized.threads_per_actor == 1 and sized.decode_tasks == 0  # single-thread actors decode their own inputs
    few = size_to_inputs(cfg, 3.0, 3 * 5, 0.0, big.cores, big.nodes)
    assert few.threads_per_actor == 3 and few.decode_tasks == 3  # memory-bound actors share the cores; a decoder a node
    assert "1 decode task(s)" in describe_plan(dataclasses.replace(few, decode_tasks=None), 5, 0.0)
    assert size_to_inputs(TranscribeConfig("in", "out", "m", decode_tasks=2), 3.0, 2, 0.0, 2).decode_tasks == 2  # given
    assert resolve_resources(TranscribeConfig("in", "out", "m", actors=5), {"CPU": 48.0}, big) == (5, 0.0)  # --actors
    assert decode_concurrency(TranscribeConfig("in", "out", "m", decode_tasks=7), 2, 0.0) == 7
    # a small job keeps one actor: not another model load for a window or a few minutes of audio
    assert worthwhile_actors(9, 3.0, 1) == 1 and worthwhile_actors(3000, 3.0, 1024) == 3
    assert worthwhile_actors(100_000, 3.0, 1024) == 98 and worthwhile_actors(100_000, 0.05, 1024) == int(5_000 // MIN_AUDIO_PER_ACTOR_S)
    assert worthwhile_actors(40, None, 8) == 5  # durations unknown: a window each
    assert decode_concurrency(cfg, 2, 1.0) == 8  # GPU actors: DECODERS_PER_GPU_ACTOR each


def test_windows_are_shared_evenly_by_the_actors():
    assert balanced_window(3000, 1024, 512, 2) == 512  # 6 windows, 3 each: not 3 with one actor taking the last alone
    assert balanced_window(12288, 1024, 512, 2) == 1024 and balanced_window(100, 1024, 512, 1) == 1024
    assert balanced_window(3 * 1024, 1024, 256, 2) == 768  # 16 tasks -> 4 windows of 3 tasks... not 3 of 4
    assert balanced_window(5000, 1024, 128, 3) == 896 and balanced_window(5, 1, 1, 2) == 1
    # two windows either way, but 8 + 7 decode tasks, not 10 + 5: the busiest actor has 384 rows, not 480
    assert balanced_window(691, 480, 48, 2) == 384 and balanced_window(691, 480, 48, 1) == 480
    for inputs, window, decode, actors in ((3000, 1024, 512, 3), (10_001, 512, 64, 4), (7, 2, 1, 2), (1, 8, 8, 3)):
        rows = balanced_window(inputs, window, decode, actors)
        assert rows % decode == 0 and window // 2 <= rows <= window


def test_each_stage_takes_whole_blocks_of_the_one_before():
    for d in (0.5, 2.0, 3.0, 7.0, 15.0, 42.0, 600.0, 3600.0, None):
        cfg = size_to_inputs(CFG, d, 2, 0.0, 2, 1)
        assert cfg.window_rows % cfg.decode_rows == 0, d
        assert cfg.decode_rows % MAX_BLOCK_ROWS == 0 or cfg.decode_rows < MAX_BLOCK_ROWS, d
    given = size_to_inputs(TranscribeConfig("in", "out", "m", window_rows=700), 3.0, 1, 0.0, 2, 1)
    assert given.window_rows == 700 and 700 % given.decode_rows == 0 and given.decode_rows <= 512
    assert largest_divisor(700, 512) == 350 and largest_divisor(229, 32) == 1 and largest_divisor(5, 0) == 1


def test_batches_are_short_on_cpu_and_long_on_gpus():
    default = TranscribeConfig("in", "out", "m")
    assert size_to_inputs(default, 3.0, 2, 0.0, 2, 1).batch_seconds == CPU_BATCH_SECONDS  # any model's size
    assert size_to_inputs(default, 3.0, 2, 1.0, 2, 1).batch_seconds == DEFAULT_BATCH_SECONDS
    # the window is sorted over GPU-sized batches of audio either way
    wide = size_to_inputs(default, 6.0, 2, 0.0, 2, 1)
    assert WINDOW_BATCHES * DEFAULT_BATCH_SECONDS // 6 - wide.decode_rows < wide.window_rows <= WINDOW_BATCHES * DEFAULT_BATCH_SECONDS // 6
    assert size_to_inputs(TranscribeConfig("in", "out", "m", batch_seconds=30), 3.0, 1, 0.0, 2, 1).batch_seconds == 30


def test_cpu_actor_memory_covers_the_measured_peaks():
    # Peak RSS of one Transcriber on Parakeet 0.6B's shape (stored 2,353 MB), tests/perf/bench_actor_memory.py:
    # 3,698 MB for a 120 s batch of 10 s clips, 5,156 MB for one 300 s chunk, 7,196 MB for a 600 s batch.
    MB, stored = 1024**2, int(2353 * 1024**2)
    at_defaults = TranscribeConfig("in", "out", "m")  # 120 s batches on CPU, 300 s chunks
    assert cpu_actor_bytes(at_defaults, stored) >= 5156 * MB
    assert cpu_actor_bytes(TranscribeConfig("in", "out", "m", batch_seconds=600.0), stored) >= 7196 * MB
    assert cpu_actor_bytes(TranscribeConfig("in", "out", "m", chunk_seconds=60.0), stored) >= 3698 * MB
    # the estimate follows the largest call: longer chunks or batches need more
    assert cpu_actor_bytes(TranscribeConfig("in", "out", "m", chunk_seconds=600.0), stored) > cpu_actor_bytes(at_defaults, stored)
    # a small model: its worker, and one long chunk's attention (the tiny preset peaked at 426 MB for 40 s of
    # 5 s clips and at 1,538 MB for one 300 s chunk)
    assert 1538 * MB <= cpu_actor_bytes(at_defaults, 8 * MB) < 3 * 1024**3
    # with its own config (4 heads): 1,534 MB at the peak of one 300 s chunk, measured with that reserve
    assert 1534 * MB <= cpu_actor_bytes(at_defaults, 1 * MB, preset("tiny")) < cpu_actor_bytes(at_defaults, 1 * MB)
    assert cpu_actor_bytes(TranscribeConfig("in", "out", "m", chunk_seconds=60.0), 8 * MB) < 1024**3


def _encoder(config, **changes):
    return dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, **changes))


def test_attention_memory_follows_the_models_heads_frame_rate_and_context():
    parakeet = preset("parakeet-tdt-0.6b-v3")  # 8 heads, 8x subsampling of 10 ms features, full attention
    assert attention_bytes(300.0, parakeet) == attention_bytes(300.0)  # the shape assumed when none is known
    assert attention_bytes(300.0, parakeet) == ATTENTION_BYTES_PER_SCORE * 8 * 3750**2
    assert attention_bytes(300.0, _encoder(parakeet, n_heads=4)) * 2 == attention_bytes(300.0, parakeet)
    assert attention_bytes(300.0, _encoder(parakeet, subsampling_factor=4)) == 4 * attention_bytes(300.0, parakeet)
    local = _encoder(parakeet, att_context_size=(128, 128))  # queries in blocks, each sees 256 + 256 keys at most
    assert attention_bytes(300.0, local) == attention_bytes(3000.0, local) == ATTENTION_BYTES_PER_SCORE * 8 * 256 * 512
    one_sided = _encoder(parakeet, att_context_size=(-1, 64))  # unlimited on one side: full attention's memory
    assert attention_bytes(300.0, one_sided) == attention_bytes(300.0, parakeet)


def test_cpu_actors_are_sized_by_the_checkpoints_own_attention():
    # a 4x-subsampling model's 300 s chunk attends over 7,500 frames: 8.4 GiB, where at 8x the convolutions' 2.3 GiB
    node, cfg, stored = NodeShape(16, 16.0, 64 * 1024**3, 1), TranscribeConfig("in", "out", "m"), int(2.5 * 1024**3)
    parakeet = preset("parakeet-tdt-0.6b-v3")
    fine = _encoder(parakeet, subsampling_factor=4)
    assert cpu_actor_bytes(cfg, stored, fine) - cpu_actor_bytes(cfg, stored, parakeet) > 4.5 * 1024**3
    assert cpu_actors_per_node(cfg, node, stored, fine) < cpu_actors_per_node(cfg, node, stored, parakeet) == 11
    assert resolve_resources(cfg, {"CPU": 16.0}, node, stored, fine)[0] == cpu_actors_per_node(cfg, node, stored, fine)


def test_gpu_actors_get_the_decoders_a_measured_decode_rate_needs():
    assert gpu_decoders(2, 30_000.0) == 2  # 16 kHz WAV: one a GPU
    assert gpu_decoders(2, 500.0) == 2 * 14  # MP3 at 500x a core: ceil(7,000 / 500) a GPU
    assert gpu_decoders(8, 500.0, spare_cpus=96 - 8 - 0.25) == 87  # as many as the cluster's other CPUs hold
    assert gpu_decoders(2, 500.0, spare_cpus=0.5) == 1  # at least one
    assert gpu_decoders(2, None) == 2 * DECODERS_PER_GPU_ACTOR  # no input decoded: the fixed fallback
    sized = size_to_inputs(TranscribeConfig("in", "out", "m"), 3.0, 2, 1.0, 16, 1, decode_rate=700.0, spare_cpus=40.0)
    assert sized.decode_tasks == 20
    plan = describe_plan(sized, 2, 1.0, 700.0)
    assert "20 decode task(s) (a task decodes 700x real time" in plan and "7,000x" in plan
    given = TranscribeConfig("in", "out", "m", decode_tasks=3)
    assert size_to_inputs(given, 3.0, 2, 1.0, 16, 1, decode_rate=700.0, spare_cpus=40.0).decode_tasks == 3


def test_the_decode_rate_is_measured_on_a_few_short_real_inputs(tmp_path):
    cfg = TranscribeConfig("in", "out", "m")
    sampled = sampled_durations(cfg, pa.array([str(AUDIO / c) for c in CLIPS]))
    assert len(sampled) == len(CLIPS) and all(d and d < 10 for _, d in sampled)
    rate = measure_decode_rate(cfg, sampled)
    assert rate is not None and rate > 0
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    unreadable = sampled_durations(cfg, pa.array([str(broken), str(tmp_path / "missing.wav")]))
    assert [d for _, d in unreadable] == [None, None] and measure_decode_rate(cfg, unreadable) is None
    assert measure_decode_rate(cfg, [(str(broken), 3.0)]) is None  # decoded and failed: no rate from it
    # a long file is not decoded on the driver: no rate, whatever it holds (the fixed fallback then)
    assert measure_decode_rate(cfg, [(str(AUDIO / CLIPS[0]), 3600.0)]) is None
    assert sampled_durations(cfg, pa.array([], pa.string())) == [] and measure_decode_rate(cfg, []) is None


def test_typical_duration_reads_headers_only():
    inputs = pa.array([str(AUDIO / c) for c in CLIPS] + [str(AUDIO / "missing.wav")])
    d = typical_duration(sampled_durations(TranscribeConfig("in", "out", "m"), inputs))
    assert 1.0 < d < 6.0
