import numpy as np
import soundfile as sf

from model.audio import SAMPLE_RATE
from pipeline.decode import decode_batch
from tests.pipeline.conftest import AUDIO
from tests.pipeline.corpus import make_bad_corpus


def test_good_files_decode_to_16k_mono_with_their_original_rate():
    uris = [str(AUDIO / "stereo44k.wav"), str(AUDIO / "flacclip.flac")]
    out = decode_batch({"audio_uri": np.array(uris, dtype=object)})
    info = sf.info(uris[0])
    assert list(out["sample_rate"]) == [44100, 16000]
    assert list(out["error"]) == [None, None]
    assert abs(out["duration_s"][0] - info.duration) < 1e-3
    assert out["waveform"][0].dtype == np.float32 and out["waveform"][0].ndim == 1
    assert out["num_samples"][0] == len(out["waveform"][0]) == round(info.duration * SAMPLE_RATE)


def test_every_kind_of_broken_file_becomes_an_error_row(tmp_path):
    expected = make_bad_corpus(tmp_path)
    names = sorted(expected) + ["missing.wav"]
    out = decode_batch({"audio_uri": np.array([str(tmp_path / n) for n in names], dtype=object)})
    for name, err, kind, n in zip(names, out["error"], out["error_kind"], out["num_samples"]):
        assert err is not None and n == 0, name
        sub, want = expected.get(name, ("file not found", "read"))
        assert sub in err and kind == want, (name, err, kind)
    assert len({k for _, k in expected.values()} | {"read"}) >= 6 and len(names) >= 14  # "read": missing.wav
