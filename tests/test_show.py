"""minigpt.show: the app's views as functions for a notebook. Each returns a chart that says what
the app's view says, draws offline, and refuses what it cannot show with a clear error."""

import json

import pytest
import torch
from conftest import randomise_short_convs, run_config

pytest.importorskip("altair", reason="the views need the app or notebook extra")
from minigpt import GPT, ModelConfig, show  # noqa: E402
from minigpt.charts import MASKED  # noqa: E402
from minigpt.corpus import load_corpus  # noqa: E402
from minigpt.hooks import capture  # noqa: E402
from minigpt.interventions import logit_attribution  # noqa: E402
from minigpt.tokenizer import CharTokenizer, WordTokenizer  # noqa: E402
from minigpt.training import train  # noqa: E402

TEXT = load_corpus()[:20_000]


@pytest.fixture(scope="module")
def word_model():
    torch.manual_seed(0)
    tokenizer = WordTokenizer.train(TEXT)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=128, embed_dim=32,
                            num_heads=2, num_layers=2)).eval()
    return model, tokenizer


def rows(chart) -> list[dict]:
    """Every data row of a chart (or of a composition of charts)."""
    return [row for data in chart.to_dict()["datasets"].values() for row in data]


def test_every_prompt_view_draws_from_one_inspection(word_model):
    model, tok = word_model
    seen = show.inspect(model, tok, "the cat sat on the mat")
    assert show.inspect(model, tok, seen) is seen  # passing it on costs no second forward pass
    for view in (show.model_view, show.attention, show.logit_lens, show.layer_change,
                 show.sublayers, show.layer_norms, show.temperature):
        spec = view(model, tok, seen).to_dict()
        assert spec["datasets"], view.__name__
    lens = rows(show.logit_lens(model, tok, seen))
    assert {r["layer"] for r in lens} >= {"layer 0 (embeddings: no prediction yet)", "layer 2"}
    change = rows(show.layer_change(model, tok, seen))
    assert len(change) == 2 * 6 and all(r["relative change"] > 0 for r in change)


def test_attention_shows_every_head_of_the_layer_and_greys_the_mask(word_model):
    model, tok = word_model
    spec = show.attention(model, tok, "the cat sat on the mat", layer=2).to_dict()
    titles = [c["title"] for row in spec["vconcat"][1:] for c in row["hconcat"]]
    assert titles == ["layer 2, head 0", "layer 2, head 1"]
    cells = [r for d in spec["datasets"].values() for r in d if "query" in r]
    hidden = [r for r in cells if r["shown"] == MASKED]
    assert len(hidden) == 2 * 15  # 6 tokens: 15 cells above the diagonal per head
    with pytest.raises(ValueError, match="layer must be 1 to 2"):
        show.attention(model, tok, "the cat", layer=3)


def test_a_long_prompt_stays_legible(word_model):
    """64 word tokens and 128 characters: heads stay within about 520 pixels, with labels apart."""
    model, tok = word_model
    words = " ".join(TEXT.split()[:64])
    char_tok = CharTokenizer.train(TEXT)
    char_model = GPT(ModelConfig(vocab_size=char_tok.vocab_size, context_length=128, embed_dim=32,
                                 num_heads=2, num_layers=1)).eval()
    for m, t, prompt in ((model, tok, words), (char_model, char_tok, TEXT[:128])):
        spec = show.attention(m, t, prompt).to_dict()
        heads = [c for row in spec["vconcat"][1:] for c in row["hconcat"]]
        assert all(h["width"] <= 520 and h["height"] <= 520 for h in heads)
        assert len(heads[0]["encoding"]["x"]["axis"]["values"]) <= 40
        assert show.logit_lens(m, t, prompt).to_dict()["width"] <= show.WIDTH


