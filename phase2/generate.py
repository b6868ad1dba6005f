"""Text generation from a phase2.train checkpoint, streamed token by token.

    python -m phase2.generate CKPT --prompt "The history of" --max-new-tokens 200 --top-p 0.9
    python -m phase2.generate CKPT --prompt "A" --prompt "B" --greedy        # a batch of prompts

Phase 2 reads the prompt once in parallel form and then takes each new token in O(1): the model's recurrent
state (fast weights, gates and BK-Core carry) goes from one call to the next. The Transformer baseline has no
such state and re-reads its whole window for every token. Sampling: greedy, or temperature with top-k and
top-p (nucleus) filtering, from a seeded generator.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from common.config import positive_int, run_guarded
from common.runtime import pick_device
from phase2.inference import LanguageModel, load_language_model


@dataclass
class Sampling:
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    greedy: bool = False
    seed: int = 0

    def validate(self, prefix: str = "") -> Sampling:
        """Raises ValueError naming the setting as the caller spells it: `prefix` "--" (the CLI), "sample."..."""
        if self.max_new_tokens < 1:
            raise ValueError(f"{prefix}max_new_tokens={self.max_new_tokens} must be >= 1")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            greedy = " (--greedy decodes by argmax)" if prefix == "--" else ""
            raise ValueError(f"{prefix}temperature={self.temperature} must be a finite number > 0{greedy}")
        if self.top_k < 0:
            raise ValueError(f"{prefix}top_k={self.top_k} must be >= 0 (0 turns it off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{prefix}top_p={self.top_p} must be in (0, 1]")
        if not 0 <= self.seed < 2**63:  # torch.Generator's range
            raise ValueError(f"{prefix}seed={self.seed} must be 0 to 2^63 - 1")
        return self


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) logits with everything outside the top-k and outside the top-p mass set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
        drop = mass_before >= top_p  # keeps the smallest prefix whose mass reaches top_p (at least one token)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> torch.Tensor:
    """(B, V) last-position logits -> (B,) token ids."""
    if s.greedy:
        return logits.argmax(-1)
    logits = logits.float()
    # shifted so the top logit is 0 before dividing: a tiny temperature then gives -inf, never inf - inf = nan
    scaled = (logits - logits.amax(-1, keepdim=True)) / s.temperature
    probs = filter_logits(scaled, s.top_k, s.top_p).softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


@torch.no_grad()
def generate_ids(lm: LanguageModel, prompt_ids: torch.Tensor, s: Sampling) -> Iterator[torch.Tensor]:
    """Yield (B,) new token ids, one step at a time, for prompts of equal length (B, T0)."""
    s.validate()
    generator = torch.Generator().manual_seed(s.seed)
    ids = prompt_ids.to(lm.device)
    room = lm.max_positions - ids.shape[1]
    if lm.streams and room < 1:
        raise ValueError(f"the prompt has {ids.shape[1]} tokens but the model holds {lm.max_positions} positions")
    if lm.streams:
        logits, state = lm.model(ids, return_state=True)
        for produced in range(s.max_new_tokens):
            token = next_tokens(logits[:, -1], s, generator)
            yield token
            if produced + 1 == s.max_new_tokens:
                return
            if state.pos >= lm.max_positions:
                print(f"\n[stopped: the stream reached n_seq={lm.max_positions} positions]", file=sys.stderr)
                return
            logits, state = lm.model(token[:, None], state=state, return_state=True)
    else:  # no recurrent state: re-read the last max_positions tokens for every new one
        for _ in range(s.max_new_tokens):
            logits = lm.model(ids[:, -lm.max_positions :])
            token = next_tokens(logits[:, -1], s, generator)
            yield token
            ids = torch.cat([ids, token[:, None]], 1)


def generate(lm: LanguageModel, prompts: list[str], s: Sampling) -> Iterator[tuple[int, str]]:
    """Yield (prompt index, newly decoded text) as tokens arrive. Prompts of equal token length go as one
    batch; others one after another (a batch shares one stream position)."""
    encoded = [lm.tokenizer.encode(p) for p in prompts]
    if any(not e for e in encoded):
        raise ValueError("every prompt needs at least one token (an empty prompt was given)")
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(encoded):
        groups.setdefault(len(e), []).append(i)
    for members in groups.values():
        batch = torch.tensor([encoded[i] for i in members])
        produced: list[list[int]] = [[] for _ in members]
        shown = [""] * len(members)
        for tokens in generate_ids(lm, batch, s):
            for j, t in enumerate(tokens.tolist()):
                produced[j].append(t)
                text = lm.tokenizer.decode(produced[j])
                # a byte-level tokenizer can stop in the middle of a UTF-8 character: wait for the rest
                if not text.endswith("\ufffd") and len(text) > len(shown[j]):
                    yield members[j], text[len(shown[j]) :]
                    shown[j] = text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phase2.generate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)

    def run() -> None:
        s = Sampling(a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.greedy, a.seed).validate(prefix="--")
        for prompt in a.prompt:
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 (Python keeps them as surrogates)
                raise ValueError(f"--prompt {prompt!r} is not UTF-8 text") from None
        lm = load_language_model(a.checkpoint, pick_device(a.device))
        if len(a.prompt) == 1:  # one prompt: its continuation streams to stdout as it is produced
            print(a.prompt[0], end="", flush=True)
            for _, piece in generate(lm, a.prompt, s):
                print(piece, end="", flush=True)
            print()
        else:
            texts = [""] * len(a.prompt)
            for i, piece in generate(lm, a.prompt, s):
                texts[i] += piece
            for i, (prompt, text) in enumerate(zip(a.prompt, texts)):
                print(f"[{i}] {prompt}{text}")

    try:
        return run_guarded(run)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 0


if __name__ == "__main__":
    sys.exit(main())
