"""The interactive demo, driven headless with Streamlit's AppTest."""

from pathlib import Path

import pytest
from conftest import run_config

from minigpt.checkpoint import load
from minigpt.generation import generate_text
from minigpt.training import train

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("app")
    return train(run_config(tmp_path, **{"train.max_steps": 30, "train.lr": 3e-3}),
                 progress=False).run_dir


@pytest.fixture
def app(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGPT_RUNS", str(tmp_path / "no-runs"))
    return AppTest.from_file(APP, default_timeout=60)


def test_without_a_checkpoint_the_app_offers_to_train(app):
    app.run()
    assert not app.exception
    assert "No checkpoint yet" in app.info[0].value
    assert app.button(key="train").label.startswith("Train the default tiny model")


def test_generating_with_a_fixed_seed_shows_the_expected_text(app, run_dir):
    app.run()
    app.text_input(key="checkpoint").input(str(run_dir)).run()
    app.text_input(key="prompt").input("the cat sat on").run()
    app.number_input(key="seed").set_value(3).run()
    app.button(key="generate").click().run()
    assert not app.exception
    model, tokenizer = load(run_dir)
    expected = "".join(p.text for p in generate_text(model, tokenizer, "the cat sat on", 40,
                                                     0.8, None, 1.0, seed=3))
    assert app.code[0].value == "the cat sat on" + expected


def test_attention_layers_and_temperature_views_render(app, run_dir):
    app.run()
    app.text_input(key="checkpoint").input(str(run_dir)).run()
    assert not app.exception
    assert [tab.label for tab in app.tabs] == ["Attention", "Layer outputs", "Temperature"]
    app.selectbox(key="layer").select(1).run()
    assert not app.exception
    lens = app.dataframe[0].value
    assert list(lens.index) == ["layer 0", "layer 1", "layer 2"]


def test_a_bad_checkpoint_path_shows_an_error_not_a_traceback(app, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    app.run()
    for path in (str(tmp_path / "missing.pt"), str(tmp_path / "junk.pt")):
        app.text_input(key="checkpoint").input(path).run()
        assert not app.exception
        assert "Cannot load that checkpoint" in app.error[0].value
