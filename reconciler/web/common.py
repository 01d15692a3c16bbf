"""What the status pages share: their templates, policy, favicon, formatters and event bodies.

Each page is one HTML file (``agent.html``, ``manager.html``) whose ``<style>`` and
``<script>`` start with the shared parts, ``{{> shared.css}}`` and ``{{> shared.js}}``.
``template`` inlines them once, at import, so what a browser gets is still one self-contained
file, and ``content_security_policy`` allows exactly that file's own style and script (by hash),
connections back to where it came from, and ``data:`` images (the favicon). No CDN, no font, no
build step: the files are package data, read with ``importlib``.

The formatters (``fmt_*``) and the markup helpers here have twins in ``shared.js``: the server
renders the page complete (JavaScript off, it is a static snapshot) and the script keeps it
current, each cell in one plain form either way. Every text that comes from the fleet or the
node is escaped here and set as text by the script, never as markup.

``EventBodies`` caches a page's event bodies per model (and the last delta per pair), so
several open pages share the work of one change; each body gets the server's time as it is
sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from importlib import resources
from typing import Any, Final, Generic, TypeVar

from reconciler.core.codec import compact

__all__ = [
    "DASH",
    "ICON_BAD",
    "ICON_OK",
    "EventBodies",
    "Field",
    "badge",
    "card",
    "code",
    "content_security_policy",
    "fill",
    "fmt_ago",
    "fmt_bytes",
    "fmt_labels",
    "fmt_text",
    "fmt_time",
    "snapshot_stamp",
    "template",
]

DASH: Final = "\u2014"
_PARTIAL: Final = re.compile(r"\{\{> ([\w.]+)\}\}")
_SHARED: Final = frozenset({"shared.css", "shared.js"})


def _read(name: str, package: str = __package__) -> str:
    return resources.files(package).joinpath(name).read_text("utf-8")


def template(name: str, package: str = __package__) -> str:
    """The page file ``name`` of ``package`` with the shared parts of this package inlined.
    Raises ``RuntimeError`` for an unknown part."""

    def part(m: re.Match[str]) -> str:
        if m.group(1) not in _SHARED:
            raise RuntimeError(f"{name}: no shared part {m.group(1)!r}")
        return _read(m.group(1)).rstrip("\n")

    return _PARTIAL.sub(part, _read(name, package))


def _hash(page: str, kind: str) -> str:
    match = re.search(rf"<{kind}>(.*?)</{kind}>", page, re.DOTALL)
    if match is None:
        raise RuntimeError(f"the page has no <{kind}> block")
    digest = hashlib.sha256(match.group(1).encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def content_security_policy(page: str) -> str:
    """Only ``page``'s own inline style and script; connections only back to where it came
    from; ``data:`` images."""
    return (
        f"default-src 'none'; script-src {_hash(page, 'script')}; "
        f"style-src {_hash(page, 'style')}; "
        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def fill(page: str, values: Mapping[str, str]) -> str:
    """``page`` with every ``{{name}}`` replaced by ``values[name]`` (already escaped)."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], page)


def _icon(color: str) -> str:
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
        f"<circle cx='8' cy='8' r='7' fill='{color}'/></svg>"
    )
    return "data:image/svg+xml," + svg.replace("<", "%3C").replace(">", "%3E").replace("#", "%23")


ICON_OK: Final = _icon("#1a7f37")
ICON_BAD: Final = _icon("#cf222e")


# ---------------------------------------------------------------------------- formatting
# Each mirrors a formatter of the pages' script (FORMAT in shared.js).


def fmt_text(value: object) -> str:
    return DASH if value is None or value == "" else str(value)


