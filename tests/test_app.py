"""The interactive demo, driven headless with Streamlit's AppTest (and once as a real server)."""

import json
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import run_config

import minigpt.training
from minigpt.checkpoint import load
from minigpt.generation import generate_text
from minigpt.training import TrainResult, train

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
streamlit_config = pytest.importorskip("streamlit.config")
ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("app")
    return train(run_config(tmp_path, **{"train.max_steps": 30, "train.lr": 3e-3,
                                         "train.probe": True}), progress=False).run_dir


@pytest.fixture
def serve_as():
    """Set the address the app believes it is served on (what `--server.address` sets)."""
    previous = streamlit_config.get_option("server.address")
    yield lambda address: streamlit_config.set_option("server.address", address)
    streamlit_config.set_option("server.address", previous)


def make_app(monkeypatch, runs: Path) -> AppTest:
    import streamlit

    streamlit.cache_resource.clear()  # a fresh server: no model or training of an earlier test
    monkeypatch.setenv("MINIGPT_RUNS", str(runs))
    return AppTest.from_file(APP, default_timeout=60)


@pytest.fixture
def app(monkeypatch, tmp_path, serve_as):
    serve_as("127.0.0.1")
    return make_app(monkeypatch, tmp_path / "no-runs")


@pytest.fixture
def app_with_runs(monkeypatch, run_dir, serve_as):
    serve_as("127.0.0.1")
    return make_app(monkeypatch, run_dir.parent)


def test_the_app_serves_this_machine_only_by_default():
    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["address"] == "127.0.0.1"
    assert settings["browser"]["gatherUsageStats"] is False


def test_without_a_checkpoint_the_app_offers_to_train(app):
    app.run()
    assert not app.exception
    assert "No trained run" in app.info[0].value
    assert app.button(key="train").label.startswith("Train the default tiny model")


def test_the_sidebar_offers_the_runs_it_found_newest_first(monkeypatch, tmp_path, run_dir,
                                                           serve_as):
    runs = tmp_path / "runs"
    for name in ("older", "newer"):
        shutil.copytree(run_dir, runs / name)
        time.sleep(0.05)
        (runs / name / "best.pt").touch()
    (runs / "empty").mkdir()  # no checkpoint: not offered
    serve_as("0.0.0.0")
    app = make_app(monkeypatch, runs)
    app.run()
    assert not app.exception
    assert [Path(option).name for option in app.selectbox(key="run").options] == ["newer", "older"]
    assert not [t for t in app.text_input if t.key == "checkpoint"]  # shared: no free paths
    assert app.get("vega_lite_chart")  # the newest run is loaded and inspected


def test_generating_with_a_fixed_seed_shows_the_expected_text(app_with_runs, run_dir):
    app = app_with_runs
    app.run()
    app.text_input(key="prompt").input("the cat sat on").run()
    app.number_input(key="seed").set_value(3).run()
    app.button(key="generate").click().run()
    assert not app.exception
    model, tokenizer = load(run_dir)
    length = app.slider(key="max_new_tokens").value  # 16: the test model's context
    expected = "".join(p.text for p in generate_text(model, tokenizer, "the cat sat on", length,
                                                     0.8, None, 1.0, seed=3))
    assert app.code[0].value == "the cat sat on" + expected


def open_tab(app: AppTest, name: str) -> AppTest:
    """Click a tab: only the open one is drawn."""
    app.session_state["tab"] = name
    return app.run()


# The charts on each tab: the model view, a heatmap per head and the weights' legend; the logit
# lens, sublayer grid, norm bars and neuron view; the position table, its similarity and the token
# embedding's nearest tokens; temperature; the run's attention, logit lens, head scores and score
# curves; the knock-out bars, three patching grids and the attribution bars.
TAB_CHARTS = {"Attention": 1 + 2 + 1, "Layer outputs": 4, "Positions": 3, "Temperature": 1,
              "Watch it learn": 4, "Test a hypothesis": 5}


def test_each_tab_draws_its_views_and_only_the_open_one_is_drawn(app_with_runs):
    app = app_with_runs
    app.run()
    assert not app.exception
    assert [tab.label for tab in app.tabs] == list(TAB_CHARTS)
    assert app.selectbox(key="layer").options == ["1", "2"]  # layers numbered from 1
    app.selectbox(key="layer").select(2).run()
    specs = []
    for name, count in TAB_CHARTS.items():
        open_tab(app, name)
        assert not app.exception
        shown = [chart.proto.spec for chart in app.get("vega_lite_chart")]
        assert len(shown) == count, name
        assert not app.get("image")  # every picture in the app is a chart
        specs += shown
    open_tab(app, "Attention")
    assert app.selectbox(key="layer").value == 2  # a choice on a tab outlives a visit elsewhere
    assert sum('"top token"' in spec for spec in specs) == 2  # the lens, now and in training
    sublayers = next(spec for spec in specs if '"sublayer"' in spec)
    for row in ("layer 1 attention", "layer 1 FFN", "layer 2 attention", "layer 2 FFN"):
        assert row in sublayers
    norms = next(spec for spec in specs if "LayerNorm (in stream order)" in spec)
    assert all(f"layer {i}, norm {n}" in norms for i in (1, 2) for n in (1, 2))
    assert "final norm" in norms
    assert sum('"similarity"' in spec for spec in specs) == 2  # positions', tokens' embeddings
    captions = []
    for name in ("Layer outputs", "Positions"):
        captions += [caption.value for caption in open_tab(app, name).caption]
    assert any("layer 0 is the embeddings" in caption for caption in captions)
    notes = [caption for caption in captions if caption.startswith("What am I")]
    assert len(notes) >= 4  # beside the sublayer, norm, position and similarity views


