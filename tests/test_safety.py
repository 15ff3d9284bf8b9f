"""Bad input gets a clear error and nothing is lost: refusals up front, LoRA init check, NaN stop, kill + resume.

Cases already covered elsewhere are not repeated here: ``test_train.test_cli_bad_input_is_one_clear_line``
(lr -1, ratio nan, r 0, dropout 1.5, batch size 0, unknown model, missing csv, unknown target, max_length),
``test_data`` (every loader error), ``test_optim`` (optimizer needing ``lr``, Prodigy/D-Adaptation warning, frozen
adapter through ``create_loraplus_optimizer``, ratio < 1 warning).
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from loraplus.cli import main
from loraplus.config import TrainConfig
from loraplus.io import atomic_dir, atomic_write_text
from loraplus.safety import NonFiniteLossError, check_lora_init, last_good_checkpoint
from loraplus.train import run_train
from tiny_models import MLP, TINY_MODELS

SRC = Path(__file__).resolve().parents[1] / "src" / "loraplus"


def base_argv(model, data, out, *extra):
    return ["train", "--model", str(model), "--dataset", str(data), "--output-dir", str(out), "--max-steps", "1",
            "--max-length", "16", "--batch-size", "8", "--target-modules", "query,value", *extra]  # fmt: skip


def error_line(err: str, command: str = "train") -> str:
    """The one error line of a failed command (no traceback, exactly one ``loraplus <command>: error:`` line)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"loraplus {command}: error: "), err
    return lines[0]


def cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    return error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("learning_rate", 0, "learning_rate must be > 0, got 0"),
        ("learning_rate", float("inf"), "learning_rate must be finite, got inf"),
        ("learning_rate", "fast", "learning_rate must be a number, got 'fast'"),
        ("loraplus_lr_ratio", 0, "loraplus_lr_ratio must be > 0, got 0"),
        ("loraplus_lr_ratio", -16, "loraplus_lr_ratio must be > 0, got -16"),
        ("loraplus_lr_ratio", float("-inf"), "loraplus_lr_ratio must be finite, got -inf"),
        ("loraplus_lr_ratio", "sixteen", "loraplus_lr_ratio must be auto or a number, got 'sixteen'"),
        ("r", -4, "r must be a positive integer, got -4"),
        ("lora_alpha", 0, "lora_alpha must be > 0, got 0"),
        ("lora_alpha", float("nan"), "lora_alpha must be finite, got nan"),
        ("lora_dropout", -0.1, "lora_dropout must be >= 0, got -0.1"),
        ("lora_dropout", 1.0, r"lora_dropout must be in \[0, 1\), got 1.0"),
        ("batch_size", -8, "batch_size must be a positive integer, got -8"),
        ("epochs", 0, "epochs must be > 0, got 0"),
        ("epochs", -1, "epochs must be > 0, got -1"),
        ("max_length", 0, "max_length must be a positive integer, got 0"),
        ("lr_scheduler_type", "cosin", "lr_scheduler_type must be one of linear, cosine, .*got 'cosin'"),
        ("output_dir", "", "output_dir must not be empty"),
        ("dataset", " ", "dataset must not be empty"),
        ("threads", 0, "threads must be auto or an integer >= 1, got 0"),
        ("threads", "two", "threads must be auto or an integer, got 'two'"),
        ("threads", True, "threads must be auto or an integer >= 1, got True"),
    ],
)
def test_bad_numbers_and_names_are_refused_naming_the_value(option, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{option: value})


def test_ratio_below_one_warns_once_and_the_run_finishes(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(base_argv(tiny_bert_dir, tiny_csv, out, "--loraplus-lr-ratio", "0.5")) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "loraplus_lr_ratio=0.5 < 1" in line]
    assert warned == ["loraplus train: warning: loraplus_lr_ratio=0.5 < 1 gives lora_B a smaller lr than lora_A; "
                      "LoRA+ uses ratios >> 1 (default 16)"], err  # fmt: skip
    assert (out / "metrics.json").is_file()


