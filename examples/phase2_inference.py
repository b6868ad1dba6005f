"""Phase 2 inference: greedy, top-k and top-p sampling, a batch, streaming, perplexity.

python examples/phase2_inference.py CHECKPOINT [--text notes.txt]
"""

import argparse

from phase2.evaluate import evaluate_text, text_documents
from phase2.generate import Sampling, generate
from phase2.inference import load_language_model

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("checkpoint")
p.add_argument("--text", default="builtin", help="text for the perplexity (default: built-in corpus)")
args = p.parse_args()
lm = load_language_model(args.checkpoint)


def complete(prompts, sampling):
    texts = [""] * len(prompts)
    for i, piece in generate(lm, prompts, sampling):
        texts[i] += piece
    return texts


print("greedy:", repr(complete(["The city"], Sampling(max_new_tokens=30, greedy=True))[0]))
print("top-k 20:", repr(complete(["The city"], Sampling(max_new_tokens=30, top_k=20, seed=1))[0]))
print("top-p 0.9, T=0.8:", repr(complete(["The city"], Sampling(30, temperature=0.8, top_p=0.9, seed=2))[0]))
for prompt, text in zip(["In 1900", "The river"], complete(["In 1900", "The river"], Sampling(20, greedy=True))):
    print(f"batch: {prompt!r} -> {text!r}")

print("streaming: The city", end="", flush=True)
for _, piece in generate(lm, ["The city"], Sampling(max_new_tokens=30, greedy=True)):
    print(piece, end="", flush=True)  # each piece arrives as soon as its token is produced
print()

result = evaluate_text(lm, text_documents(args.text, "val" if args.text == "builtin" else "all")[:20])
print(f"perplexity {result['perplexity']:.2f}, {result['bits_per_byte']:.3f} bits/byte")
