"""Figure 8: MMLU scoring speed. ``loraplus evaluate --benchmark mmlu``'s scorer (``mmlu.score_mmlu``: each
question's tokens computed once and shared by its four answers through the KV cache, logits only where answers are
scored, batches of 16) against the straightforward loop of one forward per answer choice
(``mmlu.score_mmlu_reference``), on the same seeded questions, zero-shot, smollm2-135m. Both give the same
predictions (checked here, and against log-likelihoods computed by hand in the tests). Target: questions per second
>= 2.5x the loop's. Also reported: the minutes the full 14,042-question test set takes at the scorer's rate.
"""

from __future__ import annotations

from benchmarks.common import Context, interleaved, paired_ratio, ratio_row, skipped_row

NAME = "mmlu_speed"
TITLE = "8 MMLU scoring"
FULL_SET = 14042


def config(quick: bool) -> dict:
    if quick:
        return {"model": "tiny-llama", "questions": 4, "repeats": 1}
    return {"model": "smollm2-135m", "questions": 40, "repeats": 3}


def _tiny_model_and_tokenizer(questions):
    """A 2-layer random Llama and a word-level tokenizer over the questions' words (quick mode: no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from benchmarks.common import tiny_llama

    words = sorted({w for q in questions for text in (q.question, *q.choices) for w in text.split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "</s>", *words[:990], "A", "B", "C", "D", ":"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    return tiny_llama().eval(), tokenizer


def run(ctx: Context, cfg: dict) -> dict:
    from loraplus.mmlu import load_mmlu, score_mmlu, score_mmlu_reference, select_questions

    try:
        questions = select_questions(load_mmlu(), limit=cfg["questions"], seed=0)
    except (ModuleNotFoundError, OSError, ValueError) as err:
        return {"rows": [skipped_row("MMLU questions/s, scorer / one forward per choice", f"no MMLU file: {err}")]}
    if cfg["model"] == "tiny-llama":
        model, tokenizer = _tiny_model_and_tokenizer(questions)
    else:
        from benchmarks.common import smollm2_path
        from loraplus.tasks.causal_lm import load_causal_lm

        path, why = smollm2_path()
        if path is None:
            return {"rows": [skipped_row("MMLU questions/s, scorer / one forward per choice", why)]}
        tokenizer, model = load_causal_lm(path)
        model.eval()
    results = {}

    def scorer():
        results["scorer"] = score_mmlu(model, tokenizer, questions)

    def loop():
        results["loop"] = score_mmlu_reference(model, tokenizer, questions)

    samples = interleaved({"scorer": scorer, "loop": loop}, repeats=cfg["repeats"])
    pr = paired_ratio(samples, "loop", "scorer")  # loop time / scorer time = scorer's questions/s over the loop's
    same = results["scorer"]["cloze"]["micro"] == results["loop"]["cloze"]["micro"]
    per_question = min(s["wall_s"] for s in samples["scorer"]) / len(questions)
    rows = [ratio_row(f"MMLU questions/s, scorer / one forward per choice ({cfg['model']}, {len(questions)} q.)", pr,
                      (">=", 2.5), value=f"full set at the scorer's rate: {FULL_SET * per_question / 60:.0f} min",
                      note="same cloze accuracy" if same else "cloze accuracies differ")]  # fmt: skip
    return {"rows": rows, "data": {"samples": samples, "seconds_per_question": per_question, "same_accuracy": same}}
