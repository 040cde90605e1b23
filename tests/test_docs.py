"""The README and every page in docs/ name commands, flags, config keys, modules, symbols, tests,
hook points, files and links that exist, and the tour follows the deck. Nothing here trains: the
command lines are parsed by the scripts' own parsers, never run."""

import ast
import importlib.util
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path

import pytest

import minigpt.ablation
import minigpt.bench
import minigpt.export
from minigpt.config import describe_keys, load_config
from minigpt.hooks import hook_points
from minigpt.model import GPT, ModelConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
TOUR = (ROOT / "docs" / "TOUR.md").read_text(encoding="utf-8")
DECK_ORDER = ["Token embedding", "Positional encoding", "Multi-head attention", "Causal masking",
              "Feed-forward network", "GELU", "Residual connections", "Layer normalisation",
              "Complete transformer block", "decoder-only", "MiniTransformer",
              "Key hyperparameters", "Temperature control", "Interactive demo", "generation loop"]
SETUP = ['pip install -e . && python train.py', 'pip install -e ".[dev]" && pytest']
SECTIONS = ("model", "data", "train")
FILE_SUFFIXES = {"py", "pt", "json", "bin", "safetensors", "toml", "md", "txt", "png"}  # train.py


def text_of(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def page_ids() -> list[str]:
    return [str(page.relative_to(ROOT)) for page in PAGES]


def inline_code(text: str) -> list[str]:
    """The `inline code` spans of a page, outside its fenced blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def command_lines(text: str) -> list[list[str]]:
    """Every command of a page as argv: each line of its bash blocks and each inline span that
    starts with a command, split at `&&`. A line that first changes directory runs someone else's
    code there (nanoGPT's train.py), so the rest of it is not ours to check."""
    lines = [line for block in fenced(text, "bash") for line in block.splitlines()]
    lines += [span for span in inline_code(text)
              if re.match(r"(python|torchrun|streamlit|pip) ", span)]
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            command, words = words[:cut], words[cut + 1:]
            if command[:1] == ["cd"]:
                break
            commands.append(command)
    return commands


# ----------------------------------------------------------------------------- the command lines

def script(name: str):
    """train.py or generate.py, imported as a module (their main() runs only as __main__)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def config_keys() -> set[str]:
    return {key for key, _, _ in describe_keys(load_config())}


def check_config_value(value: str) -> None:
    """--config takes a TOML file or a shipped config's name."""
    assert ((ROOT / value).is_file() or (ROOT / "configs" / f"{value}.toml").is_file()
            or (ROOT / "configs" / value).is_file()), f"--config {value}: no such config"


def check_train(args: list[str]) -> None:
    parsed, overrides = script("train").parse_args(args)
    unknown = set(overrides) - config_keys()
    assert not unknown, f"train.py {' '.join(args)}: no config key {sorted(unknown)}"
    if parsed.config:
        check_config_value(parsed.config)


def check_export(args: list[str], monkeypatch) -> None:
    """export has no parse_args: its main() parses, then loads the run, which stops it here."""
    class Parsed(Exception):
        pass

    def stop(*_):
        raise Parsed

    monkeypatch.setattr(minigpt.export, "load", stop)
    with pytest.raises(Parsed):
        minigpt.export.main(args)


def check_module(name: str, args: list[str], monkeypatch) -> None:
    if name == "minigpt.bench":
        parsed = minigpt.bench.parse_args(args)
        if parsed.config:
            check_config_value(parsed.config)
    elif name == "minigpt.ablation":
        check_config_value(minigpt.ablation.parse_args(args).config)
    elif name == "minigpt.export":
        check_export(args, monkeypatch)
    elif name == "minigpt.corpus":
        assert args == [], "python -m minigpt.corpus takes no arguments"
    else:
        pytest.fail(f"python -m {name}: the docs test does not know this tool; teach it here")


def check_python(args: list[str], monkeypatch) -> None:
    if args[0] == "-m":
        check_module(args[1], args[2:], monkeypatch)
        return
    path, rest = args[0], args[1:]
    assert (ROOT / path).is_file(), f"python {path}: no such file"
    if path == "train.py":
        check_train(rest)
    elif path == "generate.py":
        script("generate").parse_args(rest)


def check_pip(args: list[str]) -> None:
    """pip install -e . or -e ".[extra,...]": the extras exist."""
    if args[:2] != ["install", "-e"]:
        return
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = extras["project"]["optional-dependencies"]
    match = re.fullmatch(r"\.(?:\[([\w,]+)\])?", args[2])
    assert match, f"pip install -e {args[2]}: install the repository (.)"
    for extra in (match.group(1) or "").split(","):
        assert not extra or extra in extras, f"no extra [{extra}] in pyproject.toml"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_command_line_parses(page, monkeypatch, capsys):
    for command in command_lines(text_of(page)):
        program, args = command[0], command[1:]
        try:
            if program == "python":
                check_python(args, monkeypatch)
            elif program == "torchrun":
                script_at = next(i for i, arg in enumerate(args) if arg.endswith(".py"))
                assert args[script_at] == "train.py", command
                check_train(args[script_at + 1:])
            elif program == "streamlit":
                assert args[:2] == ["run", "app.py"], command
            elif program == "pip":
                check_pip(args)
        except SystemExit as stop:  # a parser refused it, or printed --help
            assert stop.code == 0, f"{page.name}: `{shlex.join(command)}` does not parse: " \
                                   f"{capsys.readouterr().err.strip()}"


def test_the_parsers_do_refuse_what_does_not_exist(monkeypatch):
    """The checks above can fail: a flag, a key, a config or an extra that is not there."""
    for bad in (["--no-such-flag"], ["--train.no_such_key", "1"], ["--config", "configs/nope.toml"]):
        with pytest.raises((SystemExit, AssertionError)):
            check_train(bad)
    with pytest.raises(SystemExit):
        script("generate").parse_args(["--top-q", "5"])
    with pytest.raises(SystemExit):
        minigpt.bench.parse_args(["nothing"])
    with pytest.raises(SystemExit):
        check_export(["only-one"], monkeypatch)
    with pytest.raises(AssertionError):
        check_pip(["install", "-e", ".[nope]"])


def test_the_readme_gives_the_two_set_up_commands_and_ci_runs_the_second():
    blocks = [line.strip() for block in fenced(text_of(README), "bash")
              for line in block.splitlines()]
    for command in SETUP:
        assert command in blocks, f"README lost its set-up command {command!r}"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert SETUP[1] in ci


def test_the_readme_is_a_front_door():
    assert len(text_of(README).splitlines()) <= 200, "move reference material into docs/"


# ----------------------------------------------------------------------------- names

@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_config_key_named_exists(page):
    text = text_of(page)
    named = re.findall(rf"--({'|'.join(SECTIONS)})\.(\w+)", text)
    for span in inline_code(text):
        named += re.findall(rf"(?<![\w./-])({'|'.join(SECTIONS)})\.(\w+)\b(?!\()", span)
    keys = {f"{section}.{key}" for section, key in named if key not in FILE_SUFFIXES}
    unknown = sorted(keys - config_keys())
    assert not unknown, f"{page.name} names config keys that do not exist: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_config_file_named_exists(page):
    for name in re.findall(r"configs/(\w+)\.toml", text_of(page)):
        assert (ROOT / "configs" / f"{name}.toml").is_file(), f"{page.name}: configs/{name}.toml"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_file_named_exists(page):
    text = text_of(page)
    paths = re.findall(r"(?<![\w/.])((?:minigpt|tests|docs|configs)/[\w/.]+\.(?:py|toml|md|png|txt))",
                       text)
    paths += re.findall(r"(?<![\w/.])((?:train|generate|app)\.py)\b", text)
    for path in set(paths) - {p for p in paths if Path(p).stem.isupper()}:  # tests/FILE.py
        assert (ROOT / path).is_file(), f"{page.name} names {path}, which does not exist"


@cache
def module_tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def defined_names(body: list[ast.stmt]) -> set[str]:
    """Names a module or class body defines: functions, classes, assignments, imports, fields,
    and for a class the attributes its methods set on self."""
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Name) and n.value.id == "self"
                      and isinstance(n.ctx, ast.Store)}
    return names


