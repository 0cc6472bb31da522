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


def _sec(f):
    return f * 0.01 * 8  # NeMo's order: offset * window_stride * subsampling


def test_late_punctuation_chain_snaps_and_attaches(tok):
    """'fox jumps?! Nobody' with '?' and '!' emitted long after 's': both snap to the end of 's'
    (the second to the first's refined end), join the word, and close the first segment."""
    tids = tok.encode("fox jumps?! Nobody")
    pieces = [tok.id_to_piece(i) for i in tids]
    q = pieces.index("?")
    assert pieces[q + 1] == "!" and pieces[q - 1] == "s"
    frames = [2 * i for i in range(len(tids))]
    frames[q], frames[q + 1] = 40, 50
    tr = build_transcript(Hypothesis(tuple(tids), tuple(frames), (1,) * len(tids)), tok, 0.01, 8, 3.0)
    s_end = frames[q - 1] + 1
    assert [(t.start, t.end) for t in tr.tokens[q : q + 2]] == [(_sec(s_end), _sec(s_end))] * 2
    assert [(w.text, w.start, w.end) for w in tr.words] == [
        ("fox", _sec(0), _sec(frames[2] + 1)),
        ("jumps?!", _sec(frames[3]), _sec(s_end)),
        ("Nobody", _sec(frames[q + 2]), _sec(frames[-1] + 1)),
    ]
    assert [(s.text, s.start, s.end) for s in tr.segments] == [
        ("fox jumps?!", _sec(0), _sec(s_end)),
        ("Nobody", _sec(frames[q + 2]), _sec(frames[-1] + 1)),
    ]
    assert tr.text == "fox jumps?! Nobody"


def test_leading_punctuation_is_not_snapped(tok):
    """NeMo snaps punctuation only after a previous token (i > 0): a leading '?' keeps its own frames,
    and '?!' before the first real word forms a word (and a segment) of its own."""
    tids = [tok.piece_to_id(p) for p in ["?", "!", "▁", "H", "el", "l", "o"]]
    frames, durs = (3, 9, 10, 12, 14, 16, 18), (2, 1, 1, 1, 1, 1, 1)
    tr = build_transcript(Hypothesis(tuple(tids), frames, durs), tok, 0.01, 8, 3.0)
    assert [(t.text, t.start, t.end) for t in tr.tokens[:2]] == [("?", _sec(3), _sec(5)), ("!", _sec(5), _sec(5))]
    assert [(w.text, w.start, w.end) for w in tr.words] == [("?!", _sec(3), _sec(5)), ("Hello", _sec(10), _sec(19))]
    assert [s.text for s in tr.segments] == ["?!", "Hello"]


def test_no_punctuation_in_vocabulary_means_no_snapping(tok):
    tids = tok.encode("test.")
    frames = tuple(range(0, 4 * len(tids), 4))
    tr = build_transcript(Hypothesis(tuple(tids), frames, (1,) * len(tids)), tok, 0.01, 8, 3.0, punctuation=frozenset())
    assert [(t.start, t.end) for t in tr.tokens] == [(_sec(f), _sec(f + 1)) for f in frames]


def test_single_token_texts_are_remembered_and_equal_the_decoder(tok):
    for i in range(tok.vocab_size):
        assert tok.decode([i]) == tok._decode([i]) == tok.token_text(i)
    assert tok.decode([3]) == tok.decode([3])  # from the memory now
    many = ids(tok, "Hello world, this is a test.")
    assert tok.decode(many) == tok._decode(many)
    assert tok.decode([]) == ""
