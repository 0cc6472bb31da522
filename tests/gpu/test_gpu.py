"""The GPU path against the CPU path (fixture models, NeMo-made), bf16 against fp32, and a throughput
printout. Marked `gpu`: skipped without CUDA (see conftest.py)."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from model.decoding import greedy_tdt
from model.label_looping import LabelLooping
from tests.gpu.conftest import DEVICE

pytestmark = pytest.mark.gpu
DATA = Path(__file__).resolve().parents[1] / "data"
MODELS = ["tiny_tdt", "tiny_tdt_ms2", "tiny_tdt_ms3", "tiny_tdt_ctc"]


def _clips(name):
    ref = json.loads((DATA / "nemo" / f"{name}.json").read_text())
    return [DATA / "audio" / c for c in ref["clips"]], ref


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("decoding", ["greedy_batch", "greedy"])
def test_gpu_fp32_equals_the_cpu_path_and_nemo(name, decoding):
    paths, ref = _clips(name)
    cpu = model.load(DATA / "nemo" / f"{name}.nemo").transcribe(paths, batch_size=8, decoding=decoding)
    dev = model.load(DATA / "nemo" / f"{name}.nemo", device=DEVICE).transcribe(paths, batch_size=8, decoding=decoding)
    key = "bs1" if decoding == "greedy_batch" else "greedy_bs1"
    refs = ref.get(key) or [{"y_sequence": c.token_ids} for c in cpu]  # tiny_tdt has no strategy-greedy fixture
    for c, d, r in zip(cpu, dev, refs):
        assert d.token_ids == c.token_ids == list(r["y_sequence"])
        assert d.frames == c.frames and d.durations == c.durations
        assert [(w.text, w.start, w.end) for w in d.words] == [(w.text, w.start, w.end) for w in c.words]
        assert np.allclose(d.token_confidence, c.token_confidence, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_fixed_shape_decoder_equals_the_compact_one_on_the_device(name):
    """The fixed-shape label search (the CUDA-graph-ready variant, default off CPU) and the compact one."""
    m = model.load(DATA / "nemo" / f"{name}.nemo", device=DEVICE)
    paths, _ = _clips(name)
    from model.transcribe import _pad, _to_array

    batch, lengths = _pad([_to_array(str(p), 16000) for p in paths])
    with torch.inference_mode():
        enc, elen = m.encode(batch.to(DEVICE), lengths.to(DEVICE))
        c = m.config
        fixed = greedy_tdt(enc, elen, m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step, compact=False)
        compact = greedy_tdt(enc, elen, m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step, compact=True)
    assert fixed == compact


def test_bf16_agrees_with_fp32():
    """bf16 weights (the GPU default) keep the transcripts: character error rate against fp32 under 2 %."""
    import jiwer

    paths, _ = _clips("tiny_tdt")
    fp32 = model.load(DATA / "nemo" / "tiny_tdt.nemo", device=DEVICE).transcribe(paths)
    bf16 = model.load(DATA / "nemo" / "tiny_tdt.nemo", device=DEVICE, dtype=torch.bfloat16).transcribe(paths)
    cer = jiwer.cer([t.text for t in fp32], [t.text for t in bf16])
    print(f"bf16 vs fp32 CER on the fixture clips: {cer:.4f}")
    assert cer < 0.02


def test_throughput_printout():
    """Not an assertion on speed: prints RTFx of the 0.6B v2 shape (random weights) at batch 1 / 16 / 64 / 128,
    and the decoding time of the fixed-shape stages eager and (on CUDA) replayed as CUDA graphs."""
    from jobs.bench import _realistic_emissions, synthetic_audio
    from model.config import preset

    torch.manual_seed(0)
    m = model.ParakeetTDT(preset("parakeet-tdt-0.6b-v2"), None).eval()
    _realistic_emissions(m)
    cuda = DEVICE.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    m = m.to(device=DEVICE, dtype=dtype)
    c = m.config
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed(fn):
        fn()  # warm-up (and graph capture)
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    for b in (1, 16, 64, 128) if cuda else (1,):
        audio = torch.stack([torch.from_numpy(synthetic_audio(10.0, seed=i)) for i in range(b)]).to(DEVICE)
        lengths = torch.full((b,), audio.shape[1], device=DEVICE)
        with torch.inference_mode():
            t_enc, (enc, elen) = timed(lambda: m.encode(audio, lengths))
            eager = LabelLooping(m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step)
            t_eager, h_eager = timed(lambda: eager(enc, elen))
            line = f"{DEVICE} {dtype}: batch {b:3d}: encoder {t_enc * 1e3:.1f} ms, decoding eager {t_eager * 1e3:.1f} ms"
            t_dec = t_eager
            if cuda:
                graphs = LabelLooping(m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step, cuda_graphs=True)
                t_graph, h_graph = timed(lambda: graphs(enc, elen))
                assert h_graph == h_eager
                line += f", CUDA graphs {t_graph * 1e3:.1f} ms ({t_eager / t_graph:.1f}x)"
                t_dec = t_graph
        print(f"{line}; RTFx {b * 10.0 / (t_enc + t_dec):.0f}")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rule", ["greedy_batch", "greedy"])
def test_cuda_graph_decoder_equals_the_cpu_decoder(name, rule):
    """The stages captured as CUDA graphs and replayed (the model's CUDA path) against the compact CPU decoder,
    with and without confidence scores, one decoder reused over batches of other sizes and lengths."""
    if not DEVICE.startswith("cuda"):
        pytest.skip("CUDA graphs need a CUDA device")
    from model.confidence import ConfidenceConfig
    from model.transcribe import _pad, _to_array

    paths, _ = _clips(name)
    cpu = model.load(DATA / "nemo" / f"{name}.nemo")
    dev = model.load(DATA / "nemo" / f"{name}.nemo", device=DEVICE)
    c = cpu.config
    batch, lengths = _pad([_to_array(str(p), 16000) for p in paths])
    for confidence in (None, ConfidenceConfig(), ConfidenceConfig(exclude_blank=False, aggregation="mean")):
        graphs = LabelLooping(dev.predictor, dev.joint, c.blank_id, c.durations, c.max_symbols_per_step, rule, confidence,
                              cuda_graphs=True)
        for rows in (slice(None), slice(1, 3), slice(0, 1)):
            with torch.inference_mode():
                enc, elen = cpu.encode(batch[rows], lengths[rows])
                want = greedy_tdt(enc, elen, cpu.predictor, cpu.joint, c.blank_id, c.durations, c.max_symbols_per_step,
                                  compact=True, rule=rule, confidence=confidence)
                got = graphs(enc.to(DEVICE), elen.to(DEVICE))
            assert graphs.cuda_graphs and set(graphs.graphs) == {"start", "before_inner", "inner", "after_inner"}
            for g, w in zip(got, want):
                assert (g.token_ids, g.frames, g.durations) == (w.token_ids, w.frames, w.durations)
                assert np.allclose(g.token_confidence, w.token_confidence, atol=1e-4)
    dev.transcribe(paths, batch_size=8)
    assert all(d.cuda_graphs and d.graphs for d in dev._label_looping.values())  # transcribe on CUDA replays graphs
