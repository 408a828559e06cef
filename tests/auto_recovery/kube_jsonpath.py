"""kubectl's ``-o jsonpath`` engine, ported from client-go for the fake kubectl.

The auto-recovery script parses what ``kubectl get -o jsonpath=...`` prints,
so the fake must print exactly what kubectl 1.27 prints for the same
template and objects, including the engine's quirks. This is a line-by-line
port of ``k8s.io/client-go/util/jsonpath`` as of client-go v0.26 (parser.go
and jsonpath.go; the engine is the same in 1.27). Its semantics are the
reason the port exists:

* ``{range}`` ... ``{end}`` with nested ranges, including a range over an
  empty list (fixed upstream in 1.20, PR 95933) and text after an inner
  ``{end}`` (fixed in 1.19, PR 88464);
* a missing key prints nothing: kubectl sets ``AllowMissingKeys(true)``;
* several results of one action print separated by single spaces;
* maps and lists print as compact JSON.

Filters (``[?()]``), recursive descent (``..``), unions, wildcard fields and
printing a JSON ``null`` (``<nil>`` in client-go v0.26, ``null`` in kubectl
1.32) are not ported: they raise :class:`Unsupported`, so a script that
starts relying on them fails its tests instead of being checked against a
guess. The API server omits empty fields, so a null reaches a template only
from a hand-written object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_SLICE = re.compile(r"^(-?\d*)(:-?\d*)?(:-?\d*)?$")


class Unsupported(Exception):
    """A template construct this port does not model."""


class JsonPathError(Exception):
    """An error kubectl itself would report for this template and data."""


# --- nodes ----------------------------------------------------------------


@dataclass(eq=False)
class ListNode:
    nodes: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class TextNode:
    text: str


@dataclass(eq=False)
class FieldNode:
    value: str


@dataclass(eq=False)
class IdentifierNode:
    name: str


@dataclass(eq=False)
class IntNode:
    value: int


@dataclass(eq=False)
class BoolNode:
    value: bool


@dataclass
class Param:
    value: int = 0
    known: bool = False
    derived: bool = False


@dataclass(eq=False)
class ArrayNode:
    params: tuple[Param, Param, Param]


# --- parser (parser.go) ------------------------------------------------------


def _is_terminator(char: str) -> bool:
    return char in ("", " ", "\t", "\r", "\n", ".", ",", "[", "]", "$", "@", "{", "}")


def _is_alphanumeric(char: str) -> bool:
    return char == "_" or char.isalpha() or char.isdigit()


def _unquote(text: str) -> str:
    """strconv.Unquote for the escapes a template uses, single quotes too."""
    if len(text) < 2 or text[0] != text[-1] or text[0] not in "\"'":
        raise JsonPathError(f"unquote string {text} error invalid syntax")
    body = text[1:-1]
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
    out = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            i += 1
            if i >= len(body) or body[i] not in escapes:
                raise Unsupported(f"escape in {text!r} is not modelled")
            out.append(escapes[body[i]])
        else:
            out.append(char)
        i += 1
    return "".join(out)


class Parser:
    """Turns a template into the same node list the Go parser builds."""

    def __init__(self, text: str) -> None:
        self.input = text
        self.pos = 0
        self.start = 0
        self.root = ListNode()

    def parse(self) -> ListNode:
        cur = self.root
        while True:
            # parseText: literal text up to the next '{'.
            index = self.input.find("{", self.pos)
            if index < 0:
                self.pos = len(self.input)
                if self.pos > self.start:
                    cur.nodes.append(TextNode(self._consume()))
                return self.root
            self.pos = index
            if self.pos > self.start:
                cur.nodes.append(TextNode(self._consume()))
            # parseLeftDelim: each action is one ListNode of the root.
            self.pos += 1
            self._consume()
            action = ListNode()
            self.root.nodes.append(action)
            self._inside_action(action)

    def _consume(self) -> str:
        value = self.input[self.start : self.pos]
        self.start = self.pos
        return value

    def _next(self) -> str:
        if self.pos >= len(self.input):
            return ""
        char = self.input[self.pos]
        self.pos += 1
        return char

    def _inside_action(self, cur: ListNode) -> None:
        while True:
            rest = self.input[self.pos :]
            if rest.startswith("}"):
                self.pos += 1
                self._consume()
                return
            if rest.startswith("[?("):
                raise Unsupported("filters [?(...)] are not modelled")
            if rest.startswith(".."):
                raise Unsupported("recursive descent '..' is not modelled")
            char = self._next()
            if char == "" or char in "\r\n":
                raise JsonPathError("unclosed action")
            if char in " @$":
                self._consume()
            elif char == "[":
                self._array(cur)
            elif char in "\"'":
                self._quote(cur, char)
            elif char == ".":
                self._field(cur)
            elif char in "+-" or char.isdigit():
                self.pos -= 1
                self._number(cur)
            elif _is_alphanumeric(char):
                self.pos -= 1
                self._identifier(cur)
            else:
                raise JsonPathError(f"unrecognized character in action: {char!r}")

    def _identifier(self, cur: ListNode) -> None:
        while not _is_terminator(self._peek()):
            self.pos += 1
        value = self._consume()
        if value in ("true", "false"):
            cur.nodes.append(BoolNode(value == "true"))
        else:
            cur.nodes.append(IdentifierNode(value))

    def _peek(self) -> str:
        return self.input[self.pos] if self.pos < len(self.input) else ""

    def _number(self, cur: ListNode) -> None:
        if self._peek() in "+-":
            self.pos += 1
        while self._peek() == "." or self._peek().isdigit():
            self.pos += 1
        value = self._consume()
        if not re.fullmatch(r"[+-]?\d+", value):
            raise Unsupported(f"number {value!r} is not modelled")
        cur.nodes.append(IntNode(int(value)))

    def _array(self, cur: ListNode) -> None:
        while True:
            char = self._next()
            if char in ("", "\n"):
                raise JsonPathError("unterminated array")
            if char == "]":
                break
        text = self._consume()[1:-1]
        if text == "*":
            text = ":"
        if "," in text:
            raise Unsupported("unions [a,b] are not modelled")
        if re.fullmatch(r"'[^']*'", text):
            raise Unsupported("dict keys ['key'] are not modelled")
        match = _SLICE.match(text)
        if match is None:
            raise JsonPathError(f"invalid array index {text}")
        groups = [match.group(i) or "" for i in (1, 2, 3)]
        params = (Param(), Param(), Param())
        for i in range(3):
            value = groups[i]
            if value != "":
                if i > 0:
                    value = value[1:]
                if i > 0 and value == "":
                    params[i].known = False
                else:
                    params[i].known = True
                    params[i].value = int(value)
            elif i == 1:
                params[i].known = True
                params[i].value = params[0].value + 1
                params[i].derived = True
        cur.nodes.append(ArrayNode(params))

    def _quote(self, cur: ListNode, end: str) -> None:
        while True:
            char = self._next()
            if char in ("", "\n"):
                raise JsonPathError("unterminated quoted string")
            if char == end and self.input[self.pos - 2] != "\\":
                break
        cur.nodes.append(TextNode(_unquote(self._consume())))

    def _field(self, cur: ListNode) -> None:
        self._consume()
        while True:
            char = self._next()
            if char == "\\":
                self._next()
            elif _is_terminator(char):
                if char:
                    self.pos -= 1
                break
        value = self._consume()
        if value == "*":
            raise Unsupported("wildcard fields .* are not modelled")
        cur.nodes.append(FieldNode(value.replace("\\", "")))


# --- evaluation (jsonpath.go) -----------------------------------------------


_NIL = object()
"""A JSON null held in a map or list, which Go keeps as a nil interface."""


class JsonPath:
    """One parsed template, executed the way JSONPath.Execute does."""

    def __init__(self, template: str) -> None:
        self.root = Parser(template).parse()
        self.begin_range = 0
        self.in_range = 0
        self.end_range = 0
        self.last_end_node: Any = None

    def execute(self, data: Any) -> str:
        out = []
        for results in self._find_results(data):
            out.append(" ".join(_to_text(value) for value in results))
        return "".join(out)

    def _find_results(self, data: Any) -> list[list[Any]]:
        cur = [data]
        nodes = self.root.nodes
        full: list[list[Any]] = []
        i = 0
        while i < len(nodes):
            node = nodes[i]
            results = self._walk(cur, node)
            # An end node: this block is done.
            if self.end_range > 0 and self.end_range <= self.in_range:
                self.end_range -= 1
                self.last_end_node = node
                break
            # A range node: run the nodes after it once per result.
            if self.begin_range > 0:
                self.begin_range -= 1
                self.in_range += 1
                if results:
                    for value in results:
                        self.root.nodes = nodes[i + 1 :]
                        full.extend(self._find_results(value))
                else:
                    # Still walk the block so the position reaches its end.
                    self.root.nodes = nodes[i + 1 :]
                    self._find_results(None)
                self.in_range -= 1
                # Resume after the most recent end node.
                for k in range(i + 1, len(nodes)):
                    if nodes[k] is self.last_end_node:
                        i = k
                        break
                i += 1
                continue
            full.append(results)
            i += 1
        return full

    def _walk(self, values: list[Any], node: Any) -> list[Any]:
        if isinstance(node, ListNode):
            for inner in node.nodes:
                values = self._walk(values, inner)
            return values
        if isinstance(node, TextNode):
            return [node.text]
        if isinstance(node, FieldNode):
            return self._field(values, node)
        if isinstance(node, ArrayNode):
            return self._array(values, node)
        if isinstance(node, IntNode | BoolNode):
            return [node.value for _ in values]
        if isinstance(node, IdentifierNode):
            return self._identifier(values, node)
        raise Unsupported(f"node {node!r}")

    def _identifier(self, values: list[Any], node: IdentifierNode) -> list[Any]:
        if node.name == "range":
            self.begin_range += 1
            return values
        if node.name == "end":
            if self.in_range > 0:
                self.end_range += 1
                return []
            raise JsonPathError("not in range, nothing to end")
        raise JsonPathError(f"unrecognized identifier {node.name}")

    @staticmethod
    def _field(values: list[Any], node: FieldNode) -> list[Any]:
        results = []
        for value in values:
            if value is None or value is _NIL:
                continue
            if isinstance(value, dict) and node.value in value:
                item = value[node.value]
                results.append(_NIL if item is None else item)
        # kubectl allows missing keys: nothing found prints nothing.
        return results

    @staticmethod
    def _array(values: list[Any], node: ArrayNode) -> list[Any]:
        result: list[Any] = []
        for value in values:
            if value is None or value is _NIL:
                continue
            if not isinstance(value, list):
                raise JsonPathError(f"{type(value).__name__} is not array or slice")
            start, stop, step = (
                Param(p.value, p.known, p.derived) for p in node.params
            )
            length = len(value)
            if not start.known:
                start.value = 0
            if start.value < 0:
                start.value += length
            if not stop.known:
                stop.value = length
            if stop.value < 0 or (stop.value == 0 and stop.derived):
                stop.value += length
            if stop.value != start.value:
                if start.value >= length or start.value < 0:
                    raise JsonPathError(
                        f"array index out of bounds: index {start.value}, "
                        f"length {length}"
                    )
                if stop.value > length or stop.value < 0:
                    raise JsonPathError(
                        f"array index out of bounds: index {stop.value - 1}, "
                        f"length {length}"
                    )
                if start.value > stop.value:
                    raise JsonPathError(
                        f"starting index {start.value} is greater than ending "
                        f"index {stop.value}"
                    )
            else:
                # Go returns here, skipping any further input values.
                return result
            stride = 1
            if step.known:
                if step.value <= 0:
                    raise JsonPathError("step must be > 0")
                stride = step.value
            items = value[start.value : stop.value : stride]
            result.extend(_NIL if item is None else item for item in items)
        return result


def _to_text(value: Any) -> str:
    """PrintResults: JSON for maps and lists, fmt.Print for the rest."""
    if value is _NIL or value is None:
        raise Unsupported("printing a JSON null is not modelled")
    if isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        # encoding/json escapes these for HTML safety.
        return (
            text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # Integral JSON numbers reach kubectl's printer as int64; a fraction
        # would print in Go's %v float format, which is not modelled.
        raise Unsupported(f"float {value!r} output is not modelled")
    return str(value)


def render(template: str, data: Any) -> str:
    """What ``kubectl ... -o jsonpath=TEMPLATE`` prints for ``data``."""
    return JsonPath(template).execute(data)
