"""The one command line: every command is listed and importable, bad input is one line and exit status 2."""

from __future__ import annotations

import importlib

import pytest

from megatron_qwen.cli import COMMANDS, main


def test_help_lists_every_command_and_each_has_a_main(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (module, _) in COMMANDS.items():
        assert f"  {name} " in out
        assert callable(importlib.import_module(module).main), module


def test_no_command_and_unknown_command_exit_2(capsys):
    assert main([]) == 2
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown command 'trian'; choose one of: " + ", ".join(COMMANDS)]


def test_a_command_error_is_one_line_and_status_2(tmp_path, capsys):
    rc = main(["preprocess", "--mode", "file", "--output-prefix", str(tmp_path / "x"), "--tokenizer", str(tmp_path)])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "error: give --input JSONL files (or --input-dir for --mode repo)"


@pytest.mark.parametrize("override, message", [
    ("experiment=nope", "Could not find 'experiment/nope'"),
    ("train.nosuch=1", "Key 'nosuch' not in 'TrainConfig'"),
    ("train.train_iters=abc", "could not be converted to Integer"),
])
def test_train_refuses_bad_overrides_in_one_line(override, message, capsys):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("config error: ") and message in err[0]
