"""`fleetctl completion bash|zsh|fish`: a shell completion script for fleetctl's commands and
flags. The script is static (written out from the command table once), so pressing TAB never
starts Python and completion costs fleetctl's start-up nothing.

    bash: eval "$(fleetctl completion bash)"      (or save it in bash-completion's dir)
    zsh:  eval "$(fleetctl completion zsh)"
    fish: fleetctl completion fish > ~/.config/fish/completions/fleetctl.fish
"""

from __future__ import annotations

import argparse
from typing import Any

from fleetctl.command import Command, echo, fail

SHELLS = ("bash", "zsh", "fish")
#: Commands whose arguments are unit files (the shell's own file completion is offered).
TAKES_FILES = ("submit", "load", "start")


class Flag:
    def __init__(self, names: tuple[str, ...], takes_value: bool, help: str) -> None:
        self.names, self.takes_value, self.help = names, takes_value, help


class _Recorder:
    """Stands in for an argparse parser to list the flags a command declares."""

    def __init__(self) -> None:
        self.flags: list[Flag] = [Flag(("-h", "--help"), False, "show the command's help")]

    def add_argument(self, *names: str, **kw: Any) -> None:
        if names and names[0].startswith("-"):
            takes_value = kw.get("action") not in ("store_true", "store_false")
            self.flags.append(Flag(names, takes_value, kw.get("help", "")))


def command_flags(command: Command) -> list[Flag]:
    rec = _Recorder()
    command.arguments(rec)  # type: ignore[arg-type]
    return rec.flags


def _table() -> tuple[list[tuple[str, str]], list[Flag], dict[str, list[Flag]]]:
    from fleetctl.cli import COMMANDS, GLOBAL_FLAGS, load

    commands = [(n, s) for n, (_, s) in COMMANDS.items()]
    globals_ = [Flag((f.name,), f.kind is not bool, f.help) for f in GLOBAL_FLAGS]
    globals_.append(Flag(("--no-strict-host-key-checking",), False,
                         "do not verify host keys"))
    globals_ += [Flag(("--version",), False, "print fleetctl's version and exit"),
                 Flag(("-h", "--help"), False, "show the help")]
    per_command = {n: command_flags(load(n)) for n, (module, _) in COMMANDS.items() if module}
    return commands, globals_, per_command


def bash_script() -> str:
    commands, globals_, per_command = _table()
    valued = "|".join(n for f in globals_ if f.takes_value for n in f.names)
    cases = [f'        {name}) words="{" ".join(n for f in flags for n in f.names)}" ;;'
             for name, flags in per_command.items()]
    return "\n".join([
        "# fleetctl completion for bash:",
        '#   eval "$(fleetctl completion bash)"',
        "_fleetctl() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} cmd="" i words',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case ${COMP_WORDS[i]} in',
        f"            {valued}) ((i++)) ;;",
        "            -*) ;;",
        "            *) cmd=${COMP_WORDS[i]}; break ;;",
        "        esac",
        "    done",
        '    case $cmd in',
        '        "") if [[ $cur == -* ]]; then words="'
        + " ".join(n for f in globals_ for n in f.names)
        + f'"; else words="{" ".join(n for n, _ in commands)}"; fi ;;',
        f'        help) words="{" ".join(n for n, _ in commands)}" ;;',
        f'        completion) words="{" ".join(SHELLS)}" ;;',
        *cases,
        "    esac",
        '    if [[ -z $cmd || $cur == -* || $cmd == help || $cmd == completion ]]; then',
        '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        "    else",
        "        COMPREPLY=()  # unit names and files: the shell's own file completion",
        "    fi",
        "}",
        "complete -o default -F _fleetctl fleetctl",
    ]) + "\n"


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def zsh_script() -> str:
    commands, globals_, per_command = _table()
    valued = "|".join(n for f in globals_ if f.takes_value for n in f.names)
    described = " ".join(_zsh_quote(f"{n}:{s}") for n, s in commands)
    cases = []
    for name, flags in per_command.items():
        words = " ".join(n for f in flags for n in f.names)
        rest = "_files" if name in TAKES_FILES else "_default"
        cases.append(f"    ({name}) if [[ $PREFIX == -* ]]; then compadd -- {words}; "
                     f"else {rest}; fi ;;")
    return "\n".join([
        "#compdef fleetctl",
        "# fleetctl completion for zsh:  eval \"$(fleetctl completion zsh)\"",
        "_fleetctl() {",
        '  local cmd="" i',
        f"  local -a commands=({described})",
        "  for (( i = 2; i < CURRENT; i++ )); do",
        "    case ${words[i]} in",
        f"      ({valued}) (( i++ )) ;;",
        "      (-*) ;;",
        "      (*) cmd=${words[i]}; break ;;",
        "    esac",
        "  done",
        "  case $cmd in",
        '    ("") if [[ $PREFIX == -* ]]; then compadd -- '
        + " ".join(n for f in globals_ for n in f.names)
        + "; else _describe command commands; fi ;;",
        f"    (help) compadd -- {' '.join(n for n, _ in commands)} ;;",
        f"    (completion) compadd -- {' '.join(SHELLS)} ;;",
        *cases,
        "  esac",
        "}",
        "(( $+functions[compdef] )) || { autoload -Uz compinit && compinit; }",
        "compdef _fleetctl fleetctl",
    ]) + "\n"


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_flag(cond: str, f: Flag) -> str:
    parts = ["complete -c fleetctl", f"-n {_fish_quote(cond)}"]
    for n in f.names:
        parts.append(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}")
    if f.takes_value:
        parts.append("-r")
    parts.append(f"-d {_fish_quote(f.help)}")
    return " ".join(parts)


def fish_script() -> str:
    commands, globals_, per_command = _table()
    lines = ["# fleetctl completion for fish:",
             "#   fleetctl completion fish > ~/.config/fish/completions/fleetctl.fish",
             "complete -c fleetctl -f"]
    for name, summary in commands:
        lines.append(f"complete -c fleetctl -n __fish_use_subcommand -a {name} "
                     f"-d {_fish_quote(summary)}")
    lines += [_fish_flag("__fish_use_subcommand", f) for f in globals_]
    names = " ".join(n for n, _ in commands)
    lines.append("complete -c fleetctl -n '__fish_seen_subcommand_from help' "
                 f"-a {_fish_quote(names)}")
    lines.append("complete -c fleetctl -n '__fish_seen_subcommand_from completion' "
                 f"-a {_fish_quote(' '.join(SHELLS))}")
    for name, flags in per_command.items():
        cond = f"__fish_seen_subcommand_from {name}"
        lines += [_fish_flag(cond, f) for f in flags]
        if name in TAKES_FILES:
            lines.append(f"complete -c fleetctl -n {_fish_quote(cond)} -F")
    return "\n".join(lines) + "\n"


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", metavar="SHELL", help="bash, zsh or fish")


def _run(a: argparse.Namespace) -> int:
    scripts = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}
    if a.shell not in scripts:
        fail(f"no completion for shell {a.shell!r}: choose one of {', '.join(SHELLS)}")
    echo(scripts[a.shell]().rstrip("\n"))
    return 0


COMMANDS = {"completion": Command(
    "completion", "Print the shell completion script for bash, zsh or fish.\n\n"
    "  bash: eval \"$(fleetctl completion bash)\"\n"
    "  zsh:  eval \"$(fleetctl completion zsh)\"\n"
    "  fish: fleetctl completion fish > ~/.config/fish/completions/fleetctl.fish",
    _arguments, _run)}
