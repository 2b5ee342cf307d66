"""Names that become parts of file paths: machine types, sections, asset ids.

A machine type names its model file (``RUN/models/<machine>.pt``) and, with its section, the
DCASE submission files (``anomaly_score_<machine>_section_<section>_test.csv``); the HTTP
service uses the same rule for asset ids. Whatever a data set, a table, a recipe or a request
says, such a name must be one plain file-name component, so that no value can point a write
outside the run folder or onto another file. The rule, in one place:

- ASCII letters, digits and ``_ - . +`` only, at most :data:`MAX_NAME_LENGTH` characters;
- first character a letter, a digit or ``_`` (not ``.``: hidden files, ``..``; not ``-``/``+``:
  a name that reads as a command-line option); last character not ``.`` (Windows drops it, so
  ``fan.`` and ``fan`` would be one file);
- not a device name Windows reserves (``CON``, ``NUL``, ``COM1`` ...), with or without extension.

Spaces are refused too: names are typed in shells (``--machines``) and URLs and pasted into
DCASE file names, and no DCASE, MIMII or ToyADMOS machine type or section has one. Non-ASCII
letters are refused because the same word can be spelt with different code points (NFC/NFD),
which file systems treat differently.
"""

from __future__ import annotations

import re

from stetho.errors import DatasetError, StethoError

#: Longest accepted name: DCASE machine types have at most 15 characters; 64 leaves room for
#: hashes as asset ids while ``anomaly_score_<machine>_section_<section>_<domain>_test.csv``
#: stays far below the 255-byte file-name limit.
MAX_NAME_LENGTH = 64
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
#: What the rule allows, in words, for messages.
RULE = f"use ASCII letters, digits and _ - . + (at most {MAX_NAME_LENGTH} characters, not starting with . - +)"
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})
#: How much of a bad value a message quotes.
_QUOTE_LIMIT = 80


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a safe name, in a few words (``None`` when it is one)."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not text"
    if not value:
        return "is empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"is {len(value)} characters long (at most {MAX_NAME_LENGTH})"
    if SAFE_NAME.fullmatch(value):
        if value.endswith("."):
            return "ends with '.'"
        if value.split(".")[0].lower() in _RESERVED:
            return "is a device name Windows reserves"
        return None
    if value in (".", ".."):
        return "is a relative folder reference"
    for ch in value:
        if ch in "/\\":
            return f"contains the path separator {ch!r}"
    for ch in value:
        if ord(ch) < 32 or ord(ch) == 127:
            return "contains a control character"
    if value[0] in ".-+":
        return f"starts with {value[0]!r}"
    bad = next(ch for ch in value if not re.fullmatch(r"[A-Za-z0-9_.+-]", ch))
    return f"contains {bad!r}"


def is_safe_name(value: object) -> bool:
    """True when ``value`` is a safe name (see the module docstring)."""
    return name_problem(value) is None


def quote(value: object) -> str:
    """``repr(value)``, shortened to :data:`_QUOTE_LIMIT` characters: one line, control
    characters escaped, however long or hostile the value."""
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT - 3] + "..."


def name_message(value: object, what: str) -> str | None:
    """``"<what> '<value>' is not a safe name (<why>); <rule>"``, or ``None`` for a safe name."""
    why = name_problem(value)
    if why is None:
        return None
    return f"{what} {quote(value)} is not a safe name ({why}); {RULE}"


def check_name(value: object, what: str, where: str, error: type[StethoError] = DatasetError) -> str:
    """``value`` when it is a safe name, else ``error`` (one line naming ``where`` and the value).

    Args:
        value: the name as read.
        what: what it names, e.g. ``"machine type"``, ``"section"``, ``"asset id"``.
        where: the file, row or option it came from, e.g. ``"clips.csv line 3"``, ``"--machines"``.
        error: the exception class: :class:`DatasetError` for data, ``ConfigError`` for options.

    Raises:
        error: ``"<where>: <what> '<value>' is not a safe name (<why>); use ASCII letters ..."``.
    """
    message = name_message(value, what)
    if message is not None:
        raise error(f"{where}: {message}")
    return value  # type: ignore[return-value]
