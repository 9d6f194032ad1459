"""Bash completion generated from the argparse tree, so that it can never disagree with the CLI."""

from __future__ import annotations

import argparse


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, argparse.ArgumentParser]]:
    options: list[str] = []
    children: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children.update(action.choices)
        else:
            options.extend(s for s in action.option_strings if s.startswith("--"))
    return options, children


def _cases(parser: argparse.ArgumentParser, path: str, out: list[str]) -> None:
    options, children = _words(parser)
    out.append(f'        "{path}") words="{" ".join(sorted(children) + options)}" ;;')
    for name, child in children.items():
        _cases(child, f"{path} {name}".strip(), out)


def bash_completion(parser: argparse.ArgumentParser, prog: str) -> str:
    """A script for ``eval "$(edge-agent completion bash)"``: subcommands, then each one's options;
    anything else completes as a file name."""
    cases: list[str] = []
    _cases(parser, "", cases)
    _, top = _words(parser)
    func = "_" + prog.replace("-", "_")
    commands = sorted({name for name in top} | {n for child in top.values() for n in _words(child)[1]})
    return "\n".join([
        f"{func}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" path="" word words',
        '    for word in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do',
        f'        case " {" ".join(commands)} " in *" $word "*) path="${{path:+$path }}$word" ;; esac',
        "    done",
        '    case "$path" in',
        *cases,
        '        *) words="" ;;',
        "    esac",
        '    if [[ "$cur" == -* || -n "$words" && "$cur" != */* ]]; then',
        '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
        "    fi",
        '    [[ ${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))',
        "    return 0",
        "}",
        f"complete -o filenames -F {func} {prog}",
    ])
