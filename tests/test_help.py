"""Every command's --help reads like a hand-written CLI: one default per flag, dash spelling, switches for booleans,
required flags marked, each command listed once in ``zerank --help``."""

import re

import pytest

from zerank.cli import COMMANDS, Switch, command_parser, main


def help_text(name: str) -> str:
    return command_parser(name).format_help()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_each_default_once_in_dash_spelling(name):
    text = help_text(name)
    assert "(default: None)" not in text
    parser = command_parser(name)
    formatter = parser._get_formatter()
    for action in parser._actions:  # each flag's help as rendered: its default stated at most once
        rendered = formatter._expand_help(action) if action.help else ""
        assert len(re.findall(r"default:", rendered, flags=re.IGNORECASE)) <= 1, rendered
    usage = text[:text.index("\n\n")]
    assert not re.search(r"--\w*_", usage), usage  # no underscore spelling in the usage line
    assert not re.search(r"^\s+--\w*_", text, flags=re.MULTILINE)  # nor in the flags listed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_booleans_are_switches_and_required_flags_are_marked(name):
    text = " ".join(help_text(name).split())
    for action in command_parser(name)._actions:
        if isinstance(action.default, bool) or (action.default is None and action.const is True):  # a bool field
            assert isinstance(action, Switch), action
            assert f"[{action.dest.upper()}]" not in text  # no "--verify [VERIFY]" metavar
            assert f"{action.option_strings[0]} / {action.negations[0]}" in text
        if action.required:
            assert f"{action.option_strings[0]} {action.metavar or action.dest.upper()}" in text
    marked = re.findall(r"\(required\)", text)
    assert len(marked) == sum(action.required for action in command_parser(name)._actions)


def test_build_help_reads_like_a_hand_written_cli():
    text = " ".join(help_text("build").split())
    assert "--verify / --no-verify Check parity with the source causal LM. (default: on)" in text
    assert "--out OUT Output folder for the zerank package. (required)" in text
    assert "--max-length MAX_LENGTH Context length in tokens. (default: 32768)" in text
    assert "Calibration temperature. Default: the source's, else 5.0. --" in text
    assert "--seed SEED Seed for --random weights. (default: 0)" in text
    assert "--no_verify" not in text and "[--verify | --no-verify]" in text


def test_underscore_spelling_and_negations_are_still_accepted():
    parser = command_parser("build")
    dashed, = parser.parse_command_line(["--random", "tiny", "--out", "o", "--max-shard-size-mb", "5",
                                                  "--no-verify"])
    underscored, = parser.parse_command_line(["--random", "tiny", "--out", "o", "--max_shard_size_mb", "5",
                                                       "--no_verify"])
    assert dashed == underscored and dashed.verify is False and dashed.max_shard_size_mb == 5
    on, = parser.parse_command_line(["--random", "tiny", "--out", "o", "--overwrite"])
    assert on.verify is True and on.overwrite is True


def test_top_level_help_lists_each_command_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    listed = re.findall(r"^  (\S+) +\S", out[out.index("commands:"):], flags=re.MULTILINE)
    assert listed == list(COMMANDS)
    assert not any(re.search(rf"(?<![\w-]){re.escape(name)}[,}}]", out) for name in COMMANDS)  # no {a,b,...} list