def _parse(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def fmt_time(iso: str | None) -> str:
    if not iso:
        return "never"
    return dt.datetime.fromtimestamp(_parse(iso), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_ago(iso: str | None, now: float) -> str:
    """How long since ``iso``: ``42s``, ``5m 3s``, ``2h 7m``, ``3d 4h``."""
    if not iso:
        return DASH
    s = max(0, int((now - _parse(iso)) // 1))
    if s < 60:
        return f"{s}s"
    m = s // 60
    if m < 60:
        return f"{m}m {s % 60}s"
    h = m // 60
    if h < 24:
        return f"{h}h {m % 60}m"
    return f"{h // 24}d {h % 24}h"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return DASH
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    v, i = float(value), 0
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{value} B" if i == 0 else f"{v:.1f} {units[i]}"


def fmt_labels(value: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (value or {}).items()) or DASH


def fmt_reason(value: str | None) -> str:
    return "" if not value or value == "ready" else value


def snapshot_stamp(now: float) -> str:
    """What the page says until its script runs: when it was rendered."""
    stamp = dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"Snapshot of {stamp}; live updates need JavaScript."


# ---------------------------------------------------------------------------- markup


def code(value: str | None, full: str | None = None) -> str:
    if not value:
        return DASH
    title = f' title="{escape(full)}"' if full and full != value else ""
    return f"<code{title}>{escape(value)}</code>"


def badge(state: str) -> str:
    return f'<span class="st s-{escape(state)}">{escape(state)}</span>'


def ago(iso: str | None, now: float) -> str:
    """A ``<time>`` whose text the script keeps ticking."""
    return f'<time class="ago" datetime="{escape(iso or "")}">{fmt_ago(iso, now)}</time>'


@dataclass(frozen=True, slots=True)
class Field:
    """One ``<dt>``/``<dd>`` pair of a card; ``key`` is ``object.key`` in the page state."""

    label: str
    key: str
    fmt: str = "text"  # text, bool (coloured), flag (plain), word, time, ago, bytes, labels
    yes: str = ""  # for bool and flag
    no: str = ""
    reason: str = ""  # a key whose value follows, formatted as a reason (readiness)


def _lookup(state: Mapping[str, Any], key: str) -> Any:
    part, _, name = key.partition(".")
    return (state.get(part) or {}).get(name)


def _field(f: Field, state: Mapping[str, Any], now: float, words: Mapping[str, str]) -> str:
    value = _lookup(state, f.key)
    attrs = f'data-k="{escape(f.key)}" data-f="{f.fmt}"'
    if f.fmt == "flag":
        text = f.yes if value else f.no
        return f'<span {attrs} data-yes="{f.yes}" data-no="{f.no}">{text}</span>'
    if f.fmt == "bool":
        cls = "ok" if value else "bad"
        text = f.yes if value else f.no
        body = f'<span {attrs} data-yes="{f.yes}" data-no="{f.no}" class="{cls}">{text}</span>'
        if f.reason:
            reason = fmt_reason(_lookup(state, f.reason))
            body += (
                f' <span class="why" data-k="{f.reason}" data-f="reason">{escape(reason)}</span>'
            )
        return body
    if f.fmt == "word":
        text = words.get(str(value), fmt_text(value))
        return f'<span {attrs} class="w-{escape(str(value))}">{escape(text)}</span>'
    if f.fmt in ("ago", "time"):
        text = fmt_ago(value, now) if f.fmt == "ago" else fmt_time(value)
        cls = ' class="ago"' if f.fmt == "ago" else ""
        return f'<time {attrs}{cls} datetime="{escape(value or "")}">{escape(text)}</time>'
    if f.fmt == "bytes":
        text = fmt_bytes(value)
    elif f.fmt == "labels":
        text = fmt_labels(value)
    else:
        text = fmt_text(value)
    return f"<span {attrs}>{escape(text)}</span>"


def card(
    title: str,
    fields: Sequence[Field],
    state: Mapping[str, Any],
    now: float,
    words: Mapping[str, str] | None = None,
) -> str:
    """A titled ``<section>`` of fields, each kept current by the script's ``fields()``."""
    slug = title.lower().replace(" ", "-")
    rows = "".join(
        f"<dt>{escape(f.label)}</dt><dd>{_field(f, state, now, words or {})}</dd>" for f in fields
    )
    return (
        f'<section class="card" aria-labelledby="h-{slug}">'
        f'<h2 id="h-{slug}">{escape(title)}</h2><dl>{rows}</dl></section>'
    )


# ---------------------------------------------------------------------------- events


M = TypeVar("M")


class EventBodies(Generic[M]):
    """A page's event bodies, cached per model object (and the last delta per pair of them).

    ``full`` and ``delta`` build the JSON object without its time; each body sent gets the
    server's current time (``clock``) as its first key, ``now``.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._full: tuple[M | None, bytes] = (None, b"")
        self._delta: tuple[M | None, M | None, bytes | None] = (None, None, None)

    def full(self, model: M, build: Callable[[], dict[str, Any]]) -> bytes:
        cached, body = self._full
        if cached is not model:
            body = compact(build())
            self._full = (model, body)
        return self._with_now(body)

    def delta(self, old: M, new: M, build: Callable[[], dict[str, Any] | None]) -> bytes | None:
        cached_old, cached_new, body = self._delta
        if cached_old is not old or cached_new is not new:
            change = build()
            body = None if change is None else compact(change)
            self._delta = (old, new, body)
        return None if body is None else self._with_now(body)

    def _with_now(self, body: bytes) -> bytes:
        """``body`` (a JSON object) with the server's current time as its first key."""
        now = dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)
        stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rest = body[1:] if body == b"{}" else b"," + body[1:]
        return b'{"now":"' + stamp.encode() + b'"' + rest
