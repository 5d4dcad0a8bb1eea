"""The one door to python-hl7 (PyPI `hl7`, untyped): splitting fields, escaping and the ACK's skeleton, typed.

Nothing else in glucobridge imports `hl7`. What python-hl7 does here, and where we step around it:

- **Splitting** (`split_field`): python-hl7 splits a field into repetitions, components and subcomponents
  (`hl7.parse` of the field behind a bare MSH that declares the message's separators; results for short fields
  are cached, a feed repeats its OBX-3, OBX-6 and OBX-18 in every OBX). Messages and segments are cut on CR and
  the field separator by `bff.hl7.message`, exactly as `hl7.parse` cuts them, because `hl7.parse` of a whole
  message builds every part of it at once: about ten times the time of the rest of reading an ORU^R01 file, and
  memory without bound for a hostile message. python-hl7 fills a missing escape or subcomponent character with
  `\\` or `&`; we give it private-use characters instead, so an MSH-2 of `^~` keeps `\\` and `&` as data.
- **Escaping** (`escape`): python-hl7 escapes the separators, the escape character and CR (`\\.br\\`) in printable
  ASCII. Other characters we keep out of it: it writes every non-ASCII character as `\\Xhh\\` of its code point
  (our messages declare UTF-8 in MSH-18 instead) and formats control characters below 0x10 with a space
  (`\\X a\\`, not a valid sequence); we write those as two-digit `\\Xhh\\`.
- **Unescaping** (`unescape`): each escape sequence is looked up by python-hl7 with our table for the ones we
  read differently (`\\H\\`/`\\N\\` highlighting dropped, `\\.br\\` a line feed). We never give it what it cannot
  read: it drops an unterminated sequence and logs (with the field's text, which is PHI) and drops an empty,
  `\\C..\\`, `\\M..\\`, `\\Z..\\` or bad hex sequence. Those are kept as written, and `\\Xhh..\\` is decoded here as
  UTF-8 bytes (Latin-1 when they are not UTF-8), where python-hl7 reads each byte as a code point.
- **ACK** (`ack_skeleton`): `Message.create_ack` swaps MSH-3/4 with MSH-5/6, copies MSH-11/12 and MSA-2 from
  the message it is given. We give it a header re-written in the standard separators (`bff.hl7.ack`), so what it
  copies is already escaped for the ACK. It stamps MSH-7 with `datetime.utcnow()` (deprecated from Python 3.12,
  a DeprecationWarning there); we overwrite MSH-7 with our clock.

python-hl7's own loggers write field text when it meets a sequence it cannot read; a filter below withholds the
arguments of their records, so nothing of a message reaches a log even if a path above is missed.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Final

import hl7  # type: ignore[import-untyped]
import hl7.util  # type: ignore[import-untyped]

#: Characters python-hl7 gets for a separator the message does not declare (MSH-2 shorter than 4 characters).
NO_ESCAPE: Final = "\ue000"
NO_SUBCOMPONENT: Final = "\ue001"
#: How we read the sequences python-hl7 reads otherwise (it makes highlighting "_", line breaks CR).
_UNESCAPE_MAP: Final = {"H": "", "N": "", ".br": "\n", ".sp": "\n", ".ce": "\n"}
#: The sequences python-hl7 reads for us; everything else is ours (see the module docstring).
_LIBRARY_SEQUENCES: Final = frozenset({"F", "S", "T", "R", "E", "H", "N", ".br", ".sp", ".fi", ".nf", ".in", ".ti",
                                       ".sk", ".ce"})  # fmt: skip
_ESCAPE_MAP: Final = {"\n": ".br"}  # python-hl7 escapes CR as \.br\; a line feed is a line break too

Node = Any  # a python-hl7 container (a list subclass) or a str leaf


class _WithheldArguments(logging.Filter):
    """Drops the arguments (field text) of python-hl7's log records: the event stays, the PHI does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = f"python-hl7: {str(record.msg).split('[', 1)[0].strip()} (message text withheld)"
            record.args = None
        return True


for _module in (hl7.util, hl7.containers):
    logging.getLogger(_module.logger.name).addFilter(_WithheldArguments())


@lru_cache(maxsize=64)
def _container(field: str, component: str, repetition: str, esc: str, subcomponent: str) -> Node:
    """An empty python-hl7 message with these separators (what its escape functions read them from; never
    changed, so one per set of separators is shared)."""
    separators = f"\r{field}{repetition}{component}{subcomponent or NO_SUBCOMPONENT}"
    return hl7.Message(separators=separators, esc=esc or NO_ESCAPE)


#: A field split: its repetitions, each (as written, its components), each component (as written, its
#: subcomponents as written).
Component = tuple[str, tuple[str, ...]]
Repetition = tuple[str, tuple[Component, ...]]
#: Fields up to this length have their split cached (a code, a unit, a device: at most ~10 MB for 1024 of them).
_CACHED_FIELD_CHARS: Final = 128


def _children(node: Node) -> list[Node]:
    """The parts of a python-hl7 node; a str leaf is its own only part."""
    return [node] if isinstance(node, str) else list(node)


def _text(node: Node) -> str:
    """A node as written (python-hl7 joins the parts with the separators they were split on)."""
    return node if isinstance(node, str) else str(node)


def split_field(raw: str, field: str, component: str, repetition: str, esc: str, subcomponent: str) -> tuple[
        Repetition, ...]:  # fmt: skip
    """A field (as written, not empty, of a message with these separators) split by python-hl7."""
    if len(raw) <= _CACHED_FIELD_CHARS:
        return _split_cached(raw, field, component, repetition, esc, subcomponent)
    return _split(raw, field, component, repetition, esc, subcomponent)


def _split(raw: str, field: str, component: str, repetition: str, esc: str, subcomponent: str) -> tuple[
        Repetition, ...]:  # fmt: skip
    characters = f"{component}{repetition}{esc or NO_ESCAPE}{subcomponent or NO_SUBCOMPONENT}"
    # A bare MSH declares the separators; the field is the first of a Z segment, a separator after it so that
    # python-hl7's strip() of the message keeps the field's trailing spaces.
    node = hl7.parse(f"MSH{field}{characters}{field}\rZZZ{field}{raw}{field}")[1][1]
    return tuple(
        (_text(rep), tuple((_text(comp), tuple(_text(sub) for sub in _children(comp))) for comp in _children(rep)))
        for rep in _children(node)
    )


_split_cached = lru_cache(maxsize=1024)(_split)


def escape(value: str, field: str, component: str, repetition: str, esc: str, subcomponent: str) -> str:
    """`value` escaped for a field with these separators (see the module docstring for what is ours)."""
    if not esc:
        return value
    container = _container(field, component, repetition, esc, subcomponent)
    out: list[str] = []
    run: list[str] = []
    for ch in value:
        if " " <= ch <= "~" or ch in "\r\n":
            run.append(ch)
            continue
        if run:
            out.append(hl7.util.escape(container, "".join(run), _ESCAPE_MAP))
            run = []
        out.append(ch if ord(ch) >= 0xA0 else _hex(ch, esc))  # beyond ASCII: as is (UTF-8); controls: hex
    if run:
        out.append(hl7.util.escape(container, "".join(run), _ESCAPE_MAP))
    return "".join(out)


def _hex(ch: str, esc: str) -> str:
    """A control character (C0, DEL or C1) as `\\Xhh\\` of its UTF-8 bytes."""
    return f"{esc}X{ch.encode('utf-8').hex().upper()}{esc}"


def unescape(value: str, field: str, component: str, repetition: str, esc: str, subcomponent: str) -> str:
    """`value` with its escape sequences read (see the module docstring for which python-hl7 reads)."""
    if not esc or esc not in value:
        return value
    container = _container(field, component, repetition, esc, subcomponent)
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        start = value.find(esc, i)
        if start < 0:
            out.append(value[i:])
            break
        out.append(value[i:start])
        end = value.find(esc, start + 1)
        if end < 0:  # unterminated: kept as written
            out.append(value[start:])
            break
        code, raw = value[start + 1 : end], value[start : end + 1]
        if code in _LIBRARY_SEQUENCES:
            out.append(hl7.util.unescape(container, raw, _UNESCAPE_MAP))
        elif code[:1] == "X":
            out.append(_from_hex(code[1:], raw))
        else:  # empty, \C..\, \M..\, \Z..\ or unknown: kept as written
            out.append(raw)
        i = end + 1
    return "".join(out)


def _from_hex(digits: str, raw: str) -> str:
    if not digits or len(digits) % 2:
        return raw
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return raw
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def ack_skeleton(header: str, code: str, control_id: str, application: str, facility: str) -> Node:
    """python-hl7's ACK for a one-segment message `header` (an MSH in the standard separators, escaped).

    MSH-3/4 are `application`/`facility` (escaped by the caller), MSH-5/6 the header's MSH-3/4, MSH-9
    `ACK^<header's trigger>^ACK`, MSH-10 `control_id`, MSH-11/12 and MSA-2 copied; MSH-7 is python-hl7's clock,
    which the caller replaces.
    """
    return hl7.parse(header).create_ack(code, message_id=control_id, application=application, facility=facility)


def assign(message: Node, segment: str, field: int, value: str) -> None:
    """Set a field of the first `segment` of a python-hl7 message to raw (already escaped) text."""
    message.segment(segment).assign_field(value, field)
