"""Helpers for the workshop checks: read HTML the way a browser would, and require parts.

The checks look at what the app sends (pages, stream fragments), never at its source, so a
learner may solve an exercise any way that behaves as asked. ``parse_html`` builds a small
element tree with the standard library's parser; ``require`` makes a missing system part
(Chromium, nginx, Redis, gcc) a skip with a reason, or a failure on CI (``CI=true``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

# Elements that never have content or an end tag.
_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


@dataclass(eq=False)
class Element:
    """One element of a parsed page or fragment: its tag, attributes and content."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Element | str] = field(default_factory=list)
    parent: Element | None = None

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        """The element's text, with runs of whitespace collapsed (as a browser shows it)."""
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join("".join(parts).split())

    def iter(self) -> Iterator[Element]:
        """This element and every element inside it, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter()

    def find_all(self, match: Callable[[Element], bool]) -> list[Element]:
        return [e for e in self.iter() if match(e)]

    def ancestors(self) -> Iterator[Element]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def __repr__(self) -> str:
        attrs = "".join(f' {k}="{v}"' for k, v in self.attrs.items())
        return f"<{self.tag}{attrs}>"


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document")
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=self.open[-1])
        self.open[-1].children.append(element)
        if tag not in _VOID:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=self.open[-1])
        self.open[-1].children.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.open) - 1, 0, -1):
            if self.open[i].tag == tag:
                del self.open[i:]
                return

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse_html(markup: str) -> Element:
    """Parse a page or a fragment into a tree; the root is a ``#document`` element."""
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    return builder.root


def by_attr(name: str, value: str | None = None) -> Callable[[Element], bool]:
    """Matches elements that have attribute ``name`` (equal to ``value``, if given)."""
    return lambda e: name in e.attrs and (value is None or e.attrs[name] == value)


def by_class(name: str) -> Callable[[Element], bool]:
    return lambda e: name in e.classes


def quote_rows(root: Element) -> list[Element]:
    """The quote rows (``tr.quote``, one per symbol) in a page or a stream's fragment."""
    return root.find_all(lambda e: e.tag == "tr" and "quote" in e.classes)


def require(missing: list[str], how_to_enable: str) -> None:
    """Skip (or, on CI, fail) when a system part this check needs is missing."""
    if missing:
        message = f"{'; '.join(missing)}; {how_to_enable}"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