def test_the_neuron_view_shows_where_a_neuron_fires_most_in_the_val_text(app_with_runs, run_dir):
    import pyarrow  # streamlit's own: its charts send their data as Arrow tables

    from minigpt.data import prepare_data
    from minigpt.inspection import top_activations
    from minigpt.resume import resume_config

    app = open_tab(app_with_runs, "Layer outputs")

    def chart():
        return next(c.proto for c in app.get("vega_lite_chart")
                    if "where the neuron fires most" in c.proto.spec)

    first = chart()
    app.selectbox(key="neuron_layer").select(2).run()
    app.number_input(key="neuron").set_value(7).run()
    assert not app.exception
    model, tokenizer = load(run_dir)
    cfg = resume_config(run_dir)
    val = prepare_data(cfg.data, cfg.model.context_length, tokenizer).val
    expected = top_activations(model, val, 2, 7)
    rows = pyarrow.ipc.open_stream(chart().datasets[0].data.data).read_all().to_pylist()
    peaks = [r for r in rows if r["token position"] == "peak"]
    assert len(peaks) == 8 and chart() != first
    assert [r["token"] for r in peaks] == [repr(tokenizer.decode([c.ids[c.peak]]))[1:-1][:8]
                                           for c in expected]
    assert peaks[0]["place"] == f"#1, peak {expected[0].activations[expected[0].peak]:.2f}"
    assert any("neuron 7 of layer 2" in c.value for c in app.caption)


def test_the_positions_tab_shows_the_sinusoidal_table_and_the_learned_one(app_with_runs, run_dir):
    app = app_with_runs
    open_tab(app, "Positions")
    radio = app.radio(key="positions")
    assert radio.options == ["sinusoidal (the deck's formula)", "learned (this model's table)"]

    def position_charts():
        return [c.proto.spec for c in app.get("vega_lite_chart")
                if ('"dimension"' in c.proto.spec or '"similarity"' in c.proto.spec)
                and "of the embeddings" not in c.proto.spec]  # the embedding's bars stay

    sinusoidal = position_charts()
    assert len(sinusoidal) == 2
    from minigpt import load, show  # a notebook draws the same charts (Streamlit keeps the data apart)
    model, _ = load(run_dir)
    for app_spec, chart in zip(sinusoidal, (show.positions(model),
                                            show.position_fingerprints(model))):
        app_spec, spec = json.loads(app_spec), chart.to_dict()
        assert (app_spec["mark"], app_spec["encoding"]) == (spec["mark"], spec["encoding"])
    radio.set_value("learned (this model's table)").run()
    assert not app.exception
    learned = position_charts()
    assert len(learned) == 2 and learned != sinusoidal
    assert any(m.value.startswith("**The learned position table**") for m in app.markdown)


def test_a_thumbnail_of_the_model_view_opens_its_head(app_with_runs):
    app = app_with_runs
    app.run()
    model_view = next(json.loads(c.proto.spec) for c in app.get("vega_lite_chart")
                      if '"facet"' in c.proto.spec and '"axis": null' in c.proto.spec
                      and '"head"' in c.proto.spec)
    assert model_view["facet"]["row"]["field"] == "layer"  # every layer x head as a thumbnail
    assert model_view["facet"]["column"]["field"] == "head"
    assert {"query", "key"} <= {t["field"] for t in model_view["spec"]["encoding"]["tooltip"]}
    assert {b.key for b in app.button if b.key.startswith("open_")} == {
        f"open_{layer}_{head}" for layer in (1, 2) for head in (0, 1)}
    app.button(key="open_2_1").click().run()
    assert not app.exception
    assert app.selectbox(key="layer").value == 2 and app.selectbox(key="head").value == 1
    assert any("Head view** (layer 2)" in m.value for m in app.markdown)


def token_picker(app):
    return next(box for box in app.selectbox if box.key.startswith("query"))


