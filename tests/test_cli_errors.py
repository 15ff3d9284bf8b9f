"""A new user breaking the command: typos, missing values, wrong types, empty strings, odd paths, bad YAML.

Every case exits with status 2 and one ``loraplus <command>: error: ...`` line naming the bad value, without a
traceback, and before anything is loaded or written (the model and data paths given do not exist, so a case that
got further would fail with another message).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from loraplus.cli import main


def error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"loraplus {command}: error: "), err
    return lines[0]


YAML = {
    "bad_syntax.yaml": "learning_rate: [1e-3\n",
    "top_list.yaml": "- learning_rate\n- 1e-3\n",
    "typo_key.yaml": "learnig_rate: 1e-3\n",
    "list_for_number.yaml": "learning_rate: [1e-3, 2e-3]\n",
    "null_for_int.yaml": "logging_steps: null\n",
    "float_for_int.yaml": "r: 8.5\n",
    "string_for_bool.yaml": "use_dora: 'yes'\n",
    "mapping_for_list.yaml": "target_modules: {query: 1}\n",
    "alias_twice.yaml": "lr: 1e-3\nlearning_rate: 2e-3\n",
    "latin1.yaml": "model: caf\xe9\n".encode("latin-1"),
    "sweep_lr.yaml": "learning_rate: 1e-3\n",
}

CASES = [
    # (argv after the command, command, message regex)
    (["--lr", "1e-3"], "train", r"unrecognized arguments: --lr 1e-3; did you mean --learning-rate for --lr\?"),
    (["--learning-rat", "1e-3"], "train", r"unrecognized arguments: .*did you mean --learning-rate for --learning-rat"),
    (["--epoch", "2"], "train", r"unrecognized arguments: --epoch 2; did you mean --epochs"),
    (["stray"], "train", r"unrecognized arguments: stray \(see loraplus train --help\)"),
    (["--learning-rate"], "train", r"argument --learning-rate: expected one argument"),
    (["--use-dora=yes"], "train", r"argument --use-dora/--no-use-dora: ignored explicit argument 'yes'"),
    (["--learning-rate", "abc"], "train", r"learning_rate must be a number, got 'abc'"),
    (["--learning-rate", ""], "train", r"learning_rate must be a number, got ''"),
    (["--learning-rate", "1e400"], "train", r"learning_rate must be finite, got inf"),
    (["--loraplus-lr-ratio=-inf"], "train", r"loraplus_lr_ratio must be finite, got -inf"),  # "-inf" alone: a flag
    (["--epochs", "nan"], "train", r"epochs must be finite, got nan"),
    (["--r", "2.5"], "train", r"r must be an integer, got '2.5'"),
    (["--max-steps", "0"], "train", r"max_steps must be a positive integer, got 0"),
    (["--seed", "-1"], "train", r"seed must be an integer >= 0, got -1"),
    (["--lr-scheduler-type", "cosin"], "train", r"lr_scheduler_type must be one of linear, cosine, .*got 'cosin'"),
    (["--optimizer", "adam"], "train", r"optimizer must be one of loraplus, lorafa, riemannian, got 'adam'"),
    (["--target-modules", ","], "train", r"target_modules is empty"),
    (["--model", ""], "train", r"model must not be empty, got ''"),
    (["--dataset", ""], "train", r"dataset must not be empty, got ''"),
    (["--output-dir", ""], "train", r"output_dir must not be empty, got ''"),
    (["--resume", "--overwrite"], "train", r"give --overwrite \(start over\) or --resume \(continue\), not both"),
    (["--config", "missing.yaml"], "train", r"config file '.*missing\.yaml' not found"),
    (["--config", "bad_syntax.yaml"], "train", r"config file '.*bad_syntax\.yaml' is not valid YAML: while parsing"),
    (["--config", "top_list.yaml"], "train", r"must hold a mapping of option: value, got list"),
    (["--config", "typo_key.yaml"], "train", r"unknown key 'learnig_rate' in .*; did you mean 'learning_rate'\?"),
    (["--config", "list_for_number.yaml"], "train", r"learning_rate must be a number, got \['1e-3', '2e-3'\]"),
    (["--config", "null_for_int.yaml"], "train", r"logging_steps must be an integer, got None"),
    (["--config", "float_for_int.yaml"], "train", r"r must be an integer, got 8\.5"),
    (["--config", "string_for_bool.yaml"], "train", r"use_dora must be true or false, got 'yes'"),
    (["--config", "mapping_for_list.yaml"], "train", r"target_modules must be a list or a comma-separated string"),
    (["--config", "alias_twice.yaml"], "train", r"sets 'learning_rate' twice"),
    (["--config", "latin1.yaml"], "train", r"config file '.*latin1\.yaml' is not UTF-8 \(byte \d+\); save it as UTF-8"),
    (["--lr-a-min", "0"], "sweep", r"need 0 < lr_a_min <= lr_a_max, got 0\.0 and"),
    # an option the experiment sets itself is refused, even at its default value, pointing at the experiment's own
    (["--learning-rate", "1e-3"], "sweep", r"--learning-rate \(learning_rate\) is set by the experiment itself for "
     r"every run; use --lr-a-min/--lr-a-max"),
    (["--lr", "1e-3"], "sweep", r"--learning-rate \(learning_rate\) is set by the experiment .*--lr-a-min"),
    (["--loraplus-lr-ratio", "4"], "sweep", r"--loraplus-lr-ratio .* use --lr-b-min/--lr-b-max"),
    (["--seed", "3"], "sweep", r"--seed \(seed\) is set by the experiment itself for every run; use --seeds"),
    (["--config", "sweep_lr.yaml"], "sweep", r"key 'learning_rate' in .*sweep_lr\.yaml.*use --lr-a-min"),
    (["--learning-rate", "1e-3"], "compare", r"--learning-rate .* use --lrs"),
    (["--ratio", "16"], "compare", r"unrecognized arguments: --ratio 16"),
    (["--loraplus-lr-ratio", "auto"], "compare", r"compare needs a number for loraplus_lr_ratio"),
    (["--seeds", "1,x"], "sweep", r"seeds must be integers, got \('1', 'x'\)"),
    (["--methods", "lora,foo"], "compare", r"unknown method\(s\) \['foo'\]; choose from lora, loraplus"),
    (["--lrs", "1e-3,-1"], "compare", r"lrs must be finite numbers > 0"),
]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder holding the YAML files above; returns the base options (paths that do not exist)."""
    for name, text in YAML.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.chdir(tmp_path)
    return ["--model", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "no.csv"), "--output-dir",
            str(tmp_path / "out")]  # fmt: skip


