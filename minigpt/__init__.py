"""minigpt: a small, readable GPT in PyTorch.

    from minigpt import GPT, ModelConfig, CharTokenizer
    model = GPT(ModelConfig(vocab_size=65, embed_dim=128, num_heads=4, num_layers=4))
    ids = generate(model, torch.tensor([[0]]), max_new_tokens=20)
    with capture(model) as seen:        # every hook point's activation (minigpt.hooks)
        model(ids)

The deck's names work too: `from minigpt import MiniTransformer, SimpleVocab`.
"""

from minigpt.checkpoint import load
from minigpt.corpus import load_corpus
from minigpt.deck import MiniTransformer
from minigpt.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    MiniGPTError,
    TrainingError,
)
from minigpt.generation import KVCache, generate, generate_text
from minigpt.hooks import capture, edit
from minigpt.model import GPT, ModelConfig
from minigpt.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    SimpleVocab,
    Tokenizer,
    UnknownCharactersError,
    WordTokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

__all__ = [
    "GPT", "KVCache", "MiniTransformer", "ModelConfig", "generate", "generate_text",
    "capture", "edit",
    "BPETokenizer", "CharTokenizer", "SimpleVocab", "Tokenizer", "UnknownCharactersError",
    "WordTokenizer", "tokenizer_from_dict", "train_tokenizer", "load_corpus", "load",
    "MiniGPTError", "CheckpointError", "ConfigError", "DataError", "InputError", "TrainingError",
]
