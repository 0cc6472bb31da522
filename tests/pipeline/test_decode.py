import io
import struct

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import soxr

from model.audio import BLOCK_FRAMES, HEAD_BYTES, SAMPLE_RATE, AudioDecodeError, _mono, _wav_layout, decode_audio
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


def _riff(fmt: bytes, data: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"") + after
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _fmt(channels: int, rate: int, extensible: bool = False, valid_bits: int = 16) -> bytes:
    tag = 0xFFFE if extensible else 1
    base = struct.pack("<HHIIHH", tag, channels, rate, rate * 2 * channels, 2 * channels, 16)
    if not extensible:
        return base
    pcm_guid = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return base + struct.pack("<HHI", 22, valid_bits, 0) + pcm_guid


def _pcm(frames: int, channels: int, seed: int) -> bytes:
    x = np.random.default_rng(seed).integers(-32768, 32768, (frames, channels), dtype=np.int16)
    x[:3] = [[-32768] * channels, [32767] * channels, [0] * channels]  # the extremes, exactly
    return x.astype("<i2").tobytes()


_odd_chunk = b"LIST" + struct.pack("<I", 5) + b"INFOx\0"  # odd size: padded to even, as RIFF says
WAV_LAYOUTS = {
    "mono": lambda: _riff(_fmt(1, 16000), _pcm(48000, 1, 1)),
    "stereo 44.1 kHz": lambda: _riff(_fmt(2, 44100), _pcm(44100, 2, 2)),
    "6 channels": lambda: _riff(_fmt(6, 16000), _pcm(5000, 6, 3)),
    "9 channels (numpy's pairwise mean)": lambda: _riff(_fmt(9, 16000), _pcm(3000, 9, 4)),
    "extensible PCM": lambda: _riff(_fmt(2, 16000, extensible=True), _pcm(7000, 2, 5)),
    "fmt with cbSize": lambda: _riff(_fmt(1, 16000) + b"\0\0", _pcm(4000, 1, 6)),
    "odd LIST before data": lambda: _riff(_fmt(1, 22050), _pcm(4001, 1, 7), before=_odd_chunk),
    "chunk after data": lambda: _riff(_fmt(1, 8000), _pcm(3001, 1, 8), after=_odd_chunk),
    "data not whole frames": lambda: _riff(_fmt(2, 16000), _pcm(3000, 2, 9) + b"\x01"),
    "longer than a read block": lambda: _riff(_fmt(2, 16000), _pcm(BLOCK_FRAMES + 777, 2, 10)),
    "300 channels (float downmix)": lambda: _riff(_fmt(300, 16000), _pcm(700, 300, 12)),
}


class _NoReadinto:
    """A file object with only read/seek/tell, as some fsspec implementations give."""

    def __init__(self, raw: bytes):
        self._f = io.BytesIO(raw)
        self.read, self.seek, self.tell = self._f.read, self._f.seek, self._f.tell


@pytest.mark.parametrize("layout", sorted(WAV_LAYOUTS))
def test_pcm16_wav_read_directly_equals_libsndfile(tmp_path, layout):
    """16-bit PCM WAVs skip libsndfile (6x faster on a 3 s clip) and must give its exact samples: x / 32768,
    then the channel mean; from a path, from bytes, and from a file object (fsspec's)."""
    raw = WAV_LAYOUTS[layout]()
    path = tmp_path / "x.wav"
    path.write_bytes(raw)
    found = _wav_layout(raw[:HEAD_BYTES])
    assert found is not None and found.pcm16  # the direct read is the path taken
    ref, rate = sf.read(path, dtype="float32", always_2d=True)
    want = soxr.resample(_mono(ref), rate, SAMPLE_RATE, quality="HQ") if rate != SAMPLE_RATE else _mono(ref)
    for source in (str(path), raw, io.BytesIO(raw), _NoReadinto(raw)):
        got, sr = decode_audio(source)
        assert sr == rate and got.dtype == np.float32 and np.array_equal(got, want), type(source)


@pytest.mark.parametrize("fmt", [
    _fmt(1, 16000, extensible=True, valid_bits=12),  # 12 valid bits in 16
    struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32),  # IEEE float
    struct.pack("<HHIIHH", 1, 1, 16000, 48000, 3, 24),  # 24-bit
])
def test_other_wavs_are_left_to_libsndfile(tmp_path, fmt):
    raw = _riff(fmt, bytes(3000 * struct.unpack_from("<H", fmt, 12)[0]))
    assert not _wav_layout(raw).pcm16
    path = tmp_path / "x.wav"
    path.write_bytes(raw)
    got, _ = decode_audio(str(path))
    assert np.array_equal(got, _mono(sf.read(path, dtype="float32", always_2d=True)[0]))


def test_a_pcm16_wav_shorter_than_its_header_is_truncated(tmp_path):
    raw = _riff(_fmt(1, 16000), _pcm(32000, 1, 11))
    path = tmp_path / "cut.wav"
    path.write_bytes(raw[: len(raw) // 2])  # the data chunk still declares 2 s
    with pytest.raises(AudioDecodeError) as e:
        decode_audio(str(path))
    assert e.value.kind == "truncated" and "header declares 2 s" in e.value.reason
