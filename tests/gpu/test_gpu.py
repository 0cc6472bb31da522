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
    """Not an assertion on speed: prints RTFx of the 0.6B v2 shape (random weights) at batch 1 / 16 / 64."""
    from jobs.bench import _realistic_emissions, synthetic_audio
    from model.config import preset

    torch.manual_seed(0)
    m = model.ParakeetTDT(preset("parakeet-tdt-0.6b-v2"), None).eval()
    _realistic_emissions(m)
    dtype = torch.bfloat16 if DEVICE.startswith("cuda") else torch.float32
    m = m.to(device=DEVICE, dtype=dtype)
    c = m.config
    sizes = (1, 16, 64) if DEVICE.startswith("cuda") else (1,)
    for b in sizes:
        audio = torch.stack([torch.from_numpy(synthetic_audio(10.0, seed=i)) for i in range(b)]).to(DEVICE)
        lengths = torch.full((b,), audio.shape[1], device=DEVICE)
        with torch.inference_mode():
            for repeat in range(2):
                if DEVICE.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                enc, elen = m.encode(audio, lengths)
                greedy_tdt(enc, elen, m.predictor, m.joint, c.blank_id, c.durations, c.max_symbols_per_step)
                if DEVICE.startswith("cuda"):
                    torch.cuda.synchronize()
                wall = time.perf_counter() - t0
        print(f"{DEVICE} {dtype}: batch {b:3d}: RTFx {b * 10.0 / wall:.0f}")
