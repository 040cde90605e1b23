"""The workshop deck's names for minigpt's parts, so the deck's code runs as it is written.

    from minigpt import MiniTransformer, SimpleVocab
    vocab = SimpleVocab(text)
    model = MiniTransformer(vocab_size=len(vocab), embed_dim=64, num_heads=4, num_layers=2)
    generated = model.generate(vocab.encode("the cat"), max_new_tokens=5)

docs/TOUR.md walks the deck slide by slide to the code, tests and views.
"""

import torch

from minigpt.generation import generate
from minigpt.model import GPT, ModelConfig
from minigpt.tokenizer import SimpleVocab


class MiniTransformer(GPT):
    """The deck's MiniTransformer: a GPT with sinusoidal positions and post-norm blocks, built from
    keyword sizes. `MiniTransformer(vocab_size=V, embed_dim=64, num_heads=4, num_layers=2)`."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, num_heads: int = 4,
                 num_layers: int = 2, **options):
        options = {"pos_encoding": "sinusoidal", "norm_placement": "post", **options}
        super().__init__(ModelConfig(vocab_size=vocab_size, embed_dim=embed_dim,
                                     num_heads=num_heads, num_layers=num_layers, **options))

    def generate(self, idx: torch.Tensor | list[int], max_new_tokens: int, **options):
        """The deck's `model.generate`: minigpt.generation.generate, where idx may also be a plain
        list of token ids, and then the ids come back as a list (the prompt, then the new tokens,
        cut before a stop sequence)."""
        if not isinstance(idx, list):
            return generate(self, idx, max_new_tokens, **options)
        batch = torch.tensor([idx], dtype=torch.long, device=self.token_emb.weight.device)
        return generate(self, batch, max_new_tokens, **options)[0].tolist()


__all__ = ["MiniTransformer", "SimpleVocab"]
