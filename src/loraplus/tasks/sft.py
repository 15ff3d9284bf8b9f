"""Instruction tuning (supervised fine-tuning) of a causal LM on instruction or chat data, with TRL's ``SFTTrainer``.

Data (``loraplus.instruct_data``): prompt/completion, alpaca, messages or ShareGPT files become TRL's
conversational forms, so every example is rendered by one chat template:

- prompt/completion and alpaca -> ``{"prompt": [user turn], "completion": [assistant turn]}``: TRL renders the prompt
  with ``add_generation_prompt=True`` and computes the loss on the completion tokens only (its
  ``completion_only_loss``);
- messages and ShareGPT -> ``{"messages": [...]}``: the loss covers every assistant turn (TRL's
  ``assistant_only_loss``, which needs a template with ``{% generation %}`` markers).

``--train-on-prompt`` puts the loss on every token instead. The template is ``--chat-template FILE.jinja`` if given,
else the tokenizer's own with ``{% generation %}`` markers added when it is a template this module knows
(SmolLM2-Instruct's ChatML), else the tokenizer's own when it already has markers, else ``PLAIN_TEMPLATE`` (with a
warning). Formatting, masking, truncation and packing are TRL's; this module only chooses the template, drops
examples that ``max_length`` leaves without an answer token (counted; an error when none is left), and counts the
examples that will be cut. ``--packing``: TRL's best-fit-decreasing packing, padding-free with per-example
position ids (packed examples never attend to each other; tested).

Metrics: the Trainer's completion loss on validation and test, ``perplexity`` = exp(loss) (the loss is the mean over
eval batches of each batch's per-token mean), and after training, greedy generations for ``eval_generate`` test
examples with exact match and ROUGE-L, written to ``generations.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

from ..generation import GenerationOptions, generate, score_generations
from ..instruct_data import load_instruction_data
from ..io import atomic_write_text
from .base import BaseTask, TrainerParts, limit_samples
from .causal_lm import load_causal_lm

__all__ = ["PLAIN_TEMPLATE", "SFTTask", "choose_chat_template", "length_stats"]

logger = logging.getLogger("loraplus")

# For models without a chat template: an Alpaca-like layout, assistant turns marked for the loss.
PLAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{%- else %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n\\n' }}"
    "{%- endif %}{%- endfor %}"
)
# SmolLM2-Instruct's ChatML template as shipped, and the same with the assistant turn (content + <|im_end|>) marked.
_SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SMOLLM2_TRAINING = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TRAINING_TEMPLATES = {_SMOLLM2: _SMOLLM2_TRAINING}  # template as shipped -> the same with generation markers


def choose_chat_template(tokenizer, path: str | None) -> tuple[str, str]:
    """``(template, where it came from)`` for training; see the module docstring for the order.

    Raises:
        FileNotFoundError, ValueError: ``path`` missing or unreadable, or empty.
    """
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"chat_template {path!r} is not a file")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read chat_template {path!r}: {err}") from None
        if not text.strip():
            raise ValueError(f"chat_template {path!r} is empty")
        return text, f"file {path}"
    own = getattr(tokenizer, "chat_template", None)
    if own in TRAINING_TEMPLATES:
        return TRAINING_TEMPLATES[own], "the model's own, with generation markers added"
    if own and "{% generation %}" in own.replace("{%- generation %}", "{% generation %}"):
        return own, "the model's own"
    if own:
        return own, "the model's own (no generation markers: messages data needs --chat-template or --train-on-prompt)"
    warnings.warn("the tokenizer has no chat template: using the plain '### Instruction / ### Response' template "
                  "(give one with --chat-template FILE.jinja)", stacklevel=2)  # fmt: skip
    return PLAIN_TEMPLATE, "plain (the model has none)"


def _conversational(example: dict) -> dict:
    if "messages" in example:
        return {"messages": example["messages"]}
    return {"prompt": [{"role": "user", "content": example["prompt"]}],
            "completion": [{"role": "assistant", "content": example["completion"]}]}  # fmt: skip


def _prompt_and_full(tokenizer, example: dict) -> tuple[int, int]:
    """Token counts of the prompt (up to the first assistant turn, with the generation prompt) and of the example."""
    if "messages" in example:
        turns = example["messages"]
        first = next(i for i, t in enumerate(turns) if t["role"] == "assistant")
        prompt, full = turns[:first], turns
    else:
        prompt, full = example["prompt"], example["prompt"] + example["completion"]
    def count(turns, **kwargs) -> int:
        return len(tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, **kwargs)["input_ids"])

    return count(prompt, add_generation_prompt=True), count(full)


def length_stats(split, tokenizer, max_length: int, name: str):
    """Drop the examples whose prompt leaves no answer token within ``max_length``; count the ones TRL will cut.

    Returns ``(kept split, {"dropped_no_answer_room", "truncated", "tokens_cut"})``.

    Raises:
        ValueError: every example of ``split`` is dropped, or the template fails on an example (names its index).
    """
    keep, truncated, cut = [], 0, 0
    for i, example in enumerate(split):
        try:
            prompt, full = _prompt_and_full(tokenizer, example)
        except Exception as err:  # jinja2 errors and the template's raise_exception(): name the example
            if "jinja" in type(err).__module__ or "TemplateError" in type(err).__name__:
                raise ValueError(f"the chat template failed on example {i} of the {name!r} split: {err}") from None
            raise
        if prompt >= max_length:
            continue
        keep.append(i)
        truncated += full > max_length
        cut += max(0, full - max_length)
    if not keep:
        raise ValueError(f"max_length={max_length} leaves no answer token in any example of the {name!r} split: "
                         "every prompt fills it; raise --max-length")  # fmt: skip
    stats = {"dropped_no_answer_room": len(split) - len(keep), "truncated": truncated, "tokens_cut": cut}
    return split.select(keep), stats


class SFTTask(BaseTask):
    """``--task sft``: instruction tuning on TRL's ``SFTTrainer`` (see the module docstring)."""

    name = "sft"
    default_model = "smollm2-135m"
    # lr_A 2e-4: the usual LoRA lr for LLM instruction tuning; 40 steps of 4 at 384 tokens: minutes on 2 cores
    defaults = {"dataset": "natural-instructions", "learning_rate": 2e-4, "batch_size": 4, "eval_batch_size": 8,
                "max_length": 384, "max_steps": 40}
    peft_task_type = "CAUSAL_LM"
    metrics = ("loss", "perplexity")

    def load_data(self, cfg):
        return load_instruction_data(cfg.dataset, format=cfg.format, val_fraction=cfg.val_fraction,
                                     test_fraction=cfg.test_fraction, seed=cfg.seed)  # fmt: skip

    def load_model(self, path: str, labels, *, trust_remote_code: bool = False, hardware=None):
        return load_causal_lm(path, trust_remote_code=trust_remote_code, hardware=hardware)

    def encode(self, data, tokenizer, cfg):
        """Set the training chat template, make the splits conversational, drop and count by length."""
        from .sft_trainer import LoraPlusSFTTrainer, SFTConfig

        template, where = choose_chat_template(tokenizer, cfg.chat_template)
        tokenizer.chat_template = template
        if data.kind == "messages" and "generation %}" not in template and not cfg.train_on_prompt:
            raise ValueError(
                f"{data.source}: messages data needs a chat template with {{% generation %}} markers to put the loss "
                f"on assistant turns only; the template is {where}. Give one with --chat-template FILE.jinja, or "
                "pass --train-on-prompt"
            )
        splits = limit_samples(data.splits, cfg).map(_conversational, remove_columns=_columns(data.kind))
        stats = {}
        for name in list(splits):
            splits[name], stats[name] = length_stats(splits[name], tokenizer, cfg.max_length, name)
        logger.info("format %s; chat template: %s; by length: %s", data.format, where, stats)
        args_extra = {
            "max_length": cfg.max_length, "packing": cfg.packing, "dataset_kwargs": {"skip_prepare_dataset": False},
            "completion_only_loss": not cfg.train_on_prompt,
            "assistant_only_loss": data.kind == "messages" and not cfg.train_on_prompt,
        }  # fmt: skip
        parts = TrainerParts(None, None, trainer_class=LoraPlusSFTTrainer, args_class=SFTConfig,
                             args_extra=args_extra, trainer_kwargs={"processing_class": tokenizer},
                             summary={"format": data.format, "chat_template": where, "lengths": stats})  # fmt: skip
        return splits, parts

    def split_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Adds ``perplexity`` = exp(``loss``) to one split's metrics."""
        return {**metrics, "perplexity": math.exp(metrics["loss"])} if "loss" in metrics else metrics

    def final_metrics(self, trainer, tokenizer, tokenized, cfg, out: Path | None) -> dict:
        """Greedy generations for the first ``cfg.eval_generate`` examples of the test split (and of a
        ``heldout`` split): exact match and ROUGE-L per split; the rows (split, prompt, reference, output) go to
        ``out/generations.jsonl``."""
        if cfg.eval_generate == 0:
            return {}
        options = GenerationOptions(max_new_tokens=cfg.max_new_tokens)
        rows, scores = [], {}
        for name in [n for n in tokenized if n not in ("train", "validation")]:
            split = tokenized[name].select(range(min(cfg.eval_generate, len(tokenized[name]))))
            done = []
            for example in split:
                prompt, reference = _prompt_and_reference(example)
                done.append({"split": name, "prompt": prompt, "reference": reference,
                             "output": generate(trainer.model, tokenizer, prompt, options)})  # fmt: skip
            scores[name] = {"num_examples": len(done), **score_generations(done)}
            rows += done
        if out is not None:
            atomic_write_text(out / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return {"generation": scores}

    def auto_model_class(self) -> type:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def adapter_labels(self, adapter, recorded):
        return None


def _columns(kind: str) -> list[str]:
    return ["messages"] if kind == "messages" else ["prompt", "completion"]


def _prompt_and_reference(example: dict) -> tuple[list[dict], str]:
    """The turns before the last assistant turn, and that turn's text."""
    if "messages" in example:
        turns = example["messages"]
        last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
        return turns[:last], turns[last]["content"]
    return example["prompt"], example["completion"][0]["content"]
