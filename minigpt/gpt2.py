"""GPT-2 in and out: a Hugging Face GPT-2 directory becomes a minigpt GPT, and back.

    model, tokenizer = load_gpt2("path/to/gpt2")       # config.json, model.safetensors (or
                                                       # pytorch_model.bin), vocab.json, merges.txt
    export_gpt2(model, tokenizer, "out/gpt2-mine")     # what `python -m minigpt.export` writes

GPT-2 is a minigpt GPT with learned positions, pre-norm blocks, biases, a tied head and GELU's
tanh approximation (`model.activation = "gelu_tanh"`). Its weights are stored by Hugging Face as
Conv1D layers, (in, out) matrices, which are the transposes of nn.Linear's. Its byte-level BPE is
minigpt's BPETokenizer with GPT-2's split pattern and GPT-2's numbering of the tokens.

Reading safetensors needs the `safetensors` package (`pip install -e ".[hf]"`); pytorch_model.bin
is read with torch.load(weights_only=True). Nothing here imports transformers.
"""

import json
import pickle
from pathlib import Path

import torch

from minigpt.errors import CheckpointError
from minigpt.files import write_directory
from minigpt.model import GPT, ModelConfig
from minigpt.runtime import physical_memory
from minigpt.tokenizer import BPETokenizer, Tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_LIMIT, TEXT_LIMIT = 2**20, 64 * 2**20  # bytes: GPT-2's own are 1 kB, 1 MB and 0.5 MB
MAX_PARAMS = 20_000_000_000  # as minigpt.checkpoint's: beyond it, a config is not trusted
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                "F64": torch.float64}  # safetensors' names of the dtypes weights may have
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu"}
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored (in, out)
# Hugging Face name within a block -> minigpt name within a block
BLOCK_NAMES = {"ln_1": "norm1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
               "ln_2": "norm2", "mlp.c_fc": "ffn.fc", "mlp.c_proj": "ffn.proj"}


def is_gpt2_dir(path: str | Path) -> bool:
    """Whether path is a directory in Hugging Face's layout (config.json and a weights file)."""
    path = Path(path)
    return (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, as its vocab.json and merges.txt spell tokens:
    printable Latin-1 bytes stand for themselves, the other 68 take the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


# ----------------------------------------------------------------------------- import

def gpt2_config(values: dict) -> ModelConfig:
    """The ModelConfig of a Hugging Face GPT-2 config.json, or a CheckpointError naming what
    minigpt cannot represent."""
    if values.get("model_type") != "gpt2":
        raise CheckpointError(f"config.json describes a {values.get('model_type')!r} model; "
                              f"minigpt imports GPT-2 models only (model_type 'gpt2')")
    unsupported = [key for key, ok in (
        ("scale_attn_by_inverse_layer_idx", not values.get("scale_attn_by_inverse_layer_idx")),
        ("scale_attn_weights", values.get("scale_attn_weights", True)),
        ("add_cross_attention", not values.get("add_cross_attention")),
        ("layer_norm_epsilon", values.get("layer_norm_epsilon", 1e-5) == 1e-5),
        ("activation_function", values.get("activation_function", "gelu_new") in ACTIVATIONS),
    ) if not ok]
    if unsupported:
        raise CheckpointError(f"this GPT-2 variant sets {', '.join(unsupported)} to values minigpt's "
                              f"model does not have")
    sizes = {key: values.get(key, default) for key, default in (
        ("vocab_size", 50257), ("n_positions", 1024), ("n_embd", 768), ("n_head", 12),
        ("n_layer", 12))}
    if values.get("n_inner") is not None:
        sizes["n_inner"] = values["n_inner"]
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"config.json: {key} must be a positive integer, got "
                                  f"{str(value)[:40]!r}; the directory is damaged")
    embed_dim = sizes["n_embd"]
    inner = sizes.get("n_inner") or 4 * embed_dim
    if inner % embed_dim:
        raise CheckpointError(f"n_inner ({inner}) is not a multiple of n_embd ({embed_dim})")
    try:
        return ModelConfig(
            vocab_size=values.get("vocab_size", 50257), context_length=values.get("n_positions", 1024),
            embed_dim=embed_dim, num_heads=values.get("n_head", 12),
            num_layers=values.get("n_layer", 12), ffn_mult=inner // embed_dim,
            pos_encoding="learned", norm_placement="pre", bias=True,
            tie_weights=values.get("tie_word_embeddings", True),
            activation=ACTIVATIONS[values.get("activation_function", "gelu_new")])
    except ValueError as err:
        raise CheckpointError(f"config.json: {err}") from None