def test_the_head_view_shades_each_token_and_marks_what_the_mask_hides(word_model):
    model, tok = word_model
    html = show.head_view(model, tok, "the cat sat on", layer=1, head=1, token=1)._repr_html_()
    assert html.count("<span") == 4 and html.count(f"{MASKED}, hidden") == 2
    assert "2px solid #c0392b" in html  # the token looking
    weight = float(show.inspect(model, tok, "the cat sat on").attentions[0][1][1][0])
    assert f"0:&#x27;the&#x27;: {weight:.3f}" in html


def test_positions_and_the_embedding(word_model):
    model, tok = word_model
    table = rows(show.positions(model))
    assert len(table) == 64 * 32  # the first 64 positions, every dimension
    assert rows(show.position_fingerprints(model))[0]["similarity"] == pytest.approx(1.0)
    assert [r["value"] for r in table if r["position"] == 0][:2] == pytest.approx([0.0, 1.0])
    near = rows(show.embedding(model, tok, "cat"))
    assert len(near) == 12 and "'cat'" not in [r["token"] for r in near]
    with pytest.raises(ValueError, match="no learned table"):
        show.positions(GPT(ModelConfig(vocab_size=9, pos_encoding="rope")), "learned")
    with pytest.raises(ValueError, match="pass one token"):
        show.embedding(model, tok, "the cat")


def test_sampling_views(word_model):
    model, tok = word_model
    temps = rows(show.temperature(model, tok, "the cat", temperature=0.7, top_k=3))
    assert {r["T"] for r in temps} == {"0.5", "0.7 (chosen)", "1", "2"}
    assert sum(r["probability"] > 0 for r in temps if r["T"] == "2") == 3  # top-k 3 cuts the rest
    probs = rows(show.probabilities(model, tok, "the cat", " sat on the mat"))
    assert [r["token"] for r in probs] == ["sat", "on", "the", "mat"]
    with pytest.raises(ValueError, match="at least one token"):
        show.probabilities(model, tok, "", "the cat")


def test_hypothesis_views(word_model):
    model, tok = word_model
    bars = rows(show.knockout(model, tok, "the cat sat on", heads=[(1, 0)]))
    assert {r["run"] for r in bars} == {"as trained", "heads knocked out"}
    spec = show.patching(model, tok, "the cat sat on the mat", "the dog sat on the mat").to_dict()
    assert len(spec["vconcat"]) == 3  # residual stream, heads, feed-forward blocks
    assert show.attribution(model, tok, "the cat sat on").to_dict()["datasets"]
    scores = rows(show.head_scores(model, tok, TEXT[:5000], length=32))
    assert {r["kind"] for r in scores} >= {"induction", "previous-token"}


def test_every_view_draws_a_model_with_the_speedrun_options():
    """The options of configs/shakespeare_char_*.toml change attention, the feed-forward, the
    sublayers' inputs (short_conv) and the head; the views read them through the same hook
    points."""
    torch.manual_seed(0)
    tok = CharTokenizer.train(TEXT)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=64, embed_dim=32,
                            num_heads=2, num_layers=2, pos_encoding="rope", qk_norm=True,
                            activation="relu2", logit_softcap=15.0, zero_init_proj=True,
                            tie_weights=False, short_conv=4)).eval()
    randomise_short_convs(model)
    with torch.no_grad():  # as after training: projections that write, logits the cap bends
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.2)
        model.head.weight.mul_(60)
    seen = show.inspect(model, tok, "the cat sat")
    for view in (show.model_view, show.attention, show.logit_lens, show.layer_change,
                 show.sublayers, show.layer_norms, show.temperature):
        assert view(model, tok, seen).to_dict()["datasets"], view.__name__
    assert all(0 <= r["probability"] <= 1 for r in rows(show.temperature(model, tok, seen)))
    assert rows(show.neurons(model, tok, TEXT[:2000], layer=1, neuron=3))
    assert rows(show.knockout(model, tok, "the cat sat", heads=[(1, 0)]))
    assert show.patching(model, tok, "the cat sat", "the dog sat").to_dict()["vconcat"]
    ids = tok.encode("the cat sat")
    with torch.no_grad(), capture(model) as seen:
        capped = model(torch.tensor([ids]))[0, -1]
        uncapped = model.head(model.final_norm(seen["blocks.1.hook_resid_out"][0, -1]))
    token = int(uncapped.argmax())
    assert uncapped[token] > 10 and capped[token] < uncapped[token] - 1  # the cap bends it
    parts = logit_attribution(model, ids, token)
    assert sum(parts.values()) == pytest.approx(float(uncapped[token]), rel=1e-4)
    assert rows(show.attribution(model, tok, "the cat sat"))


