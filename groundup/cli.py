"""The command line: a table of subcommand -> job dataclass + the library function it runs (groundup.jobs).

A job's settings come from its dataclass defaults, then a YAML file (--config), then --key=value
flags (dotted for nested sections: --train.lr=3e-4, --model.n_layer=4).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import shlex
import sys
import textwrap
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .cli_flags import FlagNames, as_flags, flag_names
from .cli_flags import field_types as _field_types

if TYPE_CHECKING:
    from .jobs import Command


class CLIError(ValueError):
    """Bad command-line input; the message says which flag and what to do."""


def _parse_value(raw: str, tp: Any, flag: str) -> Any:
    """Strings stay strings (a prompt of "123" is text); everything else is read as YAML (3e-4, true, [1, 2]);
    a list option given one bare value is a list of one."""
    args = typing.get_args(tp)
    lists = [t for t in (tp, *args) if typing.get_origin(t) is list]
    if lists:
        if raw in ("null", "None") and type(None) in args:
            return None
        if typing.get_args(lists[0]) in ((str,), ()):
            return parse_list(raw, flag)
        value = _yaml_value(raw, flag)
        return [value] if isinstance(value, str | int | float) else value
    if tp is str or typing.get_origin(tp) is typing.Literal or str in args:
        return None if raw in ("null", "None") and type(None) in args else raw
    return _yaml_value(raw, flag)


def _yaml_value(raw: str, flag: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CLIError(f"{flag}={raw!r} is not a value ({problem}); quote it, e.g. {flag}='\"{raw}\"'") from None


def parse_list(raw: str, flag: str) -> list[str]:
    """A list option's items: "[a, b, c]" split at the commas (an item may be quoted, "a, b" or 'x', with YAML's
    escapes such as "\\n"; unquoted items are plain text, so "[+, -, *]" and "[yes, 1]" stay strings), or one
    bare value as a list of one. Errors name `flag` and show the form to write."""
    text = raw.strip()
    if not text.startswith("["):
        return [raw]
    example = f"write it as {flag}='[a, b]' (quote an item holding a comma: '[\"a, b\", c]')"
    if not text.endswith("]"):
        raise CLIError(f"{flag}={raw!r}: a list starts with [ and ends with ]; {example}")
    items, item, quote = [], "", ""
    for ch in text[1:-1] + ",":
        if quote:
            item += ch
            quote = "" if ch == quote and not (quote == '"' and item.endswith('\\"')) else quote
        elif ch in "'\"" and not item.strip():
            item, quote = ch, ch
        elif ch == ",":
            items.append(item.strip())
            item = ""
        else:
            item += ch
    if quote:
        raise CLIError(f"{flag}={raw!r}: a quote ({quote}) is not closed; {example}")
    if items and not items[-1]:
        items.pop()  # "[a, b,]": a trailing comma, as YAML allows
    if any(not i for i in items):
        raise CLIError(f"{flag}={raw!r}: item {items.index('') + 1} is empty; {example}")
    return [_unquote(i, raw, flag, example) for i in items]


def _unquote(item: str, raw: str, flag: str, example: str) -> str:
    if item[0] not in "'\"":
        return item
    try:
        value = yaml.safe_load(item)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, str):
        raise CLIError(f"{flag}={raw!r}: {item} is not one quoted item; {example}")
    return value


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
            sub[rest] = _yaml_value(raw, f"--{prefix}{key}")
    else:
        tree[head] = _parse_value(raw, tp, f"--{prefix}{key}")


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


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off")


def parse_job(cls: type, argv: list[str]) -> Any:
    """defaults -> --config YAML -> --key=value / --key value flags. A job with CLI_POSITIONAL (the name of a list
    option) takes bare arguments as that option's items (`groundup transcribe a.wav b.wav`; after `--` every
    argument is one), and there a boolean flag followed by anything but true/false/yes/no/on/off is a bare switch
    (`--timestamps a.wav`)."""
    tree: dict[str, Any] = {}
    args = list(argv)
    flags: list[tuple[str, str]] = []
    positional: str | None = getattr(cls, "CLI_POSITIONAL", None)
    bare: list[str] = []
    while args:
        arg = args.pop(0)
        if positional and arg == "--":
            bare += args
            break
        if not arg.startswith("--"):
            if positional is None:
                raise CLIError(f"unexpected argument {arg!r}; options are written --key=value")
            bare.append(arg)
            continue
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            switch = positional and _field_types(cls).get(key.replace("-", "_")) is bool
            if not args or args[0].startswith("--") or (switch and args[0].lower() not in _BOOL_WORDS):
                raw = "true"  # a bare flag switches a boolean on
            else:
                raw = args.pop(0)
        if key == "config":
            _merge(tree, _apply_aliases(read_config(raw), cls, raw))
        else:
            flags.append((key.replace("-", "_"), raw))
    seen: set[str] = set()
    for key, raw in _alias_flags(flags, cls):
        before = tree.get(key) if key in seen else None
        _set(tree, cls, key, raw)
        if isinstance(before, list) and isinstance(tree.get(key), list):  # a repeated list flag adds items
            tree[key] = before + tree[key]
        seen.add(key)
    if bare:
        tree[positional] = [*(tree.get(positional) or []), *bare]
    return build(cls, tree)


def read_config(raw: str) -> dict[str, Any]:
    """The mapping in a --config YAML file; a YAML error is reported as FILE:LINE:COL: what is wrong."""
    path = Path(raw)
    if not path.is_file():
        raise CLIError(f"--config {raw}: no such file; give the path of a YAML file (see configs/)")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise CLIError(f"--config {raw}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{raw}:{mark.line + 1}:{mark.column + 1}" if mark is not None else raw
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        context_mark = getattr(e, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} at {context_mark.line + 1}:{context_mark.column + 1})"
        raise CLIError(f"{where}: {problem}") from None
    if not isinstance(loaded, dict):
        raise CLIError(f"--config {raw}: the YAML must be a mapping of option: value")
    return loaded


# A job's CLI_FLAGS name the option that sets a nested field (finetune's train.out_dir is its out_dir): a value
# given for the nested field (--train.out_dir, or train: {out_dir: ...} in a YAML file) goes to that option.
def _alias_flags(flags: list[tuple[str, str]], cls: type) -> list[tuple[str, str]]:
    aliases = getattr(cls, "CLI_FLAGS", {})
    given = dict(flags)
    for path, target in aliases.items():
        if path in given and target in given and given[path] != given[target]:
            raise CLIError(f"--{path}={given[path]} and --{target}={given[target]} name the same option; give only "
                           f"--{target}")
    return [(aliases.get(key, key), raw) for key, raw in flags]


def _apply_aliases(tree: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    for path, target in getattr(cls, "CLI_FLAGS", {}).items():
        section, _, name = path.partition(".")
        sub = tree.get(section)
        if not isinstance(sub, dict) or name not in sub:
            continue
        value = sub.pop(name)
        if target in tree and tree[target] != value:
            raise CLIError(f"--config {where}: {path}: {value} and {target}: {tree[target]} name the same option; "
                           f"keep only {target}")
        tree[target] = value
    return tree


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _help(name: str, cls: type, examples: str) -> str:
    positional = getattr(cls, "CLI_POSITIONAL", None)
    items = f" {positional.removesuffix('s').upper()} ..." if positional else ""
    lines = [f"usage: groundup {name}{items} [--config FILE.yaml] [--key=value ...]", "", inspect.getdoc(cls) or "",
             ""]
    aliased = getattr(cls, "CLI_FLAGS", {})  # set through another option, which the list shows
    options: list[tuple[str, str]] = []
    notes = field_comments(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            sub = field_comments(type(default))
            options += [(f"--{f.name}.{k}={v!r}", sub.get(k, "")) for k, v in dataclasses.asdict(default).items()
                        if f"{f.name}.{k}" not in aliased]
        else:
            options.append((f"--{f.name}={default!r}", notes.get(f.name, "")))
    width = min(max(len(flag) for flag, _ in options), 40)
    lines += [f"  {flag:{width}s}  {note}".rstrip() for flag, note in options]
    return "\n".join(lines + ["", "examples:", examples.strip("\n")])


def field_comments(cls: type) -> dict[str, str]:
    """A dataclass's field comments (`name: type = default  # what it is`): what --help says of each option."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match and match.group(1) not in out:
            out[match.group(1)] = match.group(2).strip()
    return out


