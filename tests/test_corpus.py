"""The embedded corpus is ours, deterministic, and the size and world the issue asks for."""

from minigpt.corpus import generate_corpus, load_corpus, with_repeats
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


def test_repeats_follow_every_line_with_a_new_list_said_twice():
    text = load_corpus()
    lines, vocabulary = text.splitlines(), set(WordTokenizer.train(text).words)
    repeated = with_repeats(text, passes=2).splitlines()
    stories = lines * 2
    assert len(repeated) == len(stories)
    lists = []
    for line, story in zip(repeated, stories):
        assert line.startswith(story + " ")
        first, second = line[len(story) + 1:].split(" . ")
        assert second == first + " ." and 4 <= len(first.split()) <= 16
        assert set(first.split()) <= vocabulary
        lists.append(first)
    assert len(set(lists)) > 0.99 * len(lists)  # new lists on every pass: none to learn by heart
    assert with_repeats(text, passes=1) == with_repeats(text, passes=1)  # the same seed, the same