# --------------------------------------------------------------------------- model


def test_model_folder_without_weights(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    line = cli_error(capsys, base_argv(folder, tiny_csv, tmp_path / "o"))
    assert re.search(r"model folder '.*no-weights' has no weights \(looked for model\.safetensors", line)


def test_target_module_that_is_not_adaptable_lists_candidates(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    argv = base_argv(tiny_bert_dir, tiny_csv, tmp_path / "o")
    argv[argv.index("query,value")] = "LayerNorm"
    line = cli_error(capsys, argv)
    assert "Target module LayerNorm(" in line and "is not supported" in line
    assert re.search(r"adaptable modules: .*\bdense\b.*\bquery\b.*\bvalue\b", line)


def _trainer(model, tmp_path):
    from transformers import TrainingArguments

    from loraplus.hf import LoraPlusTrainer

    return LoraPlusTrainer(model=model, args=TrainingArguments(str(tmp_path / "t"), report_to="none", use_cpu=True))


def test_no_trainable_parameters_after_injection_through_the_trainer(tmp_path):
    model = TINY_MODELS["peft_linear_plain"].build()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match=r"has no trainable parameters \(requires_grad=True\)"):
        _trainer(model, tmp_path).create_optimizer()


def test_adapter_loaded_frozen_through_the_trainer(tmp_path):
    """A real PEFT save and ``PeftModel.from_pretrained`` without ``is_trainable=True``: frozen, refused clearly."""
    from peft import PeftModel

    TINY_MODELS["peft_linear_plain"].build().save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(MLP(), tmp_path / "adapter")
    with pytest.raises(ValueError, match=r"no trainable parameters.*is_trainable=True"):
        _trainer(loaded, tmp_path).create_optimizer()
    trainable = PeftModel.from_pretrained(MLP(), tmp_path / "adapter", is_trainable=True)
    names = {g["name"] for g in _trainer(trainable, tmp_path).create_optimizer().param_groups}
    assert names == {"lora_A", "lora_B"}


# --------------------------------------------------------------------------- data (through the command)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _rows(labels, word: str = "words") -> str:
    return "text,label\n" + "".join(f"{word} number {i} here,{label}\n" for i, label in enumerate(labels))


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", r"data file '.*empty\.csv' is empty"),
        ("no_label", r"no 'label' column in .*no_label\.csv; columns found: \['text', 'category'\]; choose one"),
        ("one_class", r"one_class\.csv has only one class \('a'\); classification needs at least 2"),
        ("unseen_label", r"labels \['z'\] appear in the 'validation' split of .*folder but not in 'train'"),
        ("latin1", r"latin1\.csv' is not valid UTF-8 \(bad byte near offset \d+\); re-encode it"),
        ("too_small", r"the training split has 3 examples, fewer than batch_size=8"),
    ],
)
def test_bad_data_is_one_clear_line(case, message, tiny_bert_dir, tiny_csv, tmp_path, capsys):
    extra = []
    if case == "empty":
        data = _write(tmp_path / "empty.csv", "")
    elif case == "no_label":
        data = _write(tmp_path / "no_label.csv", _rows("ab" * 10).replace("text,label", "text,category"))
    elif case == "one_class":
        data = _write(tmp_path / "one_class.csv", _rows("a" * 20))
    elif case == "unseen_label":
        data = tmp_path / "folder"
        _write(data / "train.csv", _rows("ab" * 10))
        _write(data / "validation.csv", _rows("abz", word="other"))
    elif case == "latin1":
        data = _write(tmp_path / "latin1.csv", "text,label\ncafé au lait,a\nthé,b\n".encode("latin-1"))
    else:
        data, extra = tiny_csv, ["--max-train-samples", "3"]
    line = cli_error(capsys, base_argv(tiny_bert_dir, data, tmp_path / "o", *extra))
    assert re.search(message, line), line
    assert not (tmp_path / "o" / "checkpoints").exists()


# --------------------------------------------------------------------------- adapters: initialisation


