"""Timestamp rules on hand-made hypotheses (NeMo parity is in test_nemo_parity.py)."""
import pytest

from model.decoding import Hypothesis
from model.timestamps import build_transcript, clean_text, supported_punctuation
from tests.model.helpers import tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def ids(tok, text):
    return tok.encode(text)


def test_punctuation_set_is_nemo_rule():
    pieces = ["<unk>", "▁the", "▁,", ",", "?", "'s", "▁", "a.b", "[x]"]
    assert supported_punctuation(pieces) == {",", "?", "'", "."}


def test_clean_text_drops_one_space_before_punct():
    assert clean_text("hello , world  ?", frozenset(",?")) == "hello, world ?"


def test_words_segments_and_punctuation_snapping(tok):
    text = "Hello world, this is a test. How are you?"
    tids = ids(tok, text)
    frames = tuple(range(0, 3 * len(tids), 3))
    durs = tuple([2] * len(tids))
    # make the '.' token arrive late, after a "silence": it must snap to the previous end
    dot = tids.index(tok.piece_to_id("."))
    frames = frames[:dot] + (frames[dot] + 40,) + tuple(f + 40 for f in frames[dot + 1 :])
    tr = build_transcript(Hypothesis(tuple(tids), frames, durs), tok, 0.01, 8, 10.0)
    assert tr.text == text
    assert [w.text for w in tr.words] == text.split()
    assert [s.text for s in tr.segments] == ["Hello world, this is a test.", "How are you?"]
    t_dot = tr.tokens[dot]
    assert t_dot.start == t_dot.end == tr.tokens[dot - 1].end
    assert tr.words[5].end == t_dot.end  # "test." ends where the snapped '.' ends
    assert tr.segments[1].start == pytest.approx(frames[dot + 1] * 0.08)
    for t, f, d in zip(tr.tokens, frames, durs):
        if t.text not in ",.?":
            assert (t.start, t.end) == (f * 0.01 * 8, (f + d) * 0.01 * 8)


def test_empty_hypothesis(tok):
    tr = build_transcript(Hypothesis((), (), ()), tok, 0.01, 8, 1.5)
    assert tr.text == "" and tr.tokens == () and tr.words == () and tr.segments == () and tr.duration == 1.5
