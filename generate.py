"""Sample text from a trained checkpoint, streamed as it is produced.

    python generate.py --prompt "the cat sat on"
    python generate.py --checkpoint runs/NAME --prompt "ROMEO:" --temperature 0.8 --top-k 50
    python generate.py --prompt "the dog" --num-samples 4 --seed 1 --stop "."
"""

import argparse
import sys

import torch

from minigpt.checkpoint import (
    gpt2_source,
    latest_run,
    load,
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint,
)
from minigpt.cli import ArgumentParser
from minigpt.errors import InputError
from minigpt.files import atomic_write
from minigpt.generation import check_generation_args, encode_prompt, generate_text
from minigpt.heatmap import layers_image
from minigpt.inspection import inspect_prompt
from minigpt.runtime import resolve_device


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(description="Sample text from a trained minigpt checkpoint.")
    parser.add_argument("--prompt", default=None,
                        help="text to continue (default: none, i.e. start as at a new line)")
    parser.add_argument("--prompt-file", help="read the prompt from this UTF-8 file instead")
    parser.add_argument("--checkpoint", default=None,
                        help="a .pt file or a run directory (default: the latest run in runs/)")
    parser.add_argument("--max-new-tokens", type=int, default=200,
                        help="tokens to generate per sample (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="softmax temperature; 0 = greedy argmax (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="sample from the k most likely tokens only; 0 = all (default: 0)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="sample from the smallest set with this much probability (nucleus); "
                             "1 = all (default: 1.0)")
    parser.add_argument("--num-samples", type=int, default=1,
                        help="independent samples, generated as one batch (default: 1)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed; the same seed, checkpoint and flags give the same text "
                             "(default: random)")
    parser.add_argument("--stop", nargs="+", default=[], metavar="TEXT",
                        help="end a sample at the first of these strings, not printed")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument("--drop-unknown", action="store_true",
                        help="drop prompt characters a char-level model never saw, not fail")
    parser.add_argument("--save-attention", metavar="PNG",
                        help="also write the prompt's attention heatmaps (a row of heads per layer)")
    parser.add_argument("--no-kv-cache", action="store_true",
                        help="recompute the whole window every step (slow; for comparison)")
    parser.add_argument("--past-context", choices=["exact", "fast"], default="exact",
                        help="past the model's context: exact recomputes the window of the last "
                             "context_length tokens every step; fast keeps a cache (rolling for "
                             "rope, half-window re-prefill otherwise), which is quicker but not "
                             "the same (default: exact)")
    return parser.parse_args(argv)


MAX_PROMPT_BYTES = 16 * 2**20  # a prompt keeps only its last context_length tokens anyway


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt text: --prompt, or the contents of --prompt-file (at most 16 MiB, so that a
    device such as /dev/zero is refused instead of read for ever)."""
    if not args.prompt_file:
        return args.prompt or ""
    if args.prompt is not None:
        raise InputError("give --prompt or --prompt-file, not both")
    try:
        with open(args.prompt_file, "rb") as f:
            data = f.read(MAX_PROMPT_BYTES + 1)
    except (OSError, ValueError) as err:  # ValueError: a name no file can have (a NUL)
        raise InputError(f"prompt file {args.prompt_file} cannot be read: "
                         f"{getattr(err, 'strerror', None) or err}") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise InputError(f"prompt file {args.prompt_file} holds more than 16 MiB; the model reads "
                         f"only the end of a prompt, so pass a file with just that")
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as text mode
    except UnicodeDecodeError:
        raise InputError(f"prompt file {args.prompt_file} is not UTF-8 text") from None


def save_attention(path: str, seen) -> None:
    """Every layer's attention over the prompt as one PNG: a row of heads per layer."""
    image = layers_image(seen.attentions, seen.tokens)
    try:
        atomic_write(path, lambda f: image.save(f, format="PNG"))  # a full disk: DiskFullError
    except (OSError, ValueError) as err:  # ValueError: a name no file can have (a NUL)
        raise InputError(f"cannot write {path}: {getattr(err, 'strerror', None) or err}") from None
    print(f"wrote {path}: {len(seen.attentions)} layers x {seen.attentions[0].size(0)} heads over "
          f"the tokens {seen.tokens}", file=sys.stderr)


def load_model(source, device) -> tuple:
    """(model, tokenizer, what was loaded): a run directory's or file's checkpoint with its step,
    or a GPT-2 directory or hub name, so a sample never silently comes from another model."""
    if gpt2_source(source) is not None:
        model, tokenizer = load(source, device)
        return model, tokenizer, f"{source} (GPT-2)"
    path = resolve_checkpoint(source)
    state = load_checkpoint(path)
    return (*model_from_checkpoint(state, device), f"{path} (step {state['step']})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    top_k, top_p = args.top_k or None, args.top_p
    check_generation_args(args.max_new_tokens, args.temperature, top_k, top_p, args.num_samples,
                          args.seed, args.stop)
    prompt = read_prompt(args)
    device = resolve_device(args.device)
    model, tokenizer, loaded = load_model(args.checkpoint or latest_run("runs"), device)

    ids = encode_prompt(tokenizer, prompt, model.config.context_length, args.drop_unknown)
    head = tokenizer.decode(ids) if prompt else ""  # the prompt as the model sees it
    if args.save_attention:
        save_attention(args.save_attention, inspect_prompt(model, tokenizer, ids))
    print(f"sampling from {loaded} on {device}", file=sys.stderr)  # all checks passed
    with torch.inference_mode():
        pieces = generate_text(model, tokenizer, ids, args.max_new_tokens, args.temperature,
                               top_k, top_p, args.num_samples, args.seed, args.stop,
                               args.drop_unknown, use_cache=not args.no_kv_cache,
                               past_context=args.past_context)
        if args.num_samples == 1:
            print(head, end="", flush=True)
            for piece in pieces:
                print(piece.text, end="", flush=True)
            print()
        else:
            texts = [""] * args.num_samples
            for piece in pieces:
                texts[piece.index] += piece.text
            for i, text in enumerate(texts):
                print(f"--- sample {i + 1} ---\n{head}{text}")
    return 0


if __name__ == "__main__":
    from minigpt.cli import run_cli

    run_cli(main, whole_process=True)