def test_the_head_view_shades_the_tokens_one_token_attends_to(app_with_runs, run_dir):
    app = app_with_runs
    app.run()
    app.text_input(key="prompt").input("the cat sat on the mat").run()
    app.selectbox(key="head").select(1).run()
    token_picker(app).select(2).run()  # 'sat'
    assert not app.exception
    view = next(m.value for m in app.markdown if "<span" in m.value)
    assert view.count("<span") == 6 and "2:&#x27;sat&#x27;: " in view
    assert view.count("masked: a later token, hidden") == 3  # 'on', 'the', 'mat' come after
    assert any("the causal mask hides them" in c.value for c in app.caption)
    from minigpt import load, show  # a notebook draws the same view
    model, tokenizer = load(run_dir)
    shown = show.head_view(model, tokenizer, "the cat sat on the mat", 1, 1, 2)._repr_html_()
    assert view == shown


def test_a_new_prompt_resets_the_head_views_token_to_its_last(app_with_runs):
    app = app_with_runs
    app.run()
    app.text_input(key="prompt").input("the cat sat on the mat").run()
    token_picker(app).select(3).run()  # 'on'
    app.text_input(key="prompt").input("the dog ran to the park").run()
    assert not app.exception
    picker = token_picker(app)
    assert picker.value == 5 and picker.format_func(picker.value) == "5:'park'"
    view = next(m.value for m in app.markdown if "<span" in m.value)
    assert "border:2px solid #c0392b" in view.split("<span")[-1]  # the last token, highlighted


def test_heatmaps_draw_the_causal_mask_grey_and_name_it(app_with_runs):
    app = app_with_runs
    heatmaps = []
    for tab, count in (("Watch it learn", 1), ("Attention", 2 + 1)):  # two heads, the model view
        shown = [json.loads(c.proto.spec) for c in open_tab(app, tab).get("vega_lite_chart")
                 if '"field": "key"' in c.proto.spec]
        assert len(shown) == count, tab
        heatmaps += shown
    for spec in heatmaps:
        inner = spec.get("spec", spec)
        colour = inner["encoding"]["color"]
        assert "masked: a later token" in colour["condition"]["test"]
        assert colour["condition"]["value"] == "#c8c8c8"
    assert any("Grey cells are tokens after the query" in c.value for c in app.caption)


def test_the_lens_writes_only_the_words_that_fit_their_cells():
    import altair as alt
    import torch

    from minigpt.charts import LENS_TEXT_WIDTH, lens_grid_chart

    for T in (4, 24, 48):
        tops = [[["elephants"] * 5] * T] * 3  # 3 layers, T positions, a long word everywhere
        with alt.data_transformers.disable_max_rows():
            spec = lens_grid_chart([f"w{i}" for i in range(T)], tops, torch.full((3, T, 5), 0.2))
        rows = next(iter(spec.to_dict()["datasets"].values()))
        written = {row["top token"] for row in rows}
        assert all(len(word) * 7 * T <= LENS_TEXT_WIDTH for word in written), T  # 7 px a letter
        assert all(row["top 5"].startswith("'elephants' 0.20") for row in rows)  # hover: whole
    assert written == {""}  # at 48 tokens no word fits: the colour and the hover remain


def test_a_long_prompt_keeps_each_head_short_and_its_labels_apart():
    import altair as alt
    import torch

    from minigpt.charts import attention_chart

    T = 120
    weights = torch.randn(T, T).masked_fill(torch.ones(T, T).triu(1).bool(), -1e9).softmax(-1)
    with alt.data_transformers.disable_max_rows():  # as Streamlit does
        spec = attention_chart(weights, [f"t{i}" for i in range(T)]).to_dict()
    assert spec["height"] <= 480  # 2,640 pixels before
    labels = spec["encoding"]["x"]["axis"]["values"]
    assert 20 <= len(labels) <= 40 and labels[0] == "0:'t0'"


def test_the_step_slider_plays_back_the_runs_evaluations(app_with_runs):
    app = app_with_runs
    open_tab(app, "Watch it learn")
    slider = app.select_slider(key="step")
    assert slider.options == [str(s) for s in (*range(0, 30, 4), 30)]  # before, every evaluation
    assert slider.value == 30

    def learning_chart():
        return next(c.proto for c in app.get("vega_lite_chart")
                    if '"facet"' in c.proto.spec and "attends to (key)" in c.proto.spec)

    first = learning_chart()
    assert any(c.value == "attention at step 30" for c in app.caption)
    slider.set_value(4).run()
    assert not app.exception and learning_chart() != first
    assert any(c.value == "attention at step 4" for c in app.caption)


