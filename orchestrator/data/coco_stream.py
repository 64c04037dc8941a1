"""Read a COCO instances json without holding all of its annotations in memory at once.

``json.load`` of COCO train2017 (450 MB, 860k polygons) builds about 2 GiB of Python objects,
and the garbage collector walks them again and again while they accumulate. A check needs
the images and categories all at once but each annotation only once, in order. So this reads
the top-level object with the standard library's own decoder one array element at a time,
from a window onto the file, keeps every top-level value except the annotations, and reads
the file again to hand out the annotations one by one.

Anything this reader does not expect (top level not an object, a key given twice, invalid
JSON or UTF-8, an element larger than the window may grow) raises ``Irregular`` or the
error itself; callers then fall back to ``json.load``, whose result and errors stay the
reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from orchestrator.errors import InputError

__all__ = ["Irregular", "CocoFile", "stream_coco"]

STREAMED = "annotations"
CHUNK = 1 << 22  # characters read at a time
_TAIL = 4  # a number ending this close to the window's end may go on after it
_REFILL = 1 << 16  # read more once less than this is left unread
_MAX_VALUE = 1 << 26  # a single element larger than this: leave it to json.load
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # what the json module skips between tokens
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class Irregular(ValueError):
    """The streaming reader gives up on this file; ``json.load`` decides what it is."""


class _Window:
    """The unread part of a text file, extended chunk by chunk as values need it."""

    def __init__(self, f: TextIO, chunk: int) -> None:
        self._f = f
        self._chunk = chunk
        self._eof = False
        self.text = ""
        self.pos = 0

    def more(self) -> bool:
        """Read another chunk after the unread part; False at the end of the file."""
        data = "" if self._eof else self._f.read(self._chunk)
        if not data:
            self._eof = True
            return False
        self.text = self.text[self.pos:] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next character after whitespace, not consumed ('' at the end of the file)."""
        while True:
            match = _WHITESPACE.match(self.text, self.pos)
            assert match is not None  # the pattern matches the empty string
            self.pos = match.end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def take(self, expected: str) -> None:
        if self.peek() != expected:
            raise Irregular(f"expected {expected!r}")
        self.pos += 1

    def value(self) -> Any:
        """One JSON value, decoded by the json module's own scanner.

        A value that runs into the end of the window, or ends in its last few characters
        (a number cut at "1." decodes as 1), is decoded again once the window holds more.
        """
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if len(self.text) - self.pos < _MAX_VALUE and self.more():
                    continue
                raise Irregular(str(exc)) from None
            if end < len(self.text) - _TAIL or not self.more():
                self.pos = end
                return value


def _elements(window: _Window) -> Iterator[Any]:
    """The elements of the array whose '[' was just consumed, one at a time.

    The loop decodes straight from the window while an element and the separator after it
    lie inside it (nearly always), and leaves the window's edge to ``_Window``.
    """
    if window.peek() == "]":
        window.pos += 1
        return
    decode = _DECODER.raw_decode
    while True:
        if len(window.text) - window.pos < _REFILL:  # read on before an element is cut:
            window.more()  # a failed decode costs a line count of the whole window
        text, pos = window.text, window.pos
        try:
            value, end = decode(text, pos)
        except json.JSONDecodeError:
            end = len(text)
        separator = _SEPARATOR.match(text, end) if end < len(text) - _TAIL else None
        if separator is None:  # at the window's edge (or invalid): the careful way
            value = window.value()
            following = window.peek()
            window.pos += 1
            window.peek()  # the fast path starts at a value, not at whitespace
        else:
            following = separator.group(1)
            window.pos = separator.end()
        yield value
        if following == "]":
            return
        if following != ",":
            raise Irregular("expected ',' or ']' in an array")


def _array(window: _Window, keep: bool) -> list[Any]:
    """An array whose '[' was just consumed: its elements, or [] once each is decoded."""
    if keep:
        return list(_elements(window))
    for _ in _elements(window):
        pass
    return []


def _walk(path: Path, top: dict[str, Any] | None, chunk: int) -> Iterator[Any]:
    """Yield the elements of the top-level 'annotations' array. Every other top-level value
    goes into ``top`` (arrays read element by element), or is decoded and let go when
    ``top`` is None. A streamed 'annotations' array is left in ``top`` as []."""
    seen: set[str] = set()
    with Path(path).open(encoding="utf-8") as f:
        window = _Window(f, chunk)
        window.take("{")
        following = window.peek()
        if following == "}":
            window.pos += 1
        while following != "}":
            if window.peek() != '"':
                raise Irregular("expected a key")
            key = window.value()
            if key in seen:  # json.load keeps the last one
                raise Irregular(f"key {key!r} given twice")
            seen.add(key)
            window.take(":")
            if window.peek() != "[":
                value = window.value()
            else:
                window.pos += 1
                if key == STREAMED:
                    yield from _elements(window)
                value = [] if key == STREAMED else _array(window, top is not None)
            if top is not None:
                top[key] = value
            following = window.peek()
            window.pos += 1
            if following not in {",", "}"}:
                raise Irregular("expected ',' or '}' after a value")
        if window.peek():
            raise Irregular("extra data after the top-level object")


@dataclass(frozen=True)
class CocoFile:
    """A COCO instances file: its top-level values, and its annotations one at a time.

    ``path`` is set when the annotations stay in the file (``top['annotations']`` is then []);
    otherwise ``top`` holds them as loaded.
    """

    top: dict[str, Any]
    num_annotations: int
    path: Path | None = None
    chunk: int = CHUNK

    @classmethod
    def loaded(cls, coco: dict[str, Any]) -> CocoFile:
        """A document already in memory (``json.load``'s result)."""
        annotations = coco.get(STREAMED)
        return cls(top=coco, num_annotations=len(annotations)
                   if isinstance(annotations, list) else 0)

    def annotations(self) -> Iterator[Any]:
        """Every annotation in file order; a file that changed since it was opened is an
        InputError (its findings would mix two versions)."""
        if self.path is None:
            yield from self.top[STREAMED]
            return
        count = 0
        try:
            for annotation in _walk(self.path, None, self.chunk):
                count += 1
                yield annotation
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.path}: changed while it was being read ({exc}); "
                             "check it again") from None
        if count != self.num_annotations:
            raise InputError(f"{self.path}: changed while it was being read ({count} "
                             f"annotations, {self.num_annotations} before); check it again")


def stream_coco(path: Path, *, each: Callable[[Any], None] | None = None,
                chunk: int = CHUNK) -> CocoFile:
    """Read everything but the annotations, which are counted (and handed to ``each``, in
    order, when given) and left in the file.

    Raises:
        Irregular, OSError, UnicodeDecodeError: read it with ``json.load`` instead.
    """
    top: dict[str, Any] = {}
    count = 0
    for annotation in _walk(path, top, chunk):
        count += 1
        if each is not None:
            each(annotation)
    streamed = top.get(STREAMED) == [] and count > 0
    return CocoFile(top=top, num_annotations=count, path=Path(path) if streamed else None,
                    chunk=chunk)
