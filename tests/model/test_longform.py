import numpy as np
import pytest

from model.records import Segment, Token, Transcript, Word
from model.longform import split_points, stitch

FRAME_SAMPLES = 1280  # 160 hop * 8 subsampling
RATE = 16000


def test_short_input_is_one_chunk():
    assert split_points(np.zeros(1000, np.float32), 10.0, RATE, FRAME_SAMPLES) == [(0, 1000)]


def test_cuts_fall_on_frame_boundaries_in_the_quietest_spot():
    rng = np.random.default_rng(0)
    wave = rng.normal(0, 0.3, 16000 * 25).astype(np.float32)
    quiet = 9 * 16000 // FRAME_SAMPLES * FRAME_SAMPLES  # a pause 9 s in
    wave[quiet : quiet + 2 * FRAME_SAMPLES] = 0.0
    chunks = split_points(wave, 10.0, RATE, FRAME_SAMPLES)
    assert chunks[0] == (0, quiet)
    assert all(s % FRAME_SAMPLES == 0 for s, _ in chunks)
    assert [e for _, e in chunks[:-1]] == [s for s, _ in chunks[1:]] and chunks[-1][1] == len(wave)
    assert all(e - s <= 10 * 16000 for s, e in chunks)
    with pytest.raises(ValueError, match="chunk_seconds"):
        split_points(wave, 0.01, RATE, FRAME_SAMPLES)


def test_stitch_shifts_times_and_merges_a_sentence_cut_by_a_boundary():
    a = Transcript("hello there", (Token(1, "▁hello", 0.0, 0.4), Token(2, "▁there", 0.5, 0.9)),
                   (Word("hello", 0.0, 0.4), Word("there", 0.5, 0.9)), (Segment("hello there", 0.0, 0.9),), 1.0, (0, 6), (5, 5))
    b = Transcript("friend. bye", (Token(3, "▁friend.", 0.1, 0.5), Token(4, "▁bye", 0.6, 0.8)),
                   (Word("friend.", 0.1, 0.5), Word("bye", 0.6, 0.8)),
                   (Segment("friend.", 0.1, 0.5), Segment("bye", 0.6, 0.8)), 1.0, (1, 7), (5, 3))
    t = stitch([a, b], [0, 13 * FRAME_SAMPLES], 2.04, RATE, FRAME_SAMPLES)
    assert t.text == "hello there friend. bye"
    assert [x.start for x in t.tokens] == pytest.approx([0.0, 0.5, 1.14, 1.64])
    assert [s.text for s in t.segments] == ["hello there friend.", "bye"]
    assert t.segments[0].start == 0.0 and t.segments[0].end == pytest.approx(1.54)
    assert t.frames == (0, 6, 14, 20) and t.duration == 2.04
