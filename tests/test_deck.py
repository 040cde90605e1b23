"""The workshop deck's live demo, with the import changed to minigpt, and its concepts."""

import re

from minigpt import MiniTransformer, SimpleVocab
from minigpt.config import DataConfig
from minigpt.data import prepare_data


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
    # per block: qkv 64*192+192, attention proj 64*64+64, fc 64*256+256, ffn proj 256*64+64,
    # two norms 2*(64+64): 49,984; two blocks; no final norm after post-norm blocks
    assert model.num_params(non_embedding=True) == 99_968
    assert model.num_params() == 99_968 + vocab.vocab_size * 64  # the tied head adds nothing
    assert model.config.pos_encoding == "sinusoidal" and model.config.norm_placement == "post"


def test_simple_vocab_is_the_default_models_vocabulary_and_marks_unknown_words(tmp_path):
    vocab = SimpleVocab()
    default_run = prepare_data(DataConfig(cache_dir=str(tmp_path)), context_length=64).tokenizer
    assert vocab.words == default_run.words  # the deck's vocab is what train.py trains with
    ids = vocab.encode("The cat sat on the mat.")
    assert vocab.unk_id not in ids and vocab.decode(ids) == "the cat sat on the mat."
    ids = vocab.encode("the cat sat on the zeppelin")
    assert ids[-1] == vocab.unk_id and ids[:-1].count(vocab.unk_id) == 0
    assert vocab.decode(ids) == "the cat sat on the <unk>"