def test_watch_it_learn_plays_back_the_lens_and_head_scores_with_the_slider(app_with_runs):
    app = app_with_runs
    open_tab(app, "Watch it learn")

    def learning_specs():
        return [c.proto.spec for c in app.get("vega_lite_chart")
                if "training step" in c.proto.spec or '"duplicate-token"' in c.proto.spec
                or ('"top token"' in c.proto.spec and "layer 0 (embeddings" in c.proto.spec)]

    assert any("logit lens at step 30" in c.value for c in app.caption)
    curves = next(s for s in learning_specs() if "training step" in s)
    assert "top induction score" in curves and "in-context learning" in curves
    assert '"step == 30"' in curves.replace("datum.", "")  # the rule at the step shown
    before = learning_specs()
    app.select_slider(key="step").set_value(0).run()  # before the first step
    assert not app.exception
    assert any("logit lens at step 0" in c.value for c in app.caption)
    assert any("head scores at step 0" in c.value for c in app.caption)
    after = learning_specs()
    assert len(after) == len(before) == 3 and after != before  # lens, head scores, curves


def test_the_step_slider_starts_at_the_last_step_of_a_newly_chosen_run(monkeypatch, tmp_path,
                                                                       run_dir, serve_as):
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / "older")
    time.sleep(0.05)
    train(run_config(tmp_path, **{"train.max_steps": 12, "train.run_name": "newer",
                                  "train.probe": True}), progress=False)
    serve_as("0.0.0.0")
    app = make_app(monkeypatch, runs)
    open_tab(app, "Watch it learn")
    assert app.select_slider(key="step").value == 12
    app.select_slider(key="step").set_value(4).run()
    app.selectbox(key="run").select_index(1).run()  # the older run
    assert not app.exception
    assert app.select_slider(key="step").value == 30  # not the 4 chosen on the other run


def test_the_lens_row_of_the_embeddings_says_it_predicts_nothing_yet(app_with_runs):
    app = app_with_runs
    open_tab(app, "Layer outputs")
    lens = next(c.proto.spec for c in app.get("vega_lite_chart") if '"top token"' in c.proto.spec)
    assert "layer 0 (embeddings: no prediction yet)" in lens and '"layer 0"' not in lens
    assert any("reads the embeddings before any block" in c.value for c in app.caption)
    spec = json.loads(lens)
    tooltips = [layer["encoding"]["tooltip"] for layer in spec["layer"]]
    assert tooltips[0] == tooltips[1]  # the cell and the word in it say the same on hover


def test_the_page_says_what_the_command_line_would_warn_about(app_with_runs):
    app = app_with_runs
    app.run()
    app.text_input(key="prompt").input("the cat sat on the zeppelin").run()
    assert not app.exception and "become <unk>" in app.warning[0].value
    assert app.warning[0].value.startswith("1 token(s)")
    assert "zeppelin" in app.warning[0].value
    app.text_input(key="prompt").input("").run()
    assert not app.exception and "The prompt is empty" in app.info[0].value


def test_a_bad_checkpoint_path_shows_a_short_error_without_its_contents(app, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"SECRET-CONTENTS not a checkpoint")
    app.run()
    for path in (str(tmp_path / "missing.pt"), str(tmp_path / "junk.pt"), "x" * 300, "a\0b"):
        app.text_input(key="checkpoint").input(path).run()
        assert not app.exception
        message = app.error[0].value
        assert "Cannot load that checkpoint" in message and "SECRET" not in message
        assert len(message) < 300


def test_generation_length_is_capped_by_the_context(app_with_runs, run_dir):
    app_with_runs.run()
    model, _ = load(run_dir)
    assert app_with_runs.slider(key="max_new_tokens").max == model.config.context_length


def fake_training(calls: list):
    """Stands in for train(): writes a run as train() would, at once."""
    def fake(cfg, **kwargs):  # noqa: ARG001
        run_dir = Path(cfg.train.out_dir) / cfg.train.run_name
        run_dir.mkdir(parents=True)
        shutil.copy(calls[0], run_dir / "best.pt")
        calls.append(run_dir)
        return TrainResult(run_dir, 8, 1.0)
    return fake


def settle(app: AppTest, until) -> None:
    """Rerun the page (as its one-second timer would) until until(app) holds."""
    for _ in range(100):
        app.run()
        if until(app):
            return
        time.sleep(0.05)
    pytest.fail("the page never settled")


def has_button(app: AppTest, key: str) -> bool:
    return any(button.key == key for button in app.button)


def test_the_app_keeps_one_run_of_its_own(monkeypatch, tmp_path, run_dir, serve_as):
    runs = tmp_path / "runs"
    (runs / "app-default").mkdir(parents=True)
    (runs / "app-default" / "events.out.tfevents.stale").write_text("left by a stopped server")
    calls = [run_dir / "best.pt"]
    monkeypatch.setattr(minigpt.training, "train", fake_training(calls))
    serve_as("0.0.0.0")
    app = make_app(monkeypatch, runs)
    app.run()
    for _ in range(2):
        app.button(key="train").click().run()
        settle(app, lambda app: any("trained" in s.value for s in app.success))
        assert not app.exception
    assert [p.name for p in runs.iterdir()] == ["app-default"]
    assert sorted(p.name for p in (runs / "app-default").iterdir()) == ["best.pt"]
    assert len(calls) == 3  # trained twice, into the same directory
    assert app.selectbox(key="run").options == ["app-default"]