@pytest.mark.parametrize("argv, command, message", CASES, ids=[" ".join(c[0]) or "empty" for c in CASES])
def test_bad_invocation_is_one_clear_line(argv, command, message, in_tmp, tmp_path, capsys):
    base = list(in_tmp)
    for flag in ("--model", "--dataset", "--output-dir"):  # the case's own value wins
        if flag in argv:
            del base[base.index(flag) : base.index(flag) + 2]
    try:
        code = main([command, *base, *argv])
    except SystemExit as stop:  # argparse's own errors (usage line + error line)
        code = stop.code
    assert code == 2
    line = error_line(capsys.readouterr().err, command)
    assert re.search(message, line), line
    assert not (tmp_path / "out").exists()  # refused before the run folder was touched


def test_misspelt_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["trian"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("loraplus: error: argument command: invalid choice: 'trian' (choose from")


def test_console_script_prints_no_traceback(tmp_path):
    """The installed ``loraplus`` command itself (a subprocess), on three kinds of failure."""
    exe = Path(sys.executable).with_name("loraplus")
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'!!python/object/apply:os.system ["touch {tmp_path}/pwned"]\n')
    for argv, message in (
        (["trian"], "invalid choice: 'trian'"),
        (["train", "--lr", "1e-3"], "did you mean --learning-rate for --lr?"),
        (["train", "--config", str(evil)], "could not determine a constructor for the tag"),
    ):
        done = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and message in done.stderr.splitlines()[-1], done.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("command, argv, message", [
    ("sweep", ["--lr-a-points", "1", "--lr-a-min", "1e-4", "--lr-a-max", "1e-3"],
     r"lr_a_points=1 with lr_a_min=0\.0001 and lr_a_max=0\.001: give one point for min == max"),
    ("sweep", ["--lr-b-points", "2", "--lr-b-min", "1e-2", "--lr-b-max", "1e-2"], r"lr_b_points=2 with lr_b_min=0\.01"),
    ("compare", ["--methods", "lora,lora"], r"methods lists lora more than once"),
    ("compare", ["--methods", ""], r"methods is empty; choose from lora"),
    ("compare", ["--lrs", "1e-3,1e-3"], r"lrs lists a value more than once"),
    ("toy", ["--train-widths", "abc"], r"train_widths must be integers, got \('abc',\)"),
    ("generate", ["--adapter", "x", "--prompt", "A", "B"], r"give the prompt once: as --prompt or as the last argument"),
])  # fmt: skip
def test_more_bad_invocations_name_what_is_wrong(command, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([command, *argv]) == 2
    assert re.search(message, error_line(capsys.readouterr().err, command))


def test_a_yaml_key_given_twice_and_a_config_folder_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "twice.yaml").write_text("r: 8\nr: 16\n")
    assert main(["train", "--config", "twice.yaml"]) == 2
    assert "gives key 'r' twice; keep one" in error_line(capsys.readouterr().err, "train")
    (tmp_path / "cdir").mkdir()
    assert main(["train", "--config", "cdir"]) == 2
    assert "config file 'cdir' is a folder; give a YAML file" in error_line(capsys.readouterr().err, "train")


def test_generate_on_a_merged_classifier_says_it_is_not_a_causal_lm(tmp_path):
    from loraplus.generate import load_for_generation

    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertForSequenceClassification"], "model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a BertForSequenceClassification model, not a causal LM: it cannot generate"):
        load_for_generation(str(folder))
