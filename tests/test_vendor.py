"""The vendored htmx files are the pinned, unmodified upstream files, and they are the only JS.

No custom JavaScript may be written in this project: the templates must not carry inline
scripts, event-handler attributes, ``hx-on``, ``javascript:`` URLs or htmx features that
evaluate JavaScript, and every ``<script>`` must load a file listed in static/vendor/vendor.json.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ticker import vendor

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
TEMPLATES = ROOT / "templates"

# .js, .mjs, .cjs and derived files (.js.gz, .js.map) all count as JavaScript.
JS_NAME = re.compile(r"\.[mc]?js(\.|$)", re.IGNORECASE)


def manifest_js_paths() -> set[str]:
    return {
        e["path"]
        for e in vendor.listed_files(vendor.load_manifest(ROOT))
        if JS_NAME.search(e["path"])
    }


# --- the vendored files -------------------------------------------------------------------


def test_manifest_records_exactly_the_pinned_packages() -> None:
    manifest = vendor.load_manifest(ROOT)
    assert [p["spec"] for p in manifest["packages"]] == [
        pin.spec for pin in vendor.PINS
    ]
    sources = {e["from"] for e in vendor.listed_files(manifest)}
    assert "package/dist/ext/sse.js" not in sources, "that is the htmx 1 SSE extension"
    for package in manifest["packages"]:
        assert package["integrity"].startswith("sha512-")
        assert any(
            Path(e["path"]).name.startswith("LICENSE.") for e in package["files"]
        ) or ("license_note" in package), (
            f"{package['spec']}: no licence file and no note saying why"
        )


def test_vendored_files_match_recorded_sha256() -> None:
    assert vendor.check(ROOT) == []


def test_sha256_check_reports_an_edited_or_missing_vendored_file(
    tmp_path: Path,
) -> None:
    shutil.copytree(STATIC / "vendor", tmp_path / "static" / "vendor")
    assert vendor.check(tmp_path) == []
    edited, removed = sorted(manifest_js_paths())[:2]
    with (tmp_path / edited).open("ab") as f:
        f.write(b"\n")
    (tmp_path / removed).unlink()
    problems = vendor.check(tmp_path)
    assert len(problems) == 2
    assert any(edited in p and "SHA-256" in p for p in problems)
    assert any(removed in p and "missing" in p for p in problems)


def test_only_javascript_under_static_is_the_vendored_files() -> None:
    found = {
        p.relative_to(ROOT).as_posix()
        for p in STATIC.rglob("*")
        if p.is_file() and JS_NAME.search(p.name)
    }
    listed = manifest_js_paths()
    assert {"static/vendor/htmx.min.js"} <= listed
    assert found == listed


# --- the templates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    line: int
    rule: str  # "script" | "event-handler" | "javascript-url" | "htmx-eval"
    detail: str


JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
JINJA_STATEMENT = re.compile(r"\{%.*?%\}", re.DOTALL)
JINJA_EXPRESSION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
EVENT_HANDLER_ATTR = re.compile(r"on[a-z]+")
EVENT_HANDLER_RAW = re.compile(r"(?<![\w-])on[a-z]+\s*=", re.IGNORECASE)
HX_ON = re.compile(r"(data-)?hx-on", re.IGNORECASE)
JS_URL = re.compile(r"javascript\s*:", re.IGNORECASE)
JS_PREFIXED_VALUE = re.compile(r"\s*(js|javascript)\s*:", re.IGNORECASE)


def _blank_keeping_lines(match: re.Match[str], fill: str = " ") -> str:
    return fill + "\n" * match.group(0).count("\n")


def _neutralise_jinja(text: str) -> str:
    """Drop Jinja comments and statements; keep only path-like characters of expressions.

    Statements become a space so ``<a {% if x %}onclick=...{% endif %}>`` is still seen as an
    attribute; expressions keep ``\\w . / -`` so a script ``src`` built with ``url_for`` still
    names its file, and cannot inject quotes, ``=`` or ``>`` into what the parser sees.
    """
    text = JINJA_COMMENT.sub(_blank_keeping_lines, text)
    text = JINJA_STATEMENT.sub(_blank_keeping_lines, text)
    return JINJA_EXPRESSION.sub(
        lambda m: (
            "{{"
            + re.sub(r"[^\w./-]", "_", m.group(1))
            + "}}"
            + "\n" * m.group(0).count("\n")
        ),
        text,
    )


def _names_vendored_file(src: str, allowed: set[str]) -> bool:
    """Whether a (neutralised) src is a same-origin path or url_for naming a vendored file."""
    if "//" in src or ":" in src:  # absolute or protocol-relative URL: another origin
        return False
    path = src.rstrip("_}")  # what is left of url_for(..., filename='vendor/x.js') }}
    return any(path == f or path.endswith(("/" + f, "_" + f)) for f in allowed)


class _TemplateScanner(HTMLParser):
    def __init__(self, allowed_script_files: set[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.allowed = allowed_script_files
        self.violations: list[Violation] = []
        self._in_script = False

    def _flag(self, rule: str, detail: str) -> None:
        self.violations.append(Violation(self.getpos()[0], rule, detail))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text() or ""
        values = dict(attrs)
        first = len(self.violations)
        for name, value in attrs:
            value = value or ""
            if EVENT_HANDLER_ATTR.fullmatch(name):
                self._flag("event-handler", f"<{tag} {name}=...>")
            if HX_ON.match(name):
                self._flag("event-handler", f"<{tag} {name}=...>")
            if JS_URL.search(re.sub(r"[\x00-\x20]", "", value)):
                self._flag("javascript-url", f"<{tag} {name}={value!r}>")
            bare = name.removeprefix("data-")
            if bare == "hx-vars":
                self._flag(
                    "htmx-eval", f"<{tag} {name}=...> (hx-vars always evaluates JS)"
                )
            if bare in ("hx-vals", "hx-headers") and JS_PREFIXED_VALUE.match(value):
                self._flag("htmx-eval", f"<{tag} {name}={value!r}> (js: evaluates JS)")
            if bare == "hx-trigger" and "[" in value:
                self._flag(
                    "htmx-eval", f"<{tag} {name}={value!r}> (a [filter] evaluates JS)"
                )
        # The raw tag text as well, in case the parser read a malformed tag differently.
        seen = {v.rule for v in self.violations[first:]}
        if "event-handler" not in seen and (
            EVENT_HANDLER_RAW.search(raw) or HX_ON.search(raw)
        ):
            self._flag("event-handler", f"raw tag {raw!r}")
        if "javascript-url" not in seen and JS_URL.search(raw):
            self._flag("javascript-url", f"raw tag {raw!r}")
        if tag == "script":
            self._in_script = True
            src = values.get("src")
            if not src:
                self._flag("script", "<script> without src")
            elif not _names_vendored_file(src, self.allowed):
                self._flag(
                    "script",
                    f"<script src={src!r}> is not a file listed in vendor.json",
                )

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_script = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self._flag("script", f"inline <script> body {data.strip()[:60]!r}")


def template_violations(text: str, allowed_script_files: set[str]) -> list[Violation]:
    """Every construct in a template that would run JavaScript other than the vendored files."""
    scanner = _TemplateScanner(allowed_script_files)
    scanner.feed(_neutralise_jinja(text))
    scanner.close()
    return scanner.violations


def vendored_script_names() -> set[str]:
    """Vendored JS as templates name it, relative to static/ (e.g. ``vendor/htmx.min.js``)."""
    return {Path(p).relative_to("static").as_posix() for p in manifest_js_paths()}


def all_template_violations(rule: str) -> list[str]:
    assert TEMPLATES.is_dir(), f"{TEMPLATES} does not exist"
    assert list(TEMPLATES.rglob("*.html")), f"no .html templates under {TEMPLATES}"
    allowed = vendored_script_names()
    found = []
    for path in sorted(p for p in TEMPLATES.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8", errors="replace")
        for v in template_violations(text, allowed):
            if v.rule == rule:
                found.append(f"{path.relative_to(ROOT)}:{v.line}: {v.detail}")
    return found


def test_templates_directory_holds_html_templates() -> None:
    assert TEMPLATES.is_dir(), f"{TEMPLATES} does not exist"
    assert list(TEMPLATES.rglob("*.html")), f"no .html templates under {TEMPLATES}"


def test_templates_load_only_vendored_scripts_and_have_no_inline_script() -> None:
    assert all_template_violations("script") == []


def test_templates_have_no_event_handler_attributes_or_hx_on() -> None:
    assert all_template_violations("event-handler") == []


def test_templates_have_no_javascript_urls() -> None:
    assert all_template_violations("javascript-url") == []


def test_templates_use_no_htmx_attribute_that_evaluates_javascript() -> None:
    assert all_template_violations("htmx-eval") == []


# The checker itself, so the template tests cannot pass by checking nothing.

FORBIDDEN = {
    "inline-script-body": ("script", "<script>alert(1)</script>"),
    "script-without-src": ("script", "<script type=module></script>"),
    "script-with-src-and-body": (
        "script",
        '<script src="/static/vendor/htmx.min.js">x()</script>',
    ),
    "script-from-a-cdn": (
        "script",
        '<script src="https://cdn.example.com/htmx.min.js"></script>',
    ),
    "script-not-vendored": (
        "script",
        "<script src=\"{{ url_for('static', filename='app.js') }}\"></script>",
    ),
    "onclick": ("event-handler", '<button onclick="go()">Go</button>'),
    "onload-uppercase": ("event-handler", '<body ONLOAD="go()">'),
    "onclick-inside-jinja-if": (
        "event-handler",
        "<a {% if x %}onclick='go()'{% endif %}>a</a>",
    ),
    "hx-on": ("event-handler", '<div hx-on:click="go()"></div>'),
    "hx-on-double-colon": ("event-handler", '<div hx-on::after-request="go()"></div>'),
    "data-hx-on": ("event-handler", '<div data-hx-on-click="go()"></div>'),
    "javascript-href": ("javascript-url", '<a href="javascript:go()">a</a>'),
    "javascript-href-obfuscated": (
        "javascript-url",
        '<a href=" Java&#x53;cript:go()">a</a>',
    ),
    "javascript-form-action": (
        "javascript-url",
        "<form action='javascript:go()'></form>",
    ),
    "hx-vars": ("htmx-eval", '<div hx-vars="a:go()"></div>'),
    "hx-vals-js": ("htmx-eval", "<div hx-vals='js:{a: go()}'></div>"),
    "hx-trigger-filter": ("htmx-eval", '<div hx-trigger="click[go()]"></div>'),
}


@pytest.mark.parametrize(("rule", "snippet"), FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_template_checker_rejects(rule: str, snippet: str) -> None:
    assert rule in {
        v.rule for v in template_violations(snippet, {"vendor/htmx.min.js"})
    }


def test_template_checker_accepts_vendored_scripts_htmx_sse_attributes_and_jinja() -> (
    None
):
    snippet = """
    {# onclick="nope" in a Jinja comment, and <script>x()</script> #}
    {% set online = 1 %}{% with one=2 %}{% endwith %}
    <script src="{{ url_for('static', filename='vendor/htmx.min.js') }}" defer></script>
    <script src="/static/vendor/sse.min.js" defer></script>
    <body hx-ext="sse"><section sse-connect="{{ url_for('views.stream', s=x | join(',')) }}">
    <tr id="q-{{ q.symbol }}" sse-swap="{{ q.symbol }}" hx-swap="outerHTML"
        class="{{ 'gain' if q.change > 0 else 'loss' }}"><td>{{ {'up': '>'}.get(d) }}</td></tr>
    <p>Turn it on; no custom JavaScript.</p>
    """
    allowed = {"vendor/htmx.min.js", "vendor/sse.min.js"}
    assert template_violations(snippet, allowed) == []