def test_training_runs_in_the_background_and_can_be_cancelled(monkeypatch, tmp_path, run_dir,
                                                              serve_as):
    def slow_training(cfg, on_step=None, cancelled=None, **kwargs):
        step = 0
        while not cancelled():  # as train() does: the app's Cancel button ends the loop
            step += 1
            on_step(step, 600)
            time.sleep(0.01)
        run = Path(cfg.train.out_dir) / cfg.train.run_name
        run.mkdir(parents=True)
        shutil.copy(run_dir / "best.pt", run / "last.pt")
        return TrainResult(run, step, 1.0, stopped_by="cancelled")

    monkeypatch.setattr(minigpt.training, "train", slow_training)
    serve_as("127.0.0.1")
    app = make_app(monkeypatch, tmp_path / "runs")
    app.run()
    app.button(key="train").click().run()
    settle(app, lambda app: has_button(app, "cancel"))  # the page answers while it trains
    assert "training: step" in app.get("progress")[0].proto.text
    app.button(key="cancel").click().run()
    settle(app, lambda app: not has_button(app, "cancel"))
    settle(app, lambda app: any("cancelled at step" in s.value for s in app.success))
    assert "can be resumed" in app.success[0].value
    assert app.selectbox(key="run").options == ["app-default"]  # a resumable run, loaded
    later = AppTest.from_file(APP, default_timeout=60)  # another visitor, same server
    later.run()
    assert not later.exception and app_training_outcome(later) == []  # not told of the cancel
    assert later.selectbox(key="run").options == ["app-default"]


def app_training_outcome(app: AppTest) -> list[str]:
    return [s.value for s in app.sidebar.success if "cancelled" in s.value or "trained" in s.value]


def test_a_run_without_snapshots_is_not_called_old(monkeypatch, tmp_path, run_dir, serve_as):
    runs = tmp_path / "runs"
    shutil.copytree(run_dir, runs / "cancelled")
    (runs / "cancelled" / "snapshots.pt").unlink()  # as a run stopped before its first probe
    serve_as("0.0.0.0")
    app = make_app(monkeypatch, runs)
    open_tab(app, "Watch it learn")
    note = next(i.value for i in app.info if "snapshots" in i.value)
    assert "stopped before its first evaluation" in note
    assert not note.startswith("This run kept no snapshots of its evaluations (runs trained")


def test_a_run_trained_without_the_probe_says_so(monkeypatch, tmp_path, serve_as):
    train(run_config(tmp_path, **{"train.probe": False}), progress=False)
    serve_as("127.0.0.1")
    app = open_tab(make_app(monkeypatch, tmp_path / "runs"), "Watch it learn")
    note = next(i.value for i in app.info if "snapshots" in i.value)
    assert "--train.probe false" in note and "stopped before" not in note


def test_a_prompt_of_spaces_keeps_the_page_and_unknown_marks_are_counted_as_tokens(
        app_with_runs):
    app = app_with_runs
    app.run()
    app.text_input(key="prompt").input("   ").run()
    assert not app.exception and not app.error
    assert any("only spaces" in i.value for i in app.info)
    assert len(app.tabs) == 6 and app.get("vega_lite_chart")  # the views stay
    app.text_input(key="prompt").input("!!! ???").run()
    assert not app.exception
    warning = next(w.value for w in app.warning if "<unk>" in w.value)
    assert warning.startswith("6 token(s)") and "'!'" in warning and "'?'" in warning