def summary(job: type) -> str:
    """A command's description: the first sentence of its job's docstring, whole (it may wrap in the source)."""
    text = " ".join((job.__doc__ or "").strip().split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s", text, maxsplit=1)[0]


def _commands() -> dict[str, Command]:
    from .jobs import COMMANDS  # the job dataclasses only: a command's own modules load when it runs

    return COMMANDS


def _brief_warnings(command: str, names: FlagNames) -> None:
    """groundup's own warnings (e.g. generation stopped at the model's context) print as one line on stderr,
    without the file and source line Python adds, the options they name written as flags; other libraries'
    warnings print as usual."""
    default = warnings.formatwarning

    def brief(message, category, filename, lineno, line=None) -> str:
        if category.__module__.partition(".")[0] == "groundup":
            return f"groundup {command}: {as_flags(str(message), names)}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = brief


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_command_list(commands))
        return 0
    name, rest = argv[0], argv[1:]
    if rest and f"{name} {rest[0]}" in commands:  # two-word commands: `groundup data clean`
        name, rest = f"{name} {rest[0]}", rest[1:]
    group = {k: v for k, v in commands.items() if k.startswith(f"{name} ")}
    if name not in commands and group and (not rest or rest[0] in ("-h", "--help")):  # `groundup data --help`
        print(_command_list(group, f"groundup {name} SUBCOMMAND"))
        return 0
    if name not in commands:
        near = difflib.get_close_matches(name, {*commands, *(k.split()[0] for k in commands)}, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        print(f"groundup: unknown command {' '.join(argv[:2]) if group else name!r}; {hint}commands: "
              f"{', '.join(commands)}", file=sys.stderr)
        return 2
    cls = commands[name].job
    if "-h" in rest or "--help" in rest:
        print(_help(name, cls, commands[name].examples))
        return 0
    names = flag_names(cls)
    _brief_warnings(name, names)
    job = None
    try:
        job = parse_job(cls, rest)
        commands[name].function()(job)
    except CLIError as e:
        print(f"groundup {name}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:  # our errors say what to fix
        if isinstance(e, RuntimeError) and not _is_checkpoint_error(e):
            raise
        print(f"groundup {name}: error: {as_flags(str(e), names)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: stop quietly, with the shell's exit code for SIGINT
        print(interrupted_line(name, rest, job, e), file=sys.stderr)
        return 130
    return 0


def _is_checkpoint_error(err: RuntimeError) -> bool:
    from .train.checkpoint import CheckpointError  # here: commands that never touch torch do not import it

    return isinstance(err, CheckpointError)


def _command_list(commands: dict[str, Command], usage: str = "groundup COMMAND") -> str:
    lines = [f"usage: {usage} [--help] [--key=value ...]", "", "commands:"]
    for name, command in commands.items():
        wrapped = textwrap.wrap(summary(command.job), 100)
        lines += [f"  {name:16s} {wrapped[0]}", *(f"  {'':16s} {more}" for more in wrapped[1:])]
    return "\n".join(lines)


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