def own_file(directory: Path, name: str, limit: int | None = None) -> Path:
    """directory/name, checked to be a regular file inside directory (a symlink out of it could
    make minigpt read any file of the machine, a device or a pipe) and at most limit bytes."""
    path = directory / name
    try:
        inside = path.resolve().is_relative_to(directory.resolve())
        regular, size = path.is_file(), path.stat().st_size if path.exists() else 0
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop
        raise CheckpointError(f"{path} cannot be read: {err}") from None
    if not inside:
        raise CheckpointError(f"{path} points outside {directory} (to {path.resolve()}); a model "
                              f"directory's files must be its own: copy them in")
    if not regular:
        raise CheckpointError(f"{path} is missing or not a regular file; {directory} needs "
                              f"config.json, {' or '.join(WEIGHT_FILES)}, vocab.json and merges.txt")
    if limit is not None and size > limit:
        raise CheckpointError(f"{path} is {size:,} bytes, more than a GPT-2 {name} can be "
                              f"({limit:,}); the directory is damaged")
    return path


def expected_weights(cfg: ModelConfig) -> dict[str, torch.Size]:
    """The Hugging Face name and shape of every tensor a GPT-2 of config cfg needs, from a model
    built on the meta device (no memory)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {name: tensor.shape for name, tensor in hf_state_dict(model, copy=False).items()}


def check_tensors(path: Path, found: dict[str, tuple[torch.Size, torch.dtype | str]],
                  cfg: ModelConfig) -> None:
    """Refuse weights whose names, shapes or dtypes do not fit config.json's model."""
    for name, shape in expected_weights(cfg).items():
        got = found.get(name, found.get(name.removeprefix("transformer.")))
        if got is None:
            raise CheckpointError(f"{path} lacks {name}; the directory is incomplete")
        if tuple(got[0]) != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {list(got[0])} but config.json's "
                                  f"model needs {list(shape)}; the weights do not fit config.json")
        if not (isinstance(got[1], torch.dtype) and got[1].is_floating_point):
            raise CheckpointError(f"{path}: {name} holds {str(got[1]).removeprefix('torch.')} "
                                  f"values, not floating-point weights; the file is damaged")


def read_weights(directory: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, else pytorch_model.bin (never code: weights_only),
    checked against cfg (names, shapes, dtypes) before a safetensors file is read."""
    name = next(f for f in WEIGHT_FILES if (directory / f).is_file())
    path = own_file(directory, name)
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors import safe_open
                from safetensors.torch import load_file
            except ImportError:
                raise CheckpointError("reading model.safetensors needs the safetensors package: "
                                      "pip install -e \".[hf]\"") from None
            with safe_open(path, "pt") as f:  # the header only
                slices = {key: f.get_slice(key) for key in f.keys()}
                check_tensors(path, {key: (torch.Size(t.get_shape()),
                                           FLOAT_DTYPES.get(t.get_dtype(), t.get_dtype()))
                                     for key, t in slices.items()}, cfg)
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():
            raise CheckpointError(f"{path} was refused: it holds objects other than tensors (such "
                                  f"as a function to call), which could run code when loaded; "
                                  f"load weights only from sources you trust") from None
        raise CheckpointError(f"{path} is damaged or not a weights file") from None
    except Exception as err:
        raise CheckpointError(f"{path} is damaged or not a weights file "
                              f"({type(err).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} does not hold a dictionary of tensors")
    check_tensors(path, {key: (t.shape, t.dtype) for key, t in state.items()}, cfg)
    return state


def minigpt_state_dict(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict:
    """Hugging Face GPT-2 tensor names and layouts -> minigpt's."""
    weights = {name.removeprefix("transformer."): t for name, t in weights.items()}
    state = {ours: weights.get(theirs) for ours, theirs in (
        ("token_emb.weight", "wte.weight"), ("pos_emb.weight", "wpe.weight"),
        ("final_norm.weight", "ln_f.weight"), ("final_norm.bias", "ln_f.bias"))}
    for i in range(cfg.num_layers):
        for theirs, ours in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                tensor = weights.get(f"h.{i}.{theirs}.{kind}")
                if tensor is not None and theirs in CONV1D and kind == "weight":
                    tensor = tensor.t().contiguous()
                state[f"blocks.{i}.{ours}.{kind}"] = tensor
    state["head.weight"] = (state["token_emb.weight"] if cfg.tie_weights
                            else weights.get("lm_head.weight"))
    missing = [name for name, tensor in state.items() if tensor is None]
    if missing:
        raise CheckpointError(f"the GPT-2 weights lack {', '.join(missing[:3])}"
                              f"{' ...' if len(missing) > 3 else ''}; the directory is incomplete")
    return state


def gpt2_tokenizer(directory: Path) -> BPETokenizer:
    """GPT-2's byte-level BPE from vocab.json and merges.txt, as a minigpt BPETokenizer."""
    try:
        vocab = json.loads(own_file(directory, "vocab.json", TEXT_LIMIT).read_text(encoding="utf-8"))
        lines = own_file(directory, "merges.txt", TEXT_LIMIT).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{directory} lacks a readable vocab.json and merges.txt (GPT-2's "
                              f"tokenizer files): {err}") from None
    ids = vocab.values() if isinstance(vocab, dict) else None
    if not ids or sorted(i if isinstance(i, int) and not isinstance(i, bool) else -1
                         for i in ids) != list(range(len(vocab))):
        raise CheckpointError(f"{directory / 'vocab.json'} must map each token to one id of "
                              f"0..N-1 (N tokens), each id once; the file is damaged")
    to_byte = {char: b for b, char in bytes_to_unicode().items()}
    try:
        pairs = [line.split(" ") for line in lines if line and not line.startswith("#version")]
        merges = [(vocab[a], vocab[b]) for a, b in pairs]
        made = {a + b for a, b in pairs} | set(to_byte)  # what bytes and merges can spell
        tokens: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        special = {}
        for text, i in vocab.items():
            if text in made:
                tokens[i] = bytes(to_byte[c] for c in text)
            else:  # <|endoftext|>: a special token, which no merge makes
                tokens[i], special[text] = text.encode("utf-8"), i
        return BPETokenizer(merges, "gpt2", tokens, special)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{directory}: vocab.json and merges.txt do not fit together "
                              f"({type(err).__name__}: {err})") from None