@pytest.mark.slow
def test_started_as_the_readme_says_it_listens_on_loopback_only(tmp_path):
    """A real `streamlit run app.py` (slow: a server start): reachable on 127.0.0.1, and not on
    this machine's other address."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # picks the outward interface; sends nothing
        other = probe.getsockname()[0]
    except OSError:
        other = None
    finally:
        probe.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py",
                               "--server.headless", "true", "--server.port", str(port)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the app did not start on 127.0.0.1")
        if other is None or other.startswith("127."):
            pytest.skip("this machine has no address other than loopback to try")
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=2).close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_ablated_model_says_what_it_lacks(monkeypatch, tmp_path, serve_as):
    serve_as("127.0.0.1")
    with pytest.warns(UserWarning, match="model.causal = false"):
        train(run_config(tmp_path, **{"model.causal": "false", "model.ffn": "false"}),
              progress=False)
    app = make_app(monkeypatch, tmp_path / "runs")
    app.run()
    assert any("Ablation: no feed-forward blocks, no causal mask" in c.value
               for c in app.sidebar.caption)
    assert "without the causal mask" in app.sidebar.warning[0].value
    for tab in TAB_CHARTS:  # every view copes with the parts it lacks
        assert not open_tab(app, tab).exception, tab
    open_tab(app, "Layer outputs")
    assert any("no feed-forward blocks" in i.value and "no neurons" in i.value for i in app.info)


def test_every_widget_on_a_tab_is_kept_while_another_tab_is_open(app_with_runs):
    """page.TAB_WIDGETS names each tab's widgets, so that keep_hidden_choices stores them again
    while another tab is drawn: a widget missing from it would lose its value on a tab switch."""
    from minigpt.app.page import TAB_WIDGETS

    app = app_with_runs
    kinds = ("selectbox", "multiselect", "radio", "number_input", "text_input", "select_slider",
             "slider", "toggle")
    for name in TAB_CHARTS:
        (tab,) = [t for t in open_tab(app, name).tabs if t.label == name]
        keys = [w.key for kind in kinds for w in tab.get(kind) if w.key]
        assert all(key.startswith(TAB_WIDGETS.get(name, ())) for key in keys), (name, keys)
        assert keys or name in ("Temperature",), name  # the other tabs have widgets to keep


CHARTS_WITHOUT_STREAMLIT = """
import sys
import altair as alt
import torch
from minigpt import charts, circuit_charts
from minigpt.head_scores import head_scores
from minigpt.inspection import inspect_prompt
from minigpt.model import GPT, ModelConfig
from minigpt.tokenizer import CharTokenizer

torch.manual_seed(0)
tokenizer = CharTokenizer("abcdefgh ")
model = GPT(ModelConfig(vocab_size=9, context_length=16, embed_dim=16, num_heads=2,
                        num_layers=2)).eval()
seen = inspect_prompt(model, tokenizer, "abc dea")
built = [charts.attention_chart(seen.attentions[0][1], seen.tokens),
         charts.model_view_chart(seen.attentions, seen.tokens),
         charts.layers_chart(seen.attentions, seen.tokens),
         charts.logit_lens_chart(seen), charts.sublayer_chart(seen), charts.norm_chart(seen),
         charts.matrix_chart(seen.hidden_states[0], "dimension", "position", "value"),
         charts.temperature_chart(seen.next_token_probs, tokenizer, 0.8),
         charts.probability_chart(["a", "b"], [0.5, 0.25], 7), charts.weight_legend_chart(),
         circuit_charts.next_token_bars(["a", "b"], [0.5, 0.2], [0.1, 0.6]),
         circuit_charts.recovery_chart(torch.rand(3, 7), list("abc dea"), list("xyz"), "p", "l"),
         circuit_charts.attribution_chart({"embeddings": 1.0, "L1H0": -0.5}),
         circuit_charts.head_scores_chart(head_scores(model, torch.arange(200) % 9).as_dict()),
         circuit_charts.score_curves_chart([0, 4], [0.1, 0.5], [0.0, -0.2], 4)]
with alt.data_transformers.disable_max_rows():  # as Streamlit does; Altair stops at 5000
    for chart in built:
        chart.to_dict()  # validates the spec against Vega-Lite's schema
