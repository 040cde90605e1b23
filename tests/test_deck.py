"""The workshop deck's live demo, with the import changed to minigpt, and its concepts."""

import re

from minigpt import MiniTransformer, SimpleVocab, load_corpus


def test_deck_live_demo_runs_and_prints_words(capsys):
    vocab = SimpleVocab()
    model = MiniTransformer(
        vocab_size=vocab.vocab_size,
        embed_dim=64,
        num_heads=4,
        num_layers=2,
    )

    prompt = "the cat sat on"
    token_ids = vocab.encode(prompt)
    generated = model.generate(token_ids, max_new_tokens=5)
    print(vocab.decode(generated))

    printed = capsys.readouterr().out.strip()
    assert printed.startswith("the cat sat on")
    assert len(generated) == len(token_ids) + 5
    assert len(re.findall(r"[\w<>']+|[^\w\s]", printed)) == 9


def test_deck_model_size():
    vocab = SimpleVocab()
    model = MiniTransformer(vocab_size=vocab.vocab_size, embed_dim=64, num_heads=4, num_layers=2)
    assert 95_000 <= model.num_params(non_embedding=True) <= 105_000
    assert model.config.pos_encoding == "sinusoidal" and model.config.norm_placement == "post"


def test_simple_vocab_covers_the_embedded_corpus():
    vocab = SimpleVocab()
    assert 100 <= vocab.vocab_size <= 500
    ids = vocab.encode(load_corpus()[:5000])
    assert vocab.unk_id not in ids
