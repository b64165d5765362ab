"""PromQL query templates: `$service` only as an escaped label value, and instant selectors held to one minute.

A template is tokenised, never searched and replaced as text: `$service` may appear only inside a double-quoted
label value of a selector (`{service="$service"}`), where a name is substituted with backslash, double quote
and control characters escaped by PromQL's (Go's) string rules. Whatever a service is called, it stays one label
value and cannot change what else the query selects.

Prometheus answers an instant selector with the newest sample of the last five minutes (its lookback delta),
so a series that stopped would repeat its last value into minutes that had no sample. The collector's
contract is that a value at t is the load of the minute ending at t and a minute without a sample has no row;
each instant selector is therefore evaluated as `last_over_time(selector[59s999ms])`: only samples of the
minute ending at t count. (Prometheus 2.43+ has a `lookback_delta` query parameter for this; rewriting the
query works on every version, including Debian's 2.42.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prescaler.errors import InputError

PLACEHOLDER = "$service"
MINUTE_LOOKBACK = "59s999ms"

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<dstring>"(?:[^"\\\n]|\\.)*")
  | (?P<sstring>'(?:[^'\\\n]|\\.)*')
  | (?P<raw>`[^`]*`)
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![A-Za-z0-9_]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],:@])
""", re.X)

# Words that are never metric names where they stand (PromQL matches them case-insensitively).
_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
    "atan2", "inf", "nan",
})
_LABEL_LIST = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
})
_CLOSING = {"(": ")", "{": "}", "[": "]"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int


def _tokenize(text: str, field: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            snippet = text[pos:pos + 12]
            if text.startswith(PLACEHOLDER, pos):
                raise InputError(f"{field}: $service must be inside a double-quoted label value, "
                                 f'e.g. {{service="$service"}} (at character {pos + 1})')
            raise InputError(f"{field}: unexpected {snippet!r} at character {pos + 1}")
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(), pos))
        pos = match.end()
    return tokens