assert "streamlit" not in sys.modules, "minigpt.charts must not need Streamlit"
print(len(built))
"""


def test_the_charts_draw_an_inspection_without_streamlit():
    """A notebook gets the app's charts from minigpt.charts alone."""
    done = subprocess.run([sys.executable, "-c", CHARTS_WITHOUT_STREAMLIT], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["15"]


def test_the_model_view_pools_a_long_prompt_keeping_rows_that_sum_to_one():
    import altair as alt
    import torch

    from minigpt.charts import MODEL_VIEW_CELLS, model_view_chart, pooled

    T = 2 * MODEL_VIEW_CELLS + 5  # 3 tokens a group, the last group of 2
    causal = torch.ones(T, T).tril().bool()
    weights = torch.randn(2, 3, T, T).masked_fill(~causal, float("-inf")).softmax(-1)
    grouped, names = pooled(weights, [str(i) for i in range(T)], MODEL_VIEW_CELLS)
    assert grouped.shape == (2, 3, 34, 34) and names[0] == "0-2" and names[-1] == f"99-{T - 1}"
    torch.testing.assert_close(grouped.sum(-1), torch.ones(2, 3, 34), atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped[0, 0, 0, 0], weights[0, 0, :3, :3].sum(-1).mean())
    with alt.data_transformers.disable_max_rows():
        spec = model_view_chart(list(weights), [f"w{i}" for i in range(T)]).to_dict()
    assert sum(len(rows) for rows in spec["datasets"].values()) == 2 * 3 * 34 * 34
    short = model_view_chart(list(weights[:, :, :5, :5]), list("abcde")).to_dict()
    assert sum(len(rows) for rows in short["datasets"].values()) == 2 * 3 * 5 * 5



# ----------------------------------------------------------------------------- test a hypothesis

def test_knocking_heads_out_changes_the_next_token_bars_and_the_loss(app_with_runs, run_dir):
    from minigpt.interventions import ablate

    app = app_with_runs
    open_tab(app, "Test a hypothesis")
    knockout = app.multiselect(key="knockout")
    assert len(knockout.options) == 2 * 2  # every layer x head of the test model
    assert app.metric[0].value and not app.metric[0].proto.delta  # no change before a tick
    knockout.set_value([(1, 0), (2, 1)]).run()
    assert not app.exception
    model, tokenizer = load(run_dir)
    expected = ablate(model, tokenizer.encode("the cat sat on"), heads=[(1, 0), (2, 1)])
    assert app.metric[0].value == f"{expected.ablated_loss:.3f}"
    assert app.metric[0].proto.delta.startswith(f"{expected.loss_change:+.3f}")
    bars = next(json.loads(c.proto.spec) for c in app.get("vega_lite_chart")
                if "heads knocked out" in c.proto.spec)
    assert bars["encoding"]["color"]["sort"] == ["as trained", "heads knocked out"]
    app.radio(key="knockout_method").set_value("mean").run()
    assert not app.exception
    assert any("their average over the run's val split" in c.value for c in app.caption)


def test_patching_refuses_a_pair_of_different_lengths_and_draws_recovery(app_with_runs):
    app = app_with_runs
    open_tab(app, "Test a hypothesis")
    assert app.text_input(key="clean").value == "the cat sat on the mat . the cat"
    assert app.text_input(key="corrupted").value == "the dog sat on the mat . the dog"
    answer = next(t for t in app.text_input if t.key.startswith("answer:"))
    assert answer.value  # the clean run's prediction, editable
    recovery = [c.proto.spec for c in app.get("vega_lite_chart") if '"recovery"' in c.proto.spec]
    assert len(recovery) == 3  # residual stream, heads, feed-forward outputs
    assert "after block 2" in recovery[0] and "0:'the'" in recovery[0]
    assert "'cat'/'dog'" in recovery[0]  # the positions where the prompts differ
    app.text_input(key="corrupted").input("the dog sat on the mat").run()
    assert not app.exception
    assert any("need the same number of tokens" in e.value for e in app.error)
    assert sum('"recovery"' in c.proto.spec for c in app.get("vega_lite_chart")) == 0


def test_attribution_and_the_head_table_name_the_parts(app_with_runs):
    app = app_with_runs
    open_tab(app, "Test a hypothesis")
    attribution = next(json.loads(c.proto.spec) for c in app.get("vega_lite_chart")
                       if "contribution to the token's logit" in c.proto.spec)
    parts = attribution["encoding"]["y"]["sort"]  # the parts, largest first
    assert "embeddings" in parts and "L1H0" in parts and len(parts) == 1 + 4 + 2 * 2 + 1
    table = app.dataframe[0].value
    assert list(table.columns) == ["layer", "head", "previous-token", "first-token",
                                   "duplicate-token", "induction", "kind"]
    assert len(table) == 4 and set(table["layer"]) == {1, 2}
    assert any("scored at step 30, the run's last evaluation" in c.value for c in app.caption)


def test_a_post_norm_model_says_why_attribution_does_not_apply(monkeypatch, tmp_path, serve_as):
    serve_as("127.0.0.1")
    train(run_config(tmp_path, **{"model.norm_placement": "post"}), progress=False)
    app = make_app(monkeypatch, tmp_path / "runs")
    open_tab(app, "Test a hypothesis")
    assert not app.exception
    note = next(i.value for i in app.info if "Direct logit attribution" in i.value)
    assert "post-norm" in note and "Knocking heads out and patching" in note
    assert app.get("vega_lite_chart") and app.multiselect(key="knockout")


def test_the_tab_works_on_a_gpt2_directory(monkeypatch, tmp_path, serve_as):
    pytest.importorskip("transformers")
    from minigpt.corpus import load_corpus
    from minigpt.gpt2 import export_gpt2
    from minigpt.model import GPT, ModelConfig
    from minigpt.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.train(load_corpus()[:20000], 300)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=32, embed_dim=32,
                            num_heads=2, num_layers=2))
    export_gpt2(model, tokenizer, tmp_path / "gpt2")
    serve_as("127.0.0.1")
    app = make_app(monkeypatch, tmp_path / "no-runs")
    open_tab(app, "Test a hypothesis")
    app.text_input(key="checkpoint").input(str(tmp_path / "gpt2")).run()
    assert not app.exception, app.exception
    app.multiselect(key="knockout").set_value([(2, 1)]).run()
    assert not app.exception
    assert any("embedded corpus" in c.value and "GPT-2 directory" in c.value for c in app.caption)
    assert any("scored now, on this model" in c.value for c in app.caption)
    assert any("contribution to the token's logit" in c.proto.spec
               for c in app.get("vega_lite_chart"))
    open_tab(app, "Layer outputs")  # the neuron view reads the embedded corpus's end instead
    assert not app.exception
    assert any("where the neuron fires most" in c.proto.spec for c in app.get("vega_lite_chart"))
    assert any("embedded corpus" in c.value and "neuron 0 of layer 1" in c.value
               for c in app.caption)