def test_neurons_and_watch_it_learn(tmp_path):
    result = train(run_config(tmp_path, **{"data.tokenizer": "word", "train.probe": True}),
                   progress=False)
    model, tok = result.model, WordTokenizer.train(load_corpus())
    places = rows(show.neurons(model, tok, TEXT[:3000], layer=1, neuron=3, count=4))
    assert len({r["place"] for r in places}) == 4
    spec = show.learning(result.run_dir, tok, step=4).to_dict()
    assert "attention at step 4" in json.dumps(spec)
    with pytest.raises(ValueError, match="no snapshot at step 5"):
        show.learning(result.run_dir, tok, step=5)
    bare = train(run_config(tmp_path / "bare"), progress=False)
    with pytest.raises(ValueError, match="kept no snapshots"):
        show.learning(bare.run_dir, tok)


def test_a_prompt_past_128_tokens_is_pooled_so_a_head_stays_small(word_model):
    model, tok = word_model
    ids = torch.randint(0, tok.vocab_size, (300,)).tolist()
    big = GPT(ModelConfig(vocab_size=tok.vocab_size, context_length=300, embed_dim=32,
                          num_heads=2, num_layers=1)).eval()
    spec = show.attention(big, tok, ids).to_dict()
    head = spec["vconcat"][1]["hconcat"][0]
    assert head["width"] <= 520
    assert len({r["query"] for d in spec["datasets"].values() for r in d if "query" in r}) <= 128


@pytest.mark.parametrize("call,message", [
    (lambda m, t: show.head_view(m, t, "the cat", head=5), r"head must be a whole number from 0 to 1"),
    (lambda m, t: show.head_view(m, t, "the cat", token=9), r"token must be a whole number"),
    (lambda m, t: show.attention(m, t, "the cat", layer="1"), r"layer must be 1 to 2"),
    (lambda m, t: show.temperature(m, t, "the cat", temperature=-1), "temperature must be 0"),
    (lambda m, t: show.embedding(m, t, 10**6), r"token must be a whole number from 0"),
    (lambda m, t: show.embedding(m, t, "cat", count=0), r"count must be a whole number from 1"),
    (lambda m, t: show.patching(m, t, "the cat sat", "the dog sat on"), "same number of tokens"),
    (lambda m, t: show.patching(m, t, "the cat sat", "the cat sat"), "are the same tokens"),
    (lambda m, t: show.head_scores(m, t, ""), "a text of at least 9 tokens"),
    (lambda m, t: show.head_scores(m, t, TEXT[:2000], length=0), "at least 4 tokens long"),
    (lambda m, t: show.learning("/no/such/run", t), "run directory /no/such/run not found"),
    (lambda m, t: show.inspect(m, t, [1, 2, 10**6]), "token ids must be whole numbers"),
])
def test_bad_arguments_are_one_line_errors(word_model, call, message):
    model, tok = word_model
    with pytest.raises(ValueError, match=message):
        call(model, tok)


def test_ids_work_wherever_text_does(word_model):
    model, tok = word_model
    ids = tok.encode("the cat sat on the mat")
    assert show.inspect(model, tok, torch.tensor(ids)).tokens == show.inspect(model, tok, ids).tokens
    assert rows(show.probabilities(model, tok, ids, " and the dog"))[0]["token"] == "and"
    assert rows(show.knockout(model, tok, ids, heads=(1, 0)))  # one (layer, head) pair