def module_file(dotted: str) -> Path | None:
    base = ROOT / Path(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def resolves(dotted: str) -> bool:
    """minigpt.a.b[.Name[.attr]]: the longest prefix that is a module, then names defined in it
    (and in the class a name is)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:cut]))
        if path is not None:
            break
    else:
        return False
    body, rest = module_tree(path).body, parts[cut:]
    for name in rest:
        if name not in defined_names(body):
            return False
        body = next((n.body for n in body if isinstance(n, ast.ClassDef) and n.name == name), [])
    return True


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_module_and_dotted_name_exists(page):
    text = text_of(page)
    dotted = set(re.findall(r"(?<![\w/.])(minigpt(?:\.\w+)+)", text))
    dotted |= {path[:-3].replace("/", ".") for path in re.findall(r"minigpt/[\w/]+\.py", text)}
    missing = sorted(name for name in dotted if not resolves(name.rstrip(".")))
    assert not missing, f"{page.name} names what minigpt does not have: {missing}"


@cache
def classes() -> dict[str, set[str]]:
    """Every class in minigpt's modules: the names its body defines."""
    found = {}
    for path in (ROOT / "minigpt").rglob("*.py"):
        for node in ast.walk(module_tree(path)):
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, set()).update(defined_names(node.body))
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_class_attribute_named_exists(page):
    """`GPT.forward`, `Block.norm1`, `Trainer.step`: a method, field or attribute of that class."""
    spans = " ".join(inline_code(text_of(page)))
    for cls, attr in re.findall(r"(?<![\w.])([A-Z]\w*)\.([a-z_]\w*)", spans):
        if cls in classes() and attr not in {"__init__"}:
            assert attr in classes()[cls], f"{page.name} names {cls}.{attr}, which does not exist"


