"""Tokenizers: round trips, unknown input, saved form."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    UnknownCharactersError,
    WordTokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

TEXT = "the cat sat on the mat. the dog sat on the log!\nthe cat ran, and the dog didn't.\n" * 20


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TEXT + "héllo wörld, naïve café 日本語 🙂", vocab_size=300)


def test_char_round_trip():
    tok = CharTokenizer.train(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.vocab_size == len(set(TEXT))


def test_char_unknown_characters_are_listed():
    tok = CharTokenizer.train("abc ")
    with pytest.raises(UnknownCharactersError, match=r"4 character\(s\).*'x'.*'z'") as err:
        tok.encode("a zebra x")
    assert err.value.unknown == ["e", "r", "x", "z"]


def test_word_tokenizer_splits_lowercases_and_joins_readably():
    tok = WordTokenizer.train(TEXT)
    assert WordTokenizer.split("The Cat, sat.") == ["the", "cat", ",", "sat", "."]
    text = "the cat sat on the mat. the dog didn't!\nthe cat ran, and the dog sat."
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("The CAT sat.")) == "the cat sat."


def test_word_unknown_words_become_unk():
    tok = WordTokenizer.train(TEXT)
    ids = tok.encode("the zebra sat")
    assert ids[1] == tok.unk_id and tok.decode(ids) == "the <unk> sat"
    assert tok.unknown_words("the zebra and the yak") == ["yak", "zebra"]


def test_word_vocabulary_limit_keeps_most_frequent():
    tok = WordTokenizer.train(TEXT, max_words=4)
    assert tok.vocab_size == 4 and "the" in tok.index


def test_bpe_learns_merges_and_compresses(bpe):
    assert bpe.vocab_size == 300
    assert len(bpe.encode(TEXT)) < len(TEXT.encode()) / 2
    assert bpe.decode(bpe.encode(TEXT)) == TEXT


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(sorted(set(TEXT)))))
def test_char_round_trips_text_over_its_alphabet(text):
    tok = CharTokenizer.train(TEXT)
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_dict_round_trip(kind):
    tok = train_tokenizer(kind, TEXT, vocab_size=280)
    again = tokenizer_from_dict(tok.to_dict())
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    sample = "the cat sat on the mat."
    assert again.encode(sample) == tok.encode(sample)
    assert again.decode(tok.encode(sample)) == tok.decode(tok.encode(sample))


@pytest.mark.parametrize("data", [None, {}, {"kind": "sentencepiece"}, {"kind": "bpe"},
                                  {"kind": "bpe", "merges": [[300, 1]]}, {"kind": "char", "chars": ""}])
def test_malformed_saved_tokenizer_is_refused(data):
    with pytest.raises(ValueError):
        tokenizer_from_dict(data)


def test_decode_rejects_ids_outside_vocabulary():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 3\)"):
        tok.decode([0, 7])


def test_unknown_tokenizer_kind():
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):
        train_tokenizer("wordpiece", TEXT)


def test_a_bpe_vocabulary_numbered_its_own_way_survives_a_checkpoint():
    """GPT-2-style files may number a merged token before the tokens it is made of."""
    tokens = [bytes([i]) for i in range(256)]
    tokens.insert(0, b"ab")  # id 0 is the merge of "a" (now 98) and "b" (now 99)
    tok = BPETokenizer([(98, 99)], "gpt2", tokens)
    assert tok.encode("abc") == [0, 100]
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode("abc") == [0, 100] and again.decode([0, 100]) == "abc"
