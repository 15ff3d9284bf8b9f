"""Text generation from a causal LM with its chat template: what ``loraplus generate`` and the instruction-tuning
task's end-of-run evaluation share.

A prompt is a list of chat turns (``[{"role": "user", "content": ...}]``); it is rendered with the tokenizer's
chat template and ``add_generation_prompt=True``, so the model continues as the assistant. Greedy decoding by
default (``do_sample=False``); with ``temperature > 0`` it samples (``top_p``, ``seed``). Scores of a generation
against a reference: exact match after stripping whitespace, and ROUGE-L F1 (Lin 2004) from ``rouge-score``
(Google's reimplementation of ROUGE-1.5.5, with its default tokenizer: lower-cased, alphanumeric tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GenerationOptions", "generate", "rouge_l", "score_generations"]


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options.

    Attributes:
        max_new_tokens: tokens generated at most (> 0, default 64).
        temperature: 0 (default) = greedy; > 0 samples at that temperature.
        top_p: nucleus sampling mass in (0, 1] (default 1.0), used only when sampling.
        seed: seed of the sampling (default 0).

    Raises:
        ValueError: a value out of range, naming it.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")


def generate(model, tokenizer, prompt: list[dict], options: GenerationOptions = GenerationOptions()) -> str:
    """The model's continuation of ``prompt`` (chat turns) as text, special tokens removed.

    Raises:
        ValueError: the tokenizer has no chat template, or the template fails to render ``prompt``.
    """
    import torch

    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: give one (--chat-template FILE.jinja)")
    try:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt")  # fmt: skip
    except Exception as err:  # jinja2's TemplateError and the template's own raise_exception(): bad input
        if type(err).__module__.startswith("jinja2") or "TemplateError" in type(err).__name__:
            raise ValueError(f"the chat template failed to render the prompt: {err}") from None
        raise
    device = next(model.parameters()).device
    ids = {k: v.to(device) for k, v in ids.items()}
    sampling = options.temperature > 0
    kwargs = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p} if sampling else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}  # fmt: skip
    if sampling:
        torch.manual_seed(options.seed)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=options.max_new_tokens, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, **kwargs)  # fmt: skip
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of ``prediction`` against ``reference`` (``rouge-score``'s ``rougeL``), in [0, 1]."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure)


def score_generations(rows: list[dict]) -> dict[str, float]:
    """Mean ``exact_match`` (stripped strings equal) and ``rougeL`` over rows with ``output`` and ``reference``."""
    if not rows:
        return {}
    exact = [float(r["output"].strip() == r["reference"].strip()) for r in rows]
    rouge = [rouge_l(r["output"], r["reference"]) for r in rows]
    return {"exact_match": sum(exact) / len(rows), "rougeL": sum(rouge) / len(rows)}