def escape_label_value(value: str) -> str:
    """`value` as the body of a double-quoted PromQL string (Go escapes), so it reads back unchanged."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


class QueryTemplate:
    """A validated template; `render(service)` gives the query for one service."""

    def __init__(self, text: str, *, field: str = "query") -> None:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{field}: expected a PromQL expression containing {PLACEHOLDER}")
        self.text = text
        self._tokens = [t for t in _tokenize(text, field) if t.kind not in ("ws", "comment")]
        self._placeholders = self._check_placeholders(field)
        # Character offset -> text to insert there; built once, applied to every rendering.
        self._inserts: dict[int, str] = {}
        for first, last, after in self._instant_selectors():
            toks = self._tokens
            self._add(toks[first].start, "last_over_time(")
            self._add(toks[last].start + len(toks[last].text), f"[{MINUTE_LOOKBACK}]")
            self._add(toks[after - 1].start + len(toks[after - 1].text), ")")

    def _add(self, offset: int, text: str) -> None:
        self._inserts[offset] = self._inserts.get(offset, "") + text

    def _check_placeholders(self, field: str) -> dict[int, int]:
        """Start -> end offsets of the string tokens that hold $service; raises where it stands anywhere else."""
        total = self.text.count(PLACEHOLDER)
        if total == 0:
            raise InputError(f'{field}: must contain {PLACEHOLDER} in a label matcher, e.g. {{service="$service"}}')
        depth: list[str] = []
        found: dict[int, int] = {}
        counted = 0
        toks = self._tokens
        for i, tok in enumerate(toks):
            if tok.kind == "op" and tok.text in _CLOSING:
                depth.append(tok.text)
            elif tok.kind == "op" and tok.text in _CLOSING.values() and depth:
                depth.pop()
            if PLACEHOLDER not in tok.text:
                continue
            if tok.kind != "dstring":
                where = {"sstring": "a single-quoted string", "raw": "a raw (backtick) string"}.get(tok.kind, "text")
                raise InputError(f"{field}: $service is in {where}; it may only stand in a double-quoted label "
                                 'value, e.g. {service="$service"}')
            op = toks[i - 1] if i > 0 else None
            if (not depth or depth[-1] != "{" or op is None or op.kind != "op"
                    or op.text not in ("=", "!=", "=~", "!~")):
                raise InputError(f"{field}: $service is in a string that is not a label value; it may only stand "
                                 'in a label matcher, e.g. {service="$service"}')
            if op.text in ("=~", "!~"):
                raise InputError(f"{field}: $service is in a regular-expression matcher ({op.text}), where a "
                                 "name would be read as a pattern; match it literally with = or !=")
            found[tok.start] = tok.start + len(tok.text)
            counted += tok.text.count(PLACEHOLDER)
        if counted != total:  # the rest sit in comments, which the token list leaves out
            raise InputError(f"{field}: $service may only stand in a double-quoted label value "
                             '(e.g. {service="$service"}), not in a comment')
        return found

    def _instant_selectors(self) -> list[tuple[int, int, int]]:
        """Instant vector selectors as (first token, last token, first token after its modifiers)."""
        toks = self._tokens
        n = len(toks)
        found: list[tuple[int, int, int]] = []

        def is_op(j: int, text: str) -> bool:
            return j < n and toks[j].kind == "op" and toks[j].text == text

        def match_close(i: int) -> int:
            opening, closing = toks[i].text, _CLOSING[toks[i].text]
            level = 0
            for j in range(i, n):
                if is_op(j, opening):
                    level += 1
                elif is_op(j, closing):
                    level -= 1
                    if level == 0:
                        return j
            return n - 1  # unbalanced: Prometheus will name the error

        i = 0
        while i < n:
            tok = toks[i]
            if is_op(i, "["):
                i = match_close(i) + 1  # durations and subquery steps
                continue
            if tok.kind == "ident":
                word = tok.text.lower()
                if word in _LABEL_LIST:
                    i = match_close(i + 1) + 1 if is_op(i + 1, "(") else i + 1
                    continue
                if (word in _KEYWORDS or is_op(i + 1, "(")
                        or (word in _AGGREGATIONS and i + 1 < n and toks[i + 1].text.lower() in _LABEL_LIST)):
                    i += 1
                    continue
                last = match_close(i + 1) if is_op(i + 1, "{") else i
            elif is_op(i, "{"):
                last = match_close(i)
            else:
                i += 1
                continue
            after = last + 1
            if is_op(after, "["):
                close = match_close(after)
                if not any(is_op(j, ":") for j in range(after + 1, close)):
                    i = close + 1  # a range selector already says which samples count
                    continue
            else:
                after = self._skip_modifiers(after)
            found.append((i, last, after))
            i = after
        return found

    def _skip_modifiers(self, j: int) -> int:
        """The index after `offset <duration>` and `@ <time>` modifiers that follow a selector at j."""
        toks = self._tokens
        n = len(toks)
        while j < n:
            if toks[j].kind == "ident" and toks[j].text.lower() == "offset":
                j += 1
            elif toks[j].kind == "op" and toks[j].text == "@":
                j += 1
                if j + 2 < n and toks[j].kind == "ident" and toks[j + 1].text == "(":
                    j += 3  # start() or end()
                    continue
            else:
                return j
            if j < n and toks[j].text in ("-", "+"):
                j += 1
            j += 1
        return min(j, n)

    def render(self, service: str) -> str:
        """The query for one service: its name escaped into each placeholder, selectors held to one minute."""
        if not service:
            raise InputError("a service name must not be empty: an empty label value matches every series "
                             "without the label")
        escaped = escape_label_value(service)
        out: list[str] = []
        pos = 0
        cuts = sorted(set(self._inserts) | set(self._placeholders))
        for cut in cuts:
            out.append(self.text[pos:cut])
            pos = cut
            out.append(self._inserts.get(cut, ""))
            end = self._placeholders.get(cut)
            if end is not None:
                out.append(self.text[cut:end].replace(PLACEHOLDER, escaped))
                pos = end
        out.append(self.text[pos:])
        return "".join(out)

    def __repr__(self) -> str:
        return f"QueryTemplate({self.text!r})"
