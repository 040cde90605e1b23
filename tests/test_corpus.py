"""The embedded corpus is ours, deterministic, and the size and world the issue asks for."""

from minigpt.corpus import generate_corpus, load_corpus
from minigpt.tokenizer import WordTokenizer


def test_shipped_corpus_is_what_the_generator_writes():
    assert load_corpus() == generate_corpus()


def test_corpus_size_and_vocabulary():
    text = load_corpus()
    assert 100_000 <= len(text.encode()) <= 500_000
    assert 150 <= WordTokenizer.train(text).vocab_size <= 500


def test_prompt_from_the_deck_is_meaningful():
    text = load_corpus()
    assert text.startswith("the cat sat on the mat.")
    assert text.count("sat on the") > 100


def test_other_seeds_give_other_text():
    assert generate_corpus(seed=1, target_chars=2000) != generate_corpus(seed=2, target_chars=2000)