def gpt2_description(directory: str | Path) -> tuple[ModelConfig, BPETokenizer]:
    """The model config and tokenizer of a Hugging Face GPT-2 directory; the weights stay unread."""
    directory = Path(directory)
    if not is_gpt2_dir(directory):
        raise CheckpointError(f"{directory} is not a Hugging Face model directory (it needs "
                              f"config.json and {' or '.join(WEIGHT_FILES)})")
    try:
        values = json.loads(own_file(directory, "config.json", CONFIG_LIMIT)
                            .read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{directory / 'config.json'} is damaged: {err}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{directory / 'config.json'} does not hold a JSON object")
    cfg = gpt2_config(values)
    check_size(directory, cfg)
    tokenizer = gpt2_tokenizer(directory)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
                              f"only {cfg.vocab_size}; the directory is inconsistent")
    return cfg, tokenizer


def check_size(directory: Path, cfg: ModelConfig) -> None:
    """Refuse, before allocating anything, a model that this machine cannot hold: its weights
    (4 bytes a parameter) and the weights file read beside them."""
    params = GPT.count_params(cfg)  # counted, nothing built
    weights = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    need = 4 * params + (weights.stat().st_size if weights is not None else 0)
    memory = physical_memory()
    if params > MAX_PARAMS or (memory is not None and need > memory):
        raise CheckpointError(f"{directory / 'config.json'} describes a model of {params:,} "
                              f"parameters, which needs about {need / 2**30:,.1f} GiB to load, "
                              f"more than this machine has ({(memory or 0) / 2**30:,.1f} GiB) or "
                              f"minigpt loads ({MAX_PARAMS:,} parameters); the sizes in it are "
                              f"wrong or the model is too large here")


def load_gpt2(directory: str | Path, device="cpu") -> tuple[GPT, Tokenizer]:
    """A Hugging Face GPT-2 directory as (minigpt GPT, tokenizer)."""
    cfg, tokenizer = gpt2_description(directory)
    directory = Path(directory)
    weights = read_weights(directory, cfg)
    model = GPT(cfg)
    try:
        model.load_state_dict(minigpt_state_dict(weights, cfg))
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"the GPT-2 weights do not fit config.json: {detail}") from None
    return model.to(device).eval(), tokenizer


def hub_directory(name: str) -> Path:
    """The local GPT-2 directory of a model of the Hugging Face hub by name ("gpt2",
    "openai-community/gpt2-medium"), downloaded with huggingface_hub where it is installed and
    online."""
    what = f"{name} is no checkpoint, run or model directory here"
    how = (f"pass a run directory, a .pt file, or a GPT-2 directory downloaded where you are "
           f"online (huggingface-cli download {name} config.json model.safetensors vocab.json "
           f"merges.txt --local-dir DIR)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{what}, and fetching it from the Hugging Face hub needs "
                              f"huggingface_hub (pip install -e \".[hf]\"); {how}") from None
    try:
        path = snapshot_download(name, allow_patterns=["config.json", "model.safetensors",
                                                       "vocab.json", "merges.txt"])
    except Exception as err:  # offline, unknown name, no permission: all end the same way
        raise CheckpointError(f"{what}, and the Hugging Face hub did not provide it "
                              f"({type(err).__name__}); {how}") from None
    return Path(path)


