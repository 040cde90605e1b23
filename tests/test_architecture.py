"""The shape of the code: layered modules, sizes that fit in a head, one train/eval mode rule, and a
package that finds its own files from any folder."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from minigpt import GPT, CharTokenizer
from minigpt.config import Config, config_path, default_config_path, load_config, shipped_configs
from minigpt.data import Dataset
from minigpt.evaluation import estimate_loss, split_loss
from minigpt.generation import generate, generate_text, stream
from minigpt.inspection import inspect_prompt, probe_snapshot, token_probabilities
from minigpt.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minigpt"


def runtime_imports(path: Path) -> set[str]:
    """The minigpt modules a file imports when it runs (not those under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minigpt"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("minigpt")}
    return found


def library_modules() -> dict[str, Path]:
    return {f"minigpt.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_library_modules_form_layers_without_cycles():
    """Each module imports only modules below it: a depth-first walk finds no way back."""
    graph = {name: runtime_imports(path) & set(library_modules())
             for name, path in library_modules().items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "open":
            pytest.fail(f"import cycle: {' -> '.join(trail + [name])}")
        if state.get(name) == "done":
            return
        state[name] = "open"
        for imported in graph[name]:
            visit(imported, trail + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


def test_the_model_imports_nothing_of_decoding_or_training():
    """model.py holds the architecture: sampling, generation and training sit above it."""
    assert runtime_imports(PACKAGE / "model.py") <= {"minigpt.errors", "minigpt.positions",
                                                     "minigpt.model_config"}
    assert runtime_imports(PACKAGE / "model_config.py") <= {"minigpt.errors", "minigpt.positions"}
    assert runtime_imports(PACKAGE / "positions.py") == set()


def python_files() -> list[Path]:
    return [*PACKAGE.rglob("*.py"), ROOT / "train.py", ROOT / "generate.py", ROOT / "app.py"]


def test_no_file_over_400_lines_and_no_function_over_60():
    long_files = {str(p.relative_to(ROOT)): n for p in python_files()
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    long_functions = [
        f"{p.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for p in python_files() for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 60]
    assert not long_files and not long_functions, (long_files, long_functions)


# ----------------------------------------------------------------------------- train/eval mode

@pytest.fixture(scope="module")
def small():
    tokenizer = CharTokenizer.train("the cat sat on the mat. ")
    model = GPT(tiny_config(vocab_size=tokenizer.vocab_size, dropout=0.5))
    tokens = torch.tensor(tokenizer.encode("the cat sat on the mat. " * 20))
    data = Dataset(tokenizer, tokens[:400], tokens[400:], "test")
    return model, tokenizer, data


def every_mode_switching_call(model, tokenizer, data):
    """Every library function that runs a model in eval mode, each called once."""
    cfg = Config(model=model.config)
    runtime = Runtime(torch.device("cpu"))
    ids = tokenizer.encode("the cat")
    return {
        "stream": lambda: list(stream(model, torch.tensor([ids]), 3)),
        "generate": lambda: generate(model, torch.tensor([ids]), 3),
        "generate_text": lambda: list(generate_text(model, tokenizer, "the cat", 3)),
        "generate_text stopped early": lambda: next(iter(generate_text(model, tokenizer, "the", 50))),
        "inspect_prompt": lambda: inspect_prompt(model, tokenizer, "the cat"),
        "token_probabilities": lambda: token_probabilities(model, ids, 2),
        "probe_snapshot": lambda: probe_snapshot(model, ids),
        "split_loss": lambda: split_loss(model, data.val, 4, runtime),
        "estimate_loss": lambda: estimate_loss(model, data, cfg, runtime),
        "estimate_loss, exact": lambda: estimate_loss(
            model, data, Config(model=model.config, train=type(cfg.train)(eval_batches=0)),
            runtime),
    }


@pytest.mark.parametrize("training", [True, False])
def test_every_function_runs_in_eval_mode_and_restores_the_mode_it_found(small, training):
    """The one rule (minigpt.model.eval_mode): dropout is off inside, and the mode found comes
    back, whether the model was training or not."""
    model, tokenizer, data = small
    modes = []
    handle = model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    try:
        for name, call in every_mode_switching_call(model, tokenizer, data).items():
            model.train(training)
            modes.clear()
            call()
            assert modes and not any(modes), f"{name} ran the model in training mode"
            assert model.training == training, f"{name} left the model in the other mode"
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- package files

def test_shipped_configs_are_the_configs_folder():
    assert default_config_path() == ROOT / "configs" / "default.toml"
    assert shipped_configs() == sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
    assert config_path("shakespeare_char").read_text() == (
        ROOT / "configs" / "shakespeare_char.toml").read_text()


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("shakespeare_char") == load_config(ROOT / "configs" / "shakespeare_char.toml")
    assert load_config("default.toml").name == "default"
    (tmp_path / "default.toml").write_text("[train]\nmax_steps = 7\n")
    assert load_config("default.toml").train.max_steps == 7  # a file of that name comes first


def test_the_package_reaches_for_no_file_outside_itself():
    """A pip-installed minigpt has no repository around it."""
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "parent.parent" not in source and "parents[" not in source, path


@pytest.mark.slow
def test_an_installed_minigpt_trains_its_default_config_from_any_folder(tmp_path):
    """pip install (not editable) into a folder of its own, then train from an empty folder."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                    "-q", "--target", str(target), str(ROOT)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    code = ("from minigpt.config import default_config_path, load_config\n"
            "from minigpt.training import train\n"
            "cfg = load_config(default_config_path(), {'train.max_steps': '2'})\n"
            "print(default_config_path())\n"
            "print(train(cfg, progress=False).step)")
    out = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    config, steps = out.stdout.strip().splitlines()[-2:]
    assert config.startswith(str(target)) and steps == "2"
