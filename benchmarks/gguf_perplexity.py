"""Are the dequantised GGUF weights sound? The model's perplexity on a few plain English sentences, and on the same
words in reverse order (a model that reads English finds the first far likelier than the second).

    .venv/bin/python benchmarks/gguf_perplexity.py --params profiles/cpu-smollm2-135m.yaml

The model is loaded as the pipeline loads it (tasks.modeling.load_base_model: a GGUF file dequantised to fp32).
"""

from __future__ import annotations

import argparse
import math

import torch

from tasks.config import load_params
from tasks.modeling import load_base_model

SENTENCES = (
    "The cat sat on the mat and looked out of the window at the birds in the garden.",
    "Paris is the capital of France, and it is famous for the Eiffel Tower.",
    "I went to the store yesterday to buy some bread, milk and eggs for breakfast.",
    "The weather was cold and rainy, so we decided to stay at home and watch a movie.",
    "Water boils at one hundred degrees Celsius at sea level.",
)


def perplexity(model, tokenizer, texts) -> tuple[float, int]:
    """exp(mean next-token negative log-likelihood) over the texts, and the number of tokens predicted."""
    nll, n = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        nll += loss * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    return math.exp(nll / n), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="profiles/cpu-smollm2-135m.yaml")
    args = parser.parse_args()
    p = load_params(args.params)
    model, tokenizer = load_base_model(p.model, [], p.seed)
    model.eval()
    plain, n = perplexity(model, tokenizer, SENTENCES)
    reverse, _ = perplexity(model, tokenizer, [" ".join(reversed(s.split())) for s in SENTENCES])
    print(f"{p.model.name_or_path}: perplexity {plain:.2f} on {len(SENTENCES)} plain sentences ({n} tokens)")
    print(f"the same words reversed: {reverse:.2f}")
    print(f"rerun: .venv/bin/python benchmarks/gguf_perplexity.py --params {args.params}")


if __name__ == "__main__":
    main()
