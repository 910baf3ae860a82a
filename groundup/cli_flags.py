"""The library's Python spellings of a job's options (TrainConfig.resume=True, data.skip_bad, skip_bad=) written as
the command-line flags that set them (--train.resume=true, --data.skip_bad): the library's messages stay right for
Python users, and the CLI shows the flag the user typed."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@dataclasses.dataclass
class FlagNames:
    """How a job's options are spelled in the library's messages (TrainConfig.lr=, train.lr, lr=) and on the
    command line (--train.lr=). The library names Python's spelling, right for Python users; the CLI shows the
    flag the user typed. A job may declare CLI_SECTIONS (a free-form dict section and the config class it
    builds: PretrainJob's model is a ModelConfig) and CLI_FLAGS (a nested field and the option that sets it)."""

    paths: dict[str, str]  # "train.lr" -> "--train.lr", "out_dir" -> "--out_dir"
    classes: dict[str, str]  # "TrainConfig" -> "train"
    leaves: dict[str, str]  # "skip_bad" -> "--data.skip_bad": a name only one option has
    top: set[str]  # the job's own (flat) options

    def resolve(self, cls_name: str, name: str) -> str | None:
        """The flag of `cls_name.name`: in that class's section, else (a config class the job flattens) an option
        of the job itself with that name (quickstart's --max_steps is TrainConfig.max_steps)."""
        if cls_name in self.classes:
            return self.paths.get(f"{self.classes[cls_name]}.{name}")
        flattened = cls_name.endswith(("Config", "Options", "Spec")) and name in self.top
        return self.paths[name] if flattened else None


def flag_names(cls: type) -> FlagNames:
    paths, classes, top = {}, {}, set()
    sections = getattr(cls, "CLI_SECTIONS", {})
    for name, tp in field_types(cls).items():
        inner = tp if dataclasses.is_dataclass(tp) else sections.get(name)
        if inner is None:
            paths[name] = f"--{name}"
            top.add(name)
            continue
        classes[inner.__name__] = name
        paths.update({f"{name}.{sub}": f"--{name}.{sub}" for sub in field_types(inner)})
    paths.update({path: f"--{target}" for path, target in getattr(cls, "CLI_FLAGS", {}).items()})
    flags_of: dict[str, set[str]] = {}
    for path, flag in paths.items():
        flags_of.setdefault(path.rpartition(".")[2], set()).add(flag)
    leaves = {name: flags.pop() for name, flags in flags_of.items() if len(flags) == 1}
    return FlagNames(paths, classes, leaves, top)


_PY_VALUES = {"True": "true", "False": "false", "None": "null"}
_CLASS_CALL = re.compile(r"(?<![\w.])([A-Z]\w*)\((\w+)=([^(),]*)\)")  # TrainConfig(resume=True)
_CLASS_ATTR = re.compile(r"(?<![\w.])([A-Z]\w*)\.([a-z_]\w*)(?:=(True|False|None)\b)?")  # TrainConfig.resume=True
_DOTTED = re.compile(r"(?<![\w.\-/])([a-z_]\w*\.[a-z_]\w*)(?![\w(])(?:=(True|False|None)\b)?")  # data.skip_bad
_KEYWORD = re.compile(r"(?<![\w.\-/'\"])([a-z_]\w*)=(?!=)(?:(True|False|None)\b)?")  # skip_bad=True, tokenizer=
_CALL = re.compile(r"[A-Za-z_][\w.]*\([^()]*\)")  # load_instructions(path='x'): a Python call, left as written


def _with_value(flag: str, value: str | None) -> str:
    return flag if value is None else f"{flag}={_PY_VALUES.get(value, value)}"


def as_flags(message: str, names: FlagNames) -> str:
    """`message` with each Python spelling of one of the job's options written as its flag:
    "pass skip_bad=True" -> "pass --data.skip_bad=true", "set TrainConfig.resume=True" -> "set --train.resume=true".
    A name inside a call (load_instructions(path=...)) and a name two options share are left as they are."""

    def class_call(m: re.Match) -> str:
        flag = names.resolve(m[1], m[2])
        return m[0] if flag is None else f"{flag}={_PY_VALUES.get(m[3].strip(), m[3])}"

    def class_attr(m: re.Match) -> str:
        flag = names.resolve(m[1], m[2])
        return m[0] if flag is None else _with_value(flag, m[3])

    message = _CLASS_CALL.sub(class_call, message)
    message = _CLASS_ATTR.sub(class_attr, message)
    message = _DOTTED.sub(lambda m: _with_value(names.paths[m[1]], m[2]) if m[1] in names.paths else m[0], message)
    calls = [m.span() for m in _CALL.finditer(message)]

    def keyword(m: re.Match) -> str:
        flag = names.leaves.get(m[1])
        if flag is None or any(a <= m.start() < b for a, b in calls):
            return m[0]
        return f"{flag}={_PY_VALUES[m[2]] if m[2] else ''}"

    return _KEYWORD.sub(keyword, message)