def test_standard_inits_do_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for key in ("peft_linear_plain", "peft_embedding", "peft_dora", "torchtune_style", "loralib_style"):
            assert check_lora_init(TINY_MODELS[key].build()) == [], key


def test_pissa_init_warns_that_both_factors_start_non_zero():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"], init_lora_weights="pissa")
    model = get_peft_model(MLP(), config)
    with pytest.warns(UserWarning, match=r"2 LoRA pair\(s\) start with both factors non-zero .*assumes one factor"):
        found = check_lora_init(model)
    assert found == ["base_model.model.fc1", "base_model.model.fc2"]


def test_trained_or_frozen_pairs_are_not_checked():
    model = TINY_MODELS["peft_linear_plain"].build()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    with pytest.warns(UserWarning, match="2 LoRA pair"):
        check_lora_init(model)
    model.requires_grad_(False)  # an inactive or frozen adapter: its lr is not ours to set
    assert check_lora_init(model) == []


def test_build_trainer_checks_the_fresh_adapters(tiny_bert_dir, tiny_csv, tmp_path, monkeypatch):
    import loraplus.models
    from loraplus.data import load_classification_data
    from loraplus.train import build_trainer

    real = loraplus.models.apply_lora

    def pissa_like(model, options, *args, **kwargs):
        peft_model = real(model, options, *args, **kwargs)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_()
        return peft_model

    monkeypatch.setattr(loraplus.models, "apply_lora", pissa_like)
    cfg = TrainConfig(model=str(tiny_bert_dir), dataset=str(tiny_csv), output_dir=str(tmp_path / "o"), max_length=16,
                      target_modules=("query", "value"))  # fmt: skip
    data = load_classification_data(str(tiny_csv))
    with pytest.warns(UserWarning, match=r"4 LoRA pair\(s\) start with both factors non-zero"):
        build_trainer(cfg, str(tiny_bert_dir), tmp_path / "o", data)


# --------------------------------------------------------------------------- output folder


def test_finished_run_is_refused_without_overwrite_before_anything_loads(tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "metrics.json").write_text('{"test": {}}')
    line = cli_error(capsys, base_argv(tmp_path / "no-model", tmp_path / "no.csv", out))
    assert re.search(r"output_dir '.*done' holds a finished run \(metrics\.json\); pass --overwrite", line)
    assert (out / "metrics.json").read_text() == '{"test": {}}'


@pytest.mark.parametrize("where", ["under_a_file", "under_proc"])
def test_unwritable_output_dir_is_refused_before_anything_loads(where, tmp_path, capsys):
    """Tests run as root, where chmod 0o500 does not stop writes: a folder under a regular file (ENOTDIR) and one
    under /proc (ENOENT: procfs refuses new entries) are unwritable for root too."""
    if where == "under_a_file":
        out = _write(tmp_path / "a-file", "x") / "run"
    else:
        out = Path("/proc") / f"loraplus-test-{os.getpid()}" / "run"
    line = cli_error(capsys, base_argv(tmp_path / "no-model", tmp_path / "no.csv", out))  # neither is read
    assert re.search(r"output_dir '.*run' is not writable \(.+\); choose another --output-dir", line)


# --------------------------------------------------------------------------- nothing lost: atomic writes


