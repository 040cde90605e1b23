"""Run configuration: one frozen dataclass per TOML section, read with stdlib tomllib.

    cfg = load_config("configs/default.toml", {"train.lr": "3e-4"})
    cfg = load_config("shakespeare_char")          # a shipped config, by name, from any folder

Precedence: overrides (from the command line, as strings) > the TOML file > dataclass defaults.
Unknown sections or keys and wrongly typed values raise ConfigError naming the key and the valid
choices. Values are converted by each field's declared type; config files are data, never code.
"""

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from minigpt.errors import ConfigError
from minigpt.files import path_problem, portable_name
from minigpt.model_config import ModelConfig, check_choice, check_fields
from minigpt.runtime import usable_cpus

# Upper bounds of the counts: far beyond any real run, and low enough that a typo (an extra
# few zeros) is an error at once rather than a run or an evaluation that never ends.
LIMITS = {"max_steps": 10**9, "grad_accum": 100_000, "eval_batches": 100_000,
          "sample_tokens": 10_000}  # sample_tokens: tokens of sample text per evaluation
MAX_BPE_VOCAB = 100_000  # merges are learned one at a time: more would train for hours


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["embedded", "repeats", "shakespeare"] = _help(
        "named corpus: the embedded animal stories; the same with random word lists said twice "
        "(copying them takes an induction head); or Tiny Shakespeare (downloaded once)",
        "embedded")
    path: str = _help("text to train on instead of data.dataset: a UTF-8 file, a directory of "
                      ".txt/.md/.jsonl files, or a glob; prepared into token shards once", "")
    text_field: str = _help("the field holding the text in each line of a .jsonl file", "text")
    tokenizer: Literal["char", "word", "bpe"] = _help("how text becomes token ids", "word")
    bpe_vocab_size: int = _help("vocabulary size of a bpe tokenizer (>= 256)", 512)
    tokenizer_sample: int = _help("characters at the start of the text that a word or bpe "
                                  "tokenizer learns its vocabulary from", 10_000_000)
    val_fraction: float = _help("share of the text, at its end, held out for validation (whole "
                                "documents, when there are several)", 0.1)
    cache_dir: str = _help("where downloads and tokenized corpora are cached "
                           "(empty: $MINIGPT_CACHE or ~/.cache/minigpt)", "")
    sampling: Literal["random", "epochs"] = _help(
        "how training windows are drawn: random (anywhere, with replacement, as nanoGPT) or "
        "epochs (each epoch cuts the train split at a random offset into windows, shuffled: "
        "every token once an epoch)", "random")

    def __post_init__(self):
        check_fields("data", self)
        if not 256 <= self.bpe_vocab_size <= MAX_BPE_VOCAB:
            raise ConfigError(f"data.bpe_vocab_size must be in [256, {MAX_BPE_VOCAB:,}], got "
                              f"{self.bpe_vocab_size}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.tokenizer_sample < 1:
            raise ConfigError(f"data.tokenizer_sample must be at least 1, got "
                              f"{self.tokenizer_sample}")
        if not self.text_field:
            raise ConfigError("data.text_field must name a field of the .jsonl records")
        _check_paths("data", self, ["path", "cache_dir"])


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _help("sequences per micro-batch (per process)", 32)
    seq_len: int = _help("tokens in each training sequence (0: model.context_length); shorter "
                         "costs less a token, and rope models still read the whole context", 0)
    grad_accum: int = _help("micro-batches accumulated into one optimizer step", 1)
    max_steps: int = _help("optimizer steps to train for", 1000)
    lr: float = _help("peak learning rate, reached after warmup", 1e-3)
    min_lr: float = _help("learning rate at the end of the cosine decay", 1e-4)
    warmup_steps: int = _help("steps of linear warmup from 0 to lr", 100)
    lr_schedule: Literal["cosine", "wsd"] = _help(
        "after warmup: cosine decay to min_lr at max_steps, or wsd (warmup-stable-decay): lr held "
        "until the last cooldown_fraction of the steps, then a straight line to min_lr", "cosine")
    cooldown_fraction: float = _help("share of max_steps that wsd spends decaying", 0.4)
    optimizer: Literal["adamw", "muon"] = _help(
        "adamw, or muon for the matrices inside the blocks (AdamW for the rest)", "adamw")
    muon_lr: float = _help("peak learning rate of the muon matrices (train.lr is for the rest)",
                           0.02)
    muon_momentum: float = _help("Nesterov momentum of the muon matrices", 0.95)
    muon_momentum_warmup: int = _help("steps over which muon's momentum rises linearly from "
                                      "0.85 to muon_momentum (0: constant)", 0)
    muon_neuron_norm: bool = _help("NorMuon: after orthogonalising, scale each neuron's (row's) "
                                   "step by its recent RMS, keeping the step's norm", False)
    muon_weight_decay: float = _help("decoupled weight decay of the muon matrices: each step "
                                     "scales them by 1 - (current muon lr) * this", 0.0)
    weight_decay: float = _help("AdamW weight decay, on weight matrices only", 0.1)
    decay_embeddings: bool = _help("apply weight decay to the token/position embeddings too, "
                                   "as nanoGPT does", False)
    beta1: float = _help("AdamW beta1", 0.9)
    beta2: float = _help("AdamW beta2", 0.99)
    grad_clip: float = _help("clip the gradient norm to this (0 disables clipping)", 1.0)
    eval_interval: int = _help("evaluate (and save best.pt) every this many steps", 100)
    eval_batches: int = _help("batches averaged for each train/val loss estimate (0: the exact "
                              "loss of the whole val split, in order)", 20)
    target_val_loss: float = _help("stop once an evaluation's val loss is at or below this "
                                   "(0: train for all max_steps)", 0.0)
    checkpoint_interval: int = _help("save last.pt every this many steps", 100)
    probe: bool = _help("at each eval and before the first step, also probe the model on the "
                        "sample prompt: a sample, its attention and logit lens (the app's Watch it "
                        "learn), head scores and TensorBoard pictures; false logs the losses only",
                        True)
    sample_tokens: int = _help("tokens of sample text logged at each eval (0: none)", 60)
    sample_prompt: str = _help("prompt of the logged samples and attention pictures (empty: the "
                               "first 32 tokens of the val split)", "")
    seed: int = _help("random seed for initialisation, batches and dropout", 1337)
    device: str = _help("auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps", "auto")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _help(
        "auto: bf16 on CUDA if supported, else fp16 on CUDA, fp32 elsewhere", "auto")
    compile: bool = _help("torch.compile the model (faster on GPU; costs start-up time)", False)
    fsdp: bool = _help("under torchrun, shard weights, gradients and AdamW state across ranks "
                       "(FSDP2's fully_shard): a model too big for one device", False)
    threads: int = _help("CPU threads for torch (0: torch's default)", 0)
    init_from: str = _help("start from these weights (fine-tuning): a minigpt run or .pt file, a "
                           "Hugging Face GPT-2 directory, or a hub name such as gpt2; the model "
                           "shape and tokenizer come from it, the optimizer starts afresh", "")
    out_dir: str = _help("directory holding run directories", "runs")
    run_name: str = _help("name of this run's directory (empty: config name and time)", "")

    def __post_init__(self):
        check_fields("train", self)
        positive = ["batch_size", "grad_accum", "max_steps", "eval_interval",
                    "checkpoint_interval"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ["warmup_steps", "weight_decay", "muon_weight_decay", "grad_clip",
                     "sample_tokens", "threads", "min_lr", "target_val_loss", "eval_batches",
                     "muon_momentum_warmup", "seq_len"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ["lr", "muon_lr"]:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr})")
        for rate, decay in (("lr", "weight_decay"), ("muon_lr", "muon_weight_decay")):
            # Decoupled decay scales the weights by 1 - rate * decay each step: at 1 or more
            # every decayed weight becomes zero or flips its sign, and nothing can be learned.
            product = getattr(self, rate) * getattr(self, decay)
            if product >= 1:
                raise ConfigError(
                    f"train.{rate} * train.{decay} must be below 1, got {getattr(self, rate)} * "
                    f"{getattr(self, decay)} = {product:g}: each step multiplies the weights by "
                    f"1 - {rate} * {decay}, which would zero them or flip their sign; lower one "
                    f"of the two (weight decays are usually 0.01 to 0.1)")
        if not 0 < self.cooldown_fraction <= 1:
            raise ConfigError(f"train.cooldown_fraction must be in (0, 1], got {self.cooldown_fraction}")
        for name in ["beta1", "beta2", "muon_momentum"]:
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.fsdp and (self.optimizer != "adamw" or self.probe or self.compile):
            raise ConfigError(
                "train.fsdp needs train.optimizer adamw (Muon orthogonalises whole matrices, "
                "which FSDP splits between ranks), train.probe false (the probe runs on rank 0 "
                "alone, and a sharded model needs every rank for a forward pass) and "
                "train.compile false; set them, or turn train.fsdp off")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, "
                              f"got {self.device!r}")
        _check_paths("train", self, ["out_dir", "init_from", "run_name"])
        if self.run_name and not portable_name(self.run_name):
            raise ConfigError(f"train.run_name must be a plain file name that every OS accepts "
                              f"(no / \\ : * ? \" < > |, no trailing dot or space, not a "
                              f"reserved name such as CON), got {self.run_name!r}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"train.seed must be in [0, 2**63), got {self.seed}")
        for name, limit in LIMITS.items():
            if getattr(self, name) > limit:
                raise ConfigError(f"train.{name} must be at most {limit:,}, got "
                                  f"{getattr(self, name)}")
        if self.threads > 4 * usable_cpus():
            raise ConfigError(f"train.threads must be at most {4 * usable_cpus()} (this machine "
                              f"has {usable_cpus()} CPUs), got {self.threads}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "default"  # the config file's stem, used to name runs

    def __post_init__(self):
        if not self.train.init_from:  # fine-tuning: once the weights give the model (init_config)
            self.check_train_window()

    def check_train_window(self, pretrained: bool = False) -> None:
        """train.seq_len within the context; shorter only if positions past it train anyway."""
        if self.train.seq_len > self.model.context_length:
            raise ConfigError(f"train.seq_len ({self.train.seq_len}) must not exceed "
                              f"model.context_length ({self.model.context_length})")
        if (not pretrained and self.train_window < self.model.context_length
                and self.model.pos_encoding in ("sinusoidal", "learned")):
            raise ConfigError(f"train.seq_len shorter than model.context_length needs "
                              f"model.pos_encoding rope or none: the {self.model.pos_encoding} "
                              f"positions past {self.train.seq_len} would never be trained")

    @property
    def train_window(self) -> int:
        """Tokens in each training sequence: train.seq_len, else the model's context."""
        return self.train.seq_len or self.model.context_length

    def to_dict(self) -> dict:
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# The tokenizer decides the vocabulary size; it is not a setting.
DERIVED_KEYS = {("model", "vocab_size")}


def _check_paths(section: str, values, names: list[str]) -> None:
    for name in names:
        problem = path_problem(getattr(values, name))
        if problem:
            raise ConfigError(f"{section}.{name} cannot be a file name: {problem}; choose another")


def config_fields(section: str) -> list[dataclasses.Field]:
    """The settable fields of a section, in declaration order."""
    return [f for f in dataclasses.fields(SECTIONS[section]) if (section, f.name) not in DERIVED_KEYS]


def _field_type(section: str, name: str):
    return typing.get_type_hints(SECTIONS[section])[name]


def _suggest(name: str, valid: list[str]) -> str:
    """" (did you mean ...?)": the keys that name begins (an abbreviation), else the closest."""
    close = [v for v in valid if name and v.startswith(name)][:3]
    close = close or difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _resolve_key(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {section!r} in {key!r}{_suggest(section, list(SECTIONS))}; "
                          f"valid sections: {', '.join(SECTIONS)}")
    valid = [f.name for f in config_fields(section)]
    if name not in valid:
        if (section, name) in DERIVED_KEYS:
            raise ConfigError(f"{key} is set from the tokenizer; remove it from the config")
        raise ConfigError(f"unknown key {key!r}{_suggest(name, valid)}; "
                          f"valid keys in [{section}]: {', '.join(valid)}")
    return section, name


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, tp, value):
    """Check a TOML value against the field type (ints are accepted for floats)."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        if value is None:
            return None
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    if typing.get_origin(tp) is Literal:
        check_choice(key, value, typing.get_args(tp))
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def parse_value(key: str, text: str):
    """Convert a command-line string to the type of the config field `key`."""
    section, name = _resolve_key(key)
    tp = _field_type(section, name)
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        if text.lower() in ("none", "null", ""):
            return None
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    if typing.get_origin(tp) is Literal or tp is str:
        return _check_value(key, tp, text)
    if tp is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {text!r}")
    try:
        return tp(text)
    except ValueError:
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {text!r}") from None


def config_path(name: str) -> Path:
    """A config shipped with minigpt, by name ("default", "shakespeare_char"): configs/NAME.toml,
    installed as the package data minigpt.configs, so found from any folder."""
    return Path(str(resources.files("minigpt.configs") / f"{name}.toml"))


def default_config_path() -> Path:
    """What train.py, the ablation and the app run when no config is given."""
    return config_path("default")


def shipped_configs() -> list[str]:
    """The names of the configs shipped with minigpt."""
    return sorted(p.name.removesuffix(".toml") for p in resources.files("minigpt.configs").iterdir()
                  if p.name.endswith(".toml"))


def find_config(path: str | Path) -> Path:
    """path itself when it names a file, else the shipped config of that name (with or without
    .toml), so that `--config shakespeare_char` works from any folder."""
    path = Path(path)
    if path.exists() or len(path.parts) != 1:
        return path
    shipped = config_path(path.name.removesuffix(".toml"))
    return shipped if shipped.is_file() else path


def read_toml(path: Path) -> dict:
    if path.exists() and not path.is_file():
        raise ConfigError(f"config path {path} is not a regular file; pass a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; give a TOML file or one of the "
                          f"shipped configs: {', '.join(shipped_configs())}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:  # too deep
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None


def build_config(values: dict, name: str = "default") -> Config:
    """Config from nested plain data {section: {key: value}}, checked key by key."""
    sections = {}
    for section, table in values.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]{_suggest(str(section), list(SECTIONS))}; "
                              f"valid sections: {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {table!r}")
        checked = {}
        for field_name, value in table.items():
            key = f"{section}.{field_name}"
            _resolve_key(key)
            checked[field_name] = _check_value(key, _field_type(section, field_name), value)
        sections[section] = checked
    return Config(**{s: cls(**sections.get(s, {})) for s, cls in SECTIONS.items()}, name=name)


def load_config(path: str | Path | None = None, overrides: dict[str, str] | None = None) -> Config:
    """Defaults, then the TOML file at path (if any), then overrides {"section.key": "text"}."""
    values: dict[str, dict] = {}
    name = "default"
    if path is not None:
        path = find_config(path)
        values = read_toml(path)
        name = path.stem
    for key, text in (overrides or {}).items():
        section, field_name = _resolve_key(key)
        values.setdefault(section, {})[field_name] = parse_value(key, text)
    return build_config(values, name)


def describe_keys(base: Config | None = None) -> list[tuple[str, object, str]]:
    """(key, default, help) for every settable key, for --help; the defaults are base's values
    (a loaded config file) or else the dataclass defaults, written as in TOML (true, "text"), and
    the help of a key with a fixed set of values lists them."""
    base = base or Config()
    rows = []
    for section in SECTIONS:
        for f in config_fields(section):
            tp, text = _field_type(section, f.name), f.metadata.get("help", "")
            if typing.get_origin(tp) is Literal:
                text += f"; one of: {', '.join(typing.get_args(tp))}"
            rows.append((f"{section}.{f.name}", toml_value(getattr(getattr(base, section), f.name)),
                         text))
    return rows


def toml_value(value) -> str:
    """value as a TOML file (and the command line) writes it: true, 0.001, "text"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)
