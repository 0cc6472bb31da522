import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from model.audio import SAMPLE_RATE, _mono, decode_audio
from pipeline.decode import decode_batch, waveforms
from tests.pipeline.conftest import AUDIO
from tests.pipeline.corpus import make_bad_corpus


def test_good_files_decode_to_16k_mono_with_their_original_rate():
    uris = [str(AUDIO / "stereo44k.wav"), str(AUDIO / "flacclip.flac")]
    out = decode_batch({"audio_uri": np.array(uris, dtype=object)}).to_pydict()
    info = sf.info(uris[0])
    assert out["sample_rate"] == [44100, 16000]
    assert out["error"] == [None, None]
    assert abs(out["duration_s"][0] - info.duration) < 1e-3
    assert out["num_samples"][0] == len(out["waveform"][0]) == round(info.duration * SAMPLE_RATE)


def test_waveforms_are_zero_copy_views_equal_to_decoding_each_file(tmp_path):
    """One float32 buffer per decode batch; the model stage reads it in place, also after Ray slices
    blocks and concatenates them into a window."""
    uris = [str(AUDIO / n) for n in ("stereo44k.wav", "flacclip.flac", "fox.wav")] + [str(tmp_path / "missing.wav")]
    table = decode_batch({"audio_uri": np.array(uris, dtype=object)})
    assert table.schema.field("waveform").type == pa.large_list(pa.float32())
    window = pa.concat_tables([table.slice(0, 1), table.slice(1, 3), table.slice(1, 2)])  # as Ray bundles blocks
    waves = waveforms(window)
    expected = [decode_audio(u)[0] for u in uris[:3]]
    for got, want in zip(waves, [expected[0], expected[1], expected[2], np.zeros(0, np.float32), expected[1]]):
        assert got.dtype == np.float32 and np.array_equal(got, want)
    values = window.column("waveform").chunks[1].values.to_numpy(zero_copy_only=True)
    assert np.shares_memory(waves[1], values) and not waves[1].flags.writeable


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 7, 8, 12])
def test_downmix_is_bit_equal_to_numpys_channel_mean(channels):
    block = np.random.default_rng(channels).standard_normal((10007, channels)).astype(np.float32)
    assert np.array_equal(_mono(block), block.mean(axis=1, dtype=np.float32))


def test_every_kind_of_broken_file_becomes_an_error_row(tmp_path):
    expected = make_bad_corpus(tmp_path)
    names = sorted(expected) + ["missing.wav"]
    out = decode_batch({"audio_uri": np.array([str(tmp_path / n) for n in names], dtype=object)}).to_pydict()
    for name, err, kind, n in zip(names, out["error"], out["error_kind"], out["num_samples"]):
        assert err is not None and n == 0, name
        sub, want = expected.get(name, ("file not found", "read"))
        assert sub in err and kind == want, (name, err, kind)
    assert len({k for _, k in expected.values()} | {"read"}) >= 6 and len(names) >= 14  # "read": missing.wav
