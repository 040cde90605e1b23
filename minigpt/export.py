"""Export a trained run as a Hugging Face GPT-2 directory, which transformers loads as it is.

    python -m minigpt.export runs/gpt2_shaped-20261127-101500 out/my-gpt2
    python -c "import transformers as t; print(t.pipeline('text-generation', 'out/my-gpt2')('the cat'))"

The run must be GPT-2 shaped (configs/gpt2_shaped.toml): learned positions, pre-norm, biases, a
tied head and a byte-level BPE tokenizer; anything else is refused with one line naming it.
Needs the safetensors package (pip install -e ".[hf]").
"""

import sys

from minigpt.checkpoint import load
from minigpt.cli import ArgumentParser, run_cli
from minigpt.gpt2 import export_gpt2


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m minigpt.export",
                            description="Write a GPT-2 shaped minigpt run as a Hugging Face GPT-2 "
                                        "directory (config.json, model.safetensors, vocab.json, "
                                        "merges.txt).")
    parser.add_argument("run", help="a run directory (its best.pt) or a .pt checkpoint")
    parser.add_argument("out_dir", help="the directory to write (new, or empty)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    model, tokenizer = load(args.run)
    out = export_gpt2(model, tokenizer, args.out_dir)
    print(f"wrote {out}: a GPT-2 with {model.num_params():,} parameters; load it with "
          f"transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})")
    return 0


if __name__ == "__main__":
    run_cli(main, whole_process=True)