def test_the_views_cover_the_generated_tokens_on_request(app_with_runs, run_dir):
    app = app_with_runs
    app.run()
    app.slider(key="max_new_tokens").set_value(6).run()
    app.button(key="generate").click().run()
    assert not app.exception
    assert len(token_picker(app).options) == 4  # "the cat sat on"
    assert any("at temperature 1 and before top-k/top-p" in c.value for c in app.caption)
    app.toggle(key="inspect_generated").set_value(True).run()
    assert not app.exception
    _, tokenizer = load(run_dir)
    expected = tokenizer.encode(app.code[0].value)[-16:]  # prompt + continuation, in context
    picker = token_picker(app)
    assert len(picker.options) == len(expected) > 4
    assert picker.value == len(expected) - 1  # the last generated token, ready to inspect


def test_the_temperature_view_marks_the_sidebar_and_applies_top_k_and_top_p(app_with_runs):
    import altair as alt
    import torch

    from minigpt.charts import temperature_chart
    from minigpt.tokenizer import CharTokenizer

    app = app_with_runs
    open_tab(app, "Temperature")
    app.slider(key="temperature").set_value(0.0).run()
    spec = next(c.proto.spec for c in app.get("vega_lite_chart") if '"temperature"' in c.proto.spec)
    assert "0 (greedy) (sidebar)" in spec and "0.05" not in spec
    assert any("greedy: T = 0 always picks the top token" in m.value for m in app.markdown)
    app.slider(key="top_k").set_value(2).run()
    assert any("after top-k 2" in m.value for m in app.markdown)

    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    with alt.data_transformers.disable_max_rows():
        chart = temperature_chart(probs, CharTokenizer("abcd"), 1.0, top_k=2, top_p=None)
        rows = next(iter(chart.to_dict()["datasets"].values()))
    at_one = {r["token"]: r["probability"] for r in rows if r["T"] == "1 (sidebar)"}
    assert at_one["'c'"] == at_one["'d'"] == 0.0  # cut by top-k, as sampling cuts them
    assert abs(at_one["'a'"] - 0.4 / 0.7) < 1e-6
    with alt.data_transformers.disable_max_rows():
        rows = next(iter(temperature_chart(probs, CharTokenizer("abcd"), 1.0, top_p=0.5)
                         .to_dict()["datasets"].values()))
    kept = [r["probability"] for r in rows if r["T"] == "1 (sidebar)"]
    assert kept[2:] == [0.0, 0.0] and min(kept[:2]) > 0  # 'b' starts before mass 0.5: kept


def test_the_embedding_view_lists_a_tokens_nearest_neighbours(app_with_runs, run_dir):
    import torch

    app = app_with_runs
    open_tab(app, "Positions")
    picker = next(box for box in app.selectbox if box.key.startswith("embedding:"))
    model, tokenizer = load(run_dir)
    assert picker.options == ["'the'", "'cat'", "'sat'", "'on'"]
    picker.select_index(1).run()  # 'cat'
    assert not app.exception
    bars = next(json.loads(c.proto.spec) for c in app.get("vega_lite_chart")
                if "cosine similarity of the embeddings" in c.proto.spec)
    weights = model.token_emb.weight.detach()
    cat = tokenizer.encode("cat")[0]
    cosine = torch.nn.functional.cosine_similarity(weights, weights[cat][None], dim=-1)
    cosine[cat] = -1
    expected = [repr(tokenizer.decode([i])) for i in cosine.topk(12).indices.tolist()]
    assert bars["encoding"]["y"]["sort"] == expected and "'cat'" not in expected


def test_a_thumbnail_button_marks_the_head_it_opens_and_the_thumbnails_have_a_scale(
        app_with_runs):
    app = app_with_runs
    app.run()
    model_view = next(json.loads(c.proto.spec) for c in app.get("vega_lite_chart")
                      if '"facet"' in c.proto.spec and '"axis": null' in c.proto.spec
                      and '"head"' in c.proto.spec)
    colour = model_view["spec"]["encoding"]["color"]
    assert colour["legend"]["title"] == "weight" and colour["scale"]["domain"] == [0, 1]
    assert not any("opened from the model view" in m.value for m in app.markdown)
    app.button(key="open_2_1").click().run()
    assert not app.exception
    marked = [m.value for m in app.markdown if "opened from the model view" in m.value]
    assert marked == [":red-background[**layer 2, head 1**: opened from the model view]"]
