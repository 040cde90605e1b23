"""minigpt: a small, readable GPT in PyTorch.

    from minigpt import GPT, ModelConfig, CharTokenizer
    model = GPT(ModelConfig(vocab_size=65, embed_dim=128, num_heads=4, num_layers=4))

The deck's names work too: `from minigpt import MiniTransformer, SimpleVocab`.
"""

from minigpt.checkpoint import load
from minigpt.corpus import load_corpus
from minigpt.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InputError,
    MiniGPTError,
    TrainingError,
)
from minigpt.model import GPT, Inspection, KVCache, MiniTransformer, ModelConfig
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
    "GPT", "Inspection", "KVCache", "MiniTransformer", "ModelConfig",
    "BPETokenizer", "CharTokenizer", "SimpleVocab", "Tokenizer", "UnknownCharactersError",
    "WordTokenizer", "tokenizer_from_dict", "train_tokenizer", "load_corpus", "load",
    "MiniGPTError", "CheckpointError", "ConfigError", "DataError", "InputError", "TrainingError",
]