def references(text: str) -> list[tuple[str, str]]:
    """(file, name) for every `path::name`; a bare `::name` continues the last file."""
    found, last = [], None
    for path, name in re.findall(r"`((?:tests|minigpt)/[\w/]+\.py|(?:app|train|generate)\.py)?"
                                 r"::(\w+)", text):
        last = path or last
        found.append((last, name))
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_named_test_and_symbol_exists(page):
    for path, name in references(text_of(page)):
        assert path, f"{page.name}: ::{name} follows no file"
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^\s*(def|class) {name}\b", source, re.M), \
            f"{page.name}: {path}::{name} is gone"


def test_the_tour_and_the_guarantees_name_many_tests():
    assert len(references(TOUR)) > 30
    guarantees = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    assert len(references(guarantees)) > 40


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_hook_point_named_exists(page):
    model = GPT(ModelConfig(vocab_size=8, context_length=4, embed_dim=8, num_heads=2, num_layers=1))
    points = set(hook_points(model))
    named = set(re.findall(r"(?<![\w.])(blocks\.(?:\{i\}|\d+)\.[\w.]*hook_\w+|hook_final_norm)",
                           text_of(page)))
    for name in named:
        assert re.sub(r"blocks\.(\{i\}|\d+)", "blocks.0", name) in points, \
            f"{page.name} names hook point {name}, which the model does not have"


# ----------------------------------------------------------------------------- links

def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text_of(page), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_every_link_and_image_exists(page):
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text_of(page)):
        if target.startswith(("http://", "https://")):
            continue
        linked = (page.parent / target) if target else page
        assert linked.is_file(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(linked), f"{page.name}: no heading #{anchor} in {target}"


def test_every_picture_in_docs_images_is_shown_somewhere():
    shown = " ".join(text_of(page) for page in PAGES)
    for image in (ROOT / "docs" / "images").glob("*.png"):
        assert f"images/{image.name}" in shown, f"docs/images/{image.name} is shown nowhere"


# ----------------------------------------------------------------------------- the tour

def test_the_tour_follows_the_decks_order():
    headings = "\n".join(line for line in TOUR.splitlines() if line.startswith("## "))
    positions = [headings.lower().find(concept.lower()) for concept in DECK_ORDER]
    assert -1 not in positions, [c for c, p in zip(DECK_ORDER, positions) if p == -1]
    assert positions == sorted(positions)