def test_atomic_dir_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "adapter"
    _write(target / "adapter_model.safetensors", b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(target) as tmp:
            _write(tmp / "adapter_model.safetensors", b"half")
            raise RuntimeError("disk full")
    assert (target / "adapter_model.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = _write(tmp_path / "metrics.json", '{"old": 1}')

    def broken_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_text(target, '{"new": 2}')
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_last_good_checkpoint_skips_folders_cut_short(tmp_path):
    assert last_good_checkpoint(tmp_path / "missing") is None
    for step, state in ((2, "{}"), (4, "{}"), (6, '{"global_step": '), (8, None), (10, "{}")):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-12").write_text("a file")
    assert last_good_checkpoint(tmp_path).name == "checkpoint-10"
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()
    assert last_good_checkpoint(tmp_path).name == "checkpoint-4"  # 6: truncated JSON, 8: no state


# --------------------------------------------------------------------------- nothing lost: kill, resume


def kill_argv(model, data, out):
    return ["train", "--model", str(model), "--dataset", str(data), "--output-dir", str(out), "--max-steps", "30",
            "--eval-steps", "2", "--logging-steps", "2", "--batch-size", "8", "--max-length", "16",
            "--target-modules", "query,value", "--learning-rate", "2e-3"]  # fmt: skip


def test_sigkill_mid_training_then_resume_finishes(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with (tmp_path / "log.txt").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "loraplus", *kill_argv(tiny_bert_dir, tiny_csv, out)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while last_good_checkpoint(out / "checkpoints") is None:
                assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 240 s"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()
    good = last_good_checkpoint(out / "checkpoints")
    step = int(good.name.split("-")[1])
    assert step < 30, "the run finished before it was killed"
    partial = out / "checkpoints" / f"checkpoint-{step + 2}"  # a kill during the next save leaves this
    if not partial.exists():
        _write(partial / "adapter_model.safetensors", b"\0" * 10)
    assert main(kill_argv(tiny_bert_dir, tiny_csv, out)) == 2  # an unfinished run is never replaced silently
    assert "pass --overwrite to replace it, --resume to continue it" in capsys.readouterr().err
    assert main([*kill_argv(tiny_bert_dir, tiny_csv, out), "--resume"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 30
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    steps = [row["step"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row]
    assert steps == list(range(2, 31, 2))  # the killed run's logs come back from the checkpoint, then the rest


# --------------------------------------------------------------------------- nothing lost: NaN stop


class NanLossAt(TrainerCallback):
    """Makes the classification head output NaN in the training forward of optimizer step ``step``."""

    def __init__(self, step: int):
        self.step, self.armed = step, False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def poison(module, inputs, output):
            return output * float("nan") if self.armed and module.training else None

        model.get_submodule("base_model.model.classifier").register_forward_hook(poison)

    def on_step_begin(self, args, state, control, **kwargs):
        self.armed = state.global_step + 1 == self.step


def finite_checkpoint(folder: Path) -> bool:
    from safetensors.torch import load_file

    tensors = load_file(folder / "adapter_model.safetensors")
    return bool(tensors) and all(torch.isfinite(t).all() for t in tensors.values())


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(model=str(tiny_bert_dir), dataset=str(tiny_csv), output_dir=str(out), max_steps=12,
                      eval_steps=2, logging_steps=5, batch_size=8, max_length=16,
                      target_modules=("query", "value"))  # fmt: skip
    with pytest.raises(NonFiniteLossError) as caught:
        run_train(cfg, callbacks=[NanLossAt(7)])
    assert str(caught.value) == (
        "loss became nan at step 7; the last good checkpoint is checkpoint-6; lower --learning-rate or "
        "--loraplus-lr-ratio and start over with --overwrite (--resume would restore the checkpoint's learning rates)"
    )
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-4", "checkpoint-6"]  # none after step 6
    assert finite_checkpoint(checkpoints / "checkpoint-6")
    assert not (out / "metrics.json").exists() and not (out / "adapter").exists()


def test_callback_also_checks_gradients_and_logged_losses(tmp_path):
    """Where no forward exposes ``outputs.loss`` (a custom ``compute_loss``), gradients and logs still stop the run."""
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from loraplus.safety import NonFiniteLossCallback

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    args, state = SimpleNamespace(output_dir=str(tmp_path)), TrainerState(global_step=2)
    callback = NonFiniteLossCallback()
    model = TINY_MODELS["peft_linear_plain"].build()
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    callback.on_pre_optimizer_step(args, state, TrainerControl(), model=model)  # all finite: nothing happens
    model.base_model.model.fc2.lora_B.default.weight.grad[0, 0] = float("inf")
    control = TrainerControl(should_save=True)
    message = (r"^training diverged at step 3: the gradient of base_model\.model\.fc2\.lora_B\.default\.weight "
               r"became inf; the last good checkpoint is checkpoint-2;")
    with pytest.raises(NonFiniteLossError, match=message):
        callback.on_pre_optimizer_step(args, state, control, model=model)
    assert control.should_save is False and control.should_training_stop is True
    callback.on_log(args, state, TrainerControl(), logs={"loss": 0.7, "eval_loss": float("nan")})  # train loss only
    logged = r"^loss became nan at step 2; the last good checkpoint is checkpoint-2;"
    with pytest.raises(NonFiniteLossError, match=logged):
        callback.on_log(args, state, TrainerControl(), logs={"loss": float("nan")})


def test_absurd_learning_rate_stops_with_one_line_and_only_finite_checkpoints(tiny_bert_dir, tiny_csv, tmp_path,
                                                                              capsys):  # fmt: skip
    out = tmp_path / "run"
    argv = base_argv(tiny_bert_dir, tiny_csv, out, "--learning-rate", "1e6", "--loraplus-lr-ratio", "1e6",
                     "--eval-steps", "2", "--logging-steps", "1")  # fmt: skip
    argv[argv.index("--max-steps") + 1] = "12"
    line = cli_error(capsys, argv)
    found = re.search(r"(?:loss became (?:nan|inf)|training diverged) at step (\d+)", line)
    assert found, line
    step = int(found.group(1))
    saved = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")]
    assert all(s < step for s in saved)
    assert all(finite_checkpoint(out / "checkpoints" / f"checkpoint-{s}") for s in saved)
    kept = f"the last good checkpoint is checkpoint-{max(saved)};" if saved else "no checkpoint was saved before it;"
    assert kept in line


# --------------------------------------------------------------------------- safe by default


def test_no_unsafe_deserialisation_in_the_package():
    """No pickle-based loads: torch.load only with weights_only=True, YAML only through safe_load."""
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        unsafe = r"yaml\.(load|unsafe_load|full_load)\(|pickle\.loads?\(|(?<![.\w])(eval|exec)\("
        assert not re.search(unsafe, text), path
    assert "yaml.safe_load(" in (SRC / "configfile.py").read_text()


def test_remote_code_is_off_unless_asked():
    import inspect

    from loraplus.models import load_sequence_classifier

    assert TrainConfig().trust_remote_code is False
    assert inspect.signature(load_sequence_classifier).parameters["trust_remote_code"].default is False


def test_yaml_python_tag_is_refused_in_one_line(tmp_path, capsys):
    config = _write(tmp_path / "evil.yaml", f'!!python/object/apply:os.system ["touch {tmp_path}/pwned"]\n')
    line = cli_error(capsys, ["train", "--config", str(config), "--output-dir", str(tmp_path / "o")])
    assert re.search(r"config file '.*evil\.yaml' is not valid YAML: .*python/object/apply:os\.system", line)
    assert not (tmp_path / "pwned").exists()


def test_checkpoints_and_adapter_are_safetensors(tiny_bert_dir, tiny_csv, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(model=str(tiny_bert_dir), dataset=str(tiny_csv), output_dir=str(out), max_steps=2,
                      eval_steps=2, batch_size=8, max_length=16, target_modules=("query", "value"))  # fmt: skip
    run_train(cfg)
    for folder in (out / "adapter", out / "checkpoints" / "checkpoint-2"):
        names = {p.name for p in folder.iterdir()}
        assert "adapter_model.safetensors" in names, names
        # training_args.bin (HF's torch.save of the arguments) is written, never read back; weights never pickled
        assert not names & {"adapter_model.bin", "pytorch_model.bin", "model.pt"}, names
        assert finite_checkpoint(folder)
    assert not math.isnan(json.loads((out / "metrics.json").read_text())["test"]["loss"])


def test_atomic_files_get_the_mode_open_would_give(tmp_path):
    import os
    import stat

    from loraplus.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
