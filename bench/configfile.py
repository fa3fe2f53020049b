"""Reading config files: bounded, strict YAML, and `ConfigError`, whose every line names the file and the key.

Shared by the benchmark config (`bench.config`) and the price table (`bench.cost`).
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from pathlib import Path

import yaml
from pydantic import ValidationError

UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})  # control characters and line/paragraph separators
MAX_YAML_BYTES = 16 << 20  # a config or price table is a few KiB; this bounds reading `/dev/zero`
MAX_YAML_VALUES = 1_000_000  # values after expanding aliases: a "billion laughs" file stops here


class ConfigError(Exception):
    """A config that cannot be used; each line reads `file: dotted.key.path: message`."""

    def __init__(self, lines: list[str]):
        # One line each, whatever a file name or value holds: control characters are shown escaped.
        lines = [_escaped(line) for line in lines]
        super().__init__("\n".join(lines))
        self.lines = lines


def _escaped(line: str) -> str:
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in UNPRINTABLE_CATEGORIES else c for c in line)


_KEY_PATH = re.compile(r"(\[\d+\]|[A-Za-z_]\w*)(\.[A-Za-z_]\w*|\[\d+\])*")


def _dotted(location: tuple[str | int, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def error_lines(source: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        location = tuple(part for part in item["loc"] if not str(part).startswith("function-after"))
        message = item["msg"].removeprefix("Value error, ")
        key = _dotted(location)
        # Validators on a list report the element's own sub-path at the start of the message, cross-field
        # validators of a section the key below it, and validators on the whole config the full path.
        head, separator, rest = message.partition(": ")
        if separator and _KEY_PATH.fullmatch(head):
            key, message = (key + head if head.startswith("[") or not key else f"{key}.{head}"), rest
        lines.append(f"{source}: {key or '<root>'}: {message}")
    return lines


def _yaml_text(path: Path, what: str) -> str:
    """The file's text: UTF-8, no NUL bytes, bounded in size; anything else is a ConfigError naming the file."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such {what}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: <root>: is a directory, not a {what}"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: <root>: cannot read the {what}: {error.strerror or error}"]) from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError([f"{path}: <root>: larger than {MAX_YAML_BYTES >> 20} MiB; not a {what}"])
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # the UTF-32 BOMs start with these too
        raise ConfigError([f"{path}: <root>: UTF-16 or UTF-32 text; save it as UTF-8"])
    if b"\0" in data:
        raise ConfigError([f"{path}: <root>: a binary file (NUL byte at offset {data.index(0)}), not a YAML {what}"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"{path}: <root>: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save as UTF-8"]
        ) from None


def _yaml_key(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    return loader.construct_object(node) if isinstance(node, yaml.ScalarNode) else None


def _check_yaml_tree(loader: yaml.SafeLoader, root: yaml.Node, path: Path) -> None:
    """Duplicate mapping keys (PyYAML keeps the last silently), self-referencing aliases, and alias
    expansion beyond MAX_YAML_VALUES are ConfigErrors naming the dotted key and the line."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def visit(node: yaml.Node, dotted: str) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in in_progress:
            raise ConfigError([f"{path}: {dotted or '<root>'}: an alias refers to the value that contains it"])
        in_progress.add(id(node))
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(visit(item, f"{dotted}[{index}]") for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[object, str] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: later keys may override these
                    size += visit(value_node, dotted)
                    continue
                key = _yaml_key(loader, key_node)
                child = f"{dotted}.{key}" if dotted else str(key)
                mark = key_node.start_mark
                where = f"line {mark.line + 1}" + (f":{mark.column + 1}" if node.flow_style else "")
                if key is not None and key in first_line:
                    raise ConfigError(
                        [
                            f"{path}: {child}: duplicate key at {where} (first at {first_line[key]}); YAML would "
                            f"silently keep only the last value"
                        ]
                    )
                if key is not None:
                    first_line[key] = where
                size += visit(key_node, child) + visit(value_node, child)
        in_progress.discard(id(node))
        if size > MAX_YAML_VALUES:
            raise ConfigError(
                [f"{path}: {dotted or '<root>'}: more than {MAX_YAML_VALUES:,} values once aliases are expanded"]
            )
        sizes[id(node)] = size
        return size

    visit(root, "")


def _load_yaml(text: str, path: Path) -> object:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_tree(loader, node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _as_text(character: object) -> object:
    return chr(character) if isinstance(character, int) else character


def read_yaml(path: Path, what: str) -> object:
    """Parse a YAML file; a missing, unreadable, binary or non-UTF-8 file, a syntax error and a duplicate key
    are ConfigErrors naming the file (and `file:line:column` or the dotted key)."""
    text = _yaml_text(path, what)
    try:
        return _load_yaml(text, path)
    except RecursionError:
        raise ConfigError([f"{path}: <root>: nested too deeply to be a {what}"]) from None
    except yaml.reader.ReaderError as error:
        raise ConfigError(
            [f"{path}: <root>: not YAML text: character {_as_text(error.character)!r} at offset {error.position}"]
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(error, 'problem', None) or error}"]) from None
