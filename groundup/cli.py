"""The command line: a table of subcommand -> (job dataclass, library function).

A job's settings come from its dataclass defaults, then a YAML file (--config), then --key=value
flags (dotted for nested sections: --train.lr=3e-4, --model.n_layer=4).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class CLIError(ValueError):
    """Bad command-line input; the message says which flag and what to do."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_value(raw: str, tp: Any) -> Any:
    """Strings stay strings (a prompt of "123" is text); everything else is read as YAML (3e-4, true, [1, 2]);
    a list option given one bare value is a list of one."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in args):
        value = yaml.safe_load(raw)
        return [value] if isinstance(value, str | int | float) else value
    if tp is str or typing.get_origin(tp) is typing.Literal or str in args:
        return None if raw in ("null", "None") and type(None) in args else raw
    return yaml.safe_load(raw)


def _set(tree: dict[str, Any], cls: type, key: str, raw: str, prefix: str = "") -> None:
    """Set tree[key] (dotted) from a flag, typed by the dataclass field it names."""
    head, _, rest = key.partition(".")
    types_ = _field_types(cls)
    if head not in types_:
        known = ", ".join(f"--{prefix}{k}" for k in types_)
        raise CLIError(f"unknown option --{prefix}{key}; options are: {known}")
    tp = types_[head]
    if rest:
        sub = tree.setdefault(head, {})
        if dataclasses.is_dataclass(tp):
            _set(sub, tp, rest, raw, f"{prefix}{head}.")
        else:  # a free-form dict section (e.g. model overrides)
            sub[rest] = yaml.safe_load(raw)
    else:
        tree[head] = _parse_value(raw, tp)


def _default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def build(cls: type, values: dict[str, Any]) -> Any:
    """Instantiate a (nested) job dataclass from a dict, naming the section of any bad key. A section
    given in part keeps the job's own defaults for the rest (--train.max_steps keeps train.out_dir)."""
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise CLIError(f"{cls.__name__} has no option(s) {unknown}; options are: {sorted(types_)}")
    kwargs = {}
    for name, value in values.items():
        tp, default = types_[name], _default(cls, name)
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            value = build(tp, {**dataclasses.asdict(default), **value})
        elif isinstance(value, dict) and isinstance(default, dict):
            value = {**default, **value}
        kwargs[name] = _as_float(value, name) if float in (tp, *typing.get_args(tp)) else value
    return cls(**kwargs)


def _as_float(value: Any, name: str) -> Any:
    """YAML reads 2e-3 (no dot) as a string; a float field takes it as the number it means."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        raise CLIError(f"option {name}={value!r} must be a number") from None


def parse_job(cls: type, argv: list[str]) -> Any:
    """defaults -> --config YAML -> --key=value / --key value flags."""
    tree: dict[str, Any] = {}
    args = list(argv)
    flags: list[tuple[str, str]] = []
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            raise CLIError(f"unexpected argument {arg!r}; options are written --key=value")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if not args or args[0].startswith("--"):
                raw = "true"  # a bare flag switches a boolean on
            else:
                raw = args.pop(0)
        if key == "config":
            path = Path(raw)
            if not path.is_file():
                raise CLIError(f"--config {raw}: no such file; give the path of a YAML file (see configs/)")
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise CLIError(f"--config {raw}: the YAML must be a mapping of option: value")
            _merge(tree, loaded)
        else:
            flags.append((key.replace("-", "_"), raw))
    seen: set[str] = set()
    for key, raw in flags:
        before = tree.get(key) if key in seen else None
        _set(tree, cls, key, raw)
        if isinstance(before, list) and isinstance(tree.get(key), list):  # a repeated list flag adds items
            tree[key] = before + tree[key]
        seen.add(key)
    return build(cls, tree)


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _help(name: str, cls: type, fn: Callable, examples: str) -> str:
    lines = [f"usage: groundup {name} [--config FILE.yaml] [--key=value ...]", "", (fn.__doc__ or "").strip(), ""]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines += [f"  --{f.name}.{k}={v!r}" for k, v in dataclasses.asdict(default).items()]
        else:
            lines.append(f"  --{f.name}={default!r}")
    return "\n".join(lines + ["", "examples:", examples.strip("\n")])


def _commands() -> dict[str, tuple[type, Callable, str]]:
    from . import jobs

    return jobs.COMMANDS


def _brief_warnings(command: str) -> None:
    """groundup's own warnings (e.g. generation stopped at the model's context) print as one line on stderr,
    without the file and source line Python adds; other libraries' warnings print as usual."""
    default = warnings.formatwarning

    def brief(message, category, filename, lineno, line=None) -> str:
        if category.__module__.partition(".")[0] == "groundup":
            return f"groundup {command}: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = brief


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: groundup COMMAND [--help] [--key=value ...]\n\ncommands:")
        for name, (_, fn, _) in commands.items():
            print(f"  {name:16s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    name, rest = argv[0], argv[1:]
    if rest and f"{name} {rest[0]}" in commands:  # two-word commands: `groundup data clean`
        name, rest = f"{name} {rest[0]}", rest[1:]
    if name not in commands:
        print(f"groundup: unknown command {name!r}; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    cls, fn, examples = commands[name]
    if "-h" in rest or "--help" in rest:
        print(_help(name, cls, fn, examples))
        return 0
    from .train import CheckpointError

    _brief_warnings(name)
    job = None
    try:
        job = parse_job(cls, rest)
        fn(job)
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as e:  # our errors say what to fix
        print(f"groundup {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: stop quietly, with the shell's exit code for SIGINT
        print(interrupted_line(name, rest, job, e), file=sys.stderr)
        return 130
    return 0


def interrupted_line(name: str, argv: list[str], job: Any, err: KeyboardInterrupt) -> str:
    """What Ctrl-C leaves: nothing to say (""), or after training, in one line, the checkpoint the loop saved and
    the command that continues it."""
    checkpoint = getattr(err, "checkpoint", None)  # set by train.TrainingInterrupted
    if checkpoint is None:
        return ""
    again = list(argv)
    if getattr(getattr(job, "train", None), "resume", True) is False:
        again.append("--train.resume=true")
    return (f"groundup {name}: interrupted after step {err.step}/{err.max_steps}; checkpoint saved to {checkpoint}; "
            f"resume with: groundup {shlex.join([*name.split(), *again])}")
