"""What differs per model family: the tokens that end a response.

The tokenizer's own EOS ids always stop generation; a family adds the end-of-turn tokens its
chat models emit (only those present in the vocabulary count). Any other mlx-lm decoder uses
the generic family.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    stop_tokens: tuple = ()


CHATML = ("<|im_end|>", "<|endoftext|>")
FAMILIES = {
    # Llama 3 chat models end turns with <|eot_id|>; llama-architecture ChatML models (SmolLM2) with <|im_end|>.
    "llama": Family("llama", ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>") + CHATML),
    "qwen2": Family("qwen2", CHATML),
    "phi3": Family("phi3", ("<|end|>", "<|endoftext|>")),
}
GENERIC = Family("generic")


def family_for(model_type: str) -> Family:
    """The family of an mlx-lm `model_type` (GENERIC when it has no quirks of its own)."""
    return FAMILIES.get(model_type, GENERIC)


def stop_token_ids(family: Family, tokenizer) -> frozenset:
    """The tokenizer's EOS ids plus the family's end-of-turn tokens found in its vocabulary."""
    vocab = tokenizer.get_vocab()
    extra = {vocab[t] for t in family.stop_tokens if t in vocab}
    return frozenset(set(tokenizer.eos_token_ids) | extra)