# ----------------------------------------------------------------------------- export

def check_exportable(cfg: ModelConfig, tokenizer: Tokenizer) -> None:
    """Refuse, naming it, what a GPT-2 directory cannot express."""
    problems = [what for what, bad in (
        (f"{cfg.pos_encoding} positions (GPT-2 learns its position table)",
         cfg.pos_encoding != "learned"),
        ("post-norm blocks (GPT-2 normalises before each sublayer)", cfg.norm_placement != "pre"),
        ("an untied output head", not cfg.tie_weights),
        ("no biases", not cfg.bias),
        ("a ReLU-squared feed-forward (GPT-2's is GELU)", cfg.activation == "relu2"),
        ("normalised queries and keys (qk_norm)", cfg.qk_norm),
        ("soft-capped logits (logit_softcap)", cfg.logit_softcap > 0),
        ("short convolutions before the sublayers (short_conv)", cfg.short_conv > 0),
        ("an ablation switch (residual, layer_norm, ffn or causal off)",
         not (cfg.residual and cfg.layer_norm and cfg.ffn and cfg.causal)),
        (f"a {tokenizer.kind} tokenizer (GPT-2's is byte-level BPE)", tokenizer.kind != "bpe"),
        ("a BPE tokenizer from an earlier minigpt, which splits text otherwise than GPT-2",
         tokenizer.kind == "bpe" and getattr(tokenizer, "split", None) != "gpt2"),
    ) if bad]
    if problems:
        raise CheckpointError(f"GPT-2 cannot express this model: {'; '.join(problems)}")


def hf_state_dict(model: GPT, copy: bool = True) -> dict[str, torch.Tensor]:
    """minigpt tensor names and layouts -> Hugging Face GPT-2's (the tied head stored once); with
    copy=False, only the names and shapes are right (for a model on the meta device)."""
    theirs_by_ours = {ours: theirs for theirs, ours in BLOCK_NAMES.items()}
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "head.weight":
            continue  # tied to wte: transformers ties it again on loading
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            part, kind = rest.rsplit(".", 1)
            theirs = theirs_by_ours[part]
            if theirs in CONV1D and kind == "weight":
                tensor = tensor.t()
            name = f"h.{i}.{theirs}.{kind}"
        else:
            name = {"token_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight",
                    "final_norm.weight": "ln_f.weight", "final_norm.bias": "ln_f.bias"}[name]
        state[f"transformer.{name}"] = tensor.detach().float().contiguous().cpu() if copy else tensor
    return state


def hf_config(cfg: ModelConfig, tokenizer: BPETokenizer) -> dict:
    end = tokenizer.special.get("<|endoftext|>", cfg.vocab_size - 1)
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length,
            "n_embd": cfg.embed_dim, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_inner": cfg.ffn_mult * cfg.embed_dim,
            "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "tie_word_embeddings": True,
            "bos_token_id": end, "eos_token_id": end}


def export_gpt2(model: GPT, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write model and tokenizer as a Hugging Face GPT-2 directory that transformers loads with
    GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained, no custom code."""
    check_exportable(model.config, tokenizer)
    try:
        from safetensors.torch import save
    except ImportError:
        raise CheckpointError("writing model.safetensors needs the safetensors package: "
                              "pip install -e \".[hf]\"") from None
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir} already exists and is not an empty directory; choose a "
                              f"new output directory")
    stand_in = bytes_to_unicode()
    specials = set(tokenizer.special.values())
    vocab = {(t.decode("utf-8") if i in specials else "".join(stand_in[b] for b in t)): i
             for i, t in enumerate(tokenizer.token_bytes)}
    spell = ["".join(stand_in[b] for b in t) for t in tokenizer.token_bytes]
    merges = "#version: 0.2\n" + "".join(f"{spell[a]} {spell[b]}\n" for a, b in tokenizer.merges)
    files = {
        "config.json": json.dumps(hf_config(model.config, tokenizer), indent=2).encode(),
        "model.safetensors": save(hf_state_dict(model), metadata={"format": "pt"}),
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode("utf-8"),
        "merges.txt": merges.encode("utf-8"),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "GPT2Tokenizer",
                                             "model_max_length": model.config.context_length,
                                             "add_prefix_space": False}).encode(),
    }
    try:
        write_directory(out_dir, files)
    except OSError as err:
        raise CheckpointError(f"cannot write {out_dir}: {err.strerror or err}; choose a writable "
                              f"output directory (nothing was written)") from None
    return out_dir

