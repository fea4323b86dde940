"""The built-in viewer (web/) never parses text as HTML, and its page needs nothing that its Content-Security-Policy
forbids (issue 17).

DICOM text (patient names, descriptions, SR job errors) is hostile input: stored XSS through a Patient ID sent
with storescu is a known bug of another DICOM web UI (mercure-imaging/mercure#90). The viewer writes text with
``textContent`` and builds elements with the DOM; this test parses every ``web/*.js`` (tree-sitter's JavaScript
grammar, no browser) and fails on any HTML sink — ``innerHTML``, ``outerHTML``, ``srcdoc`` assignments,
``insertAdjacentHTML``, ``document.write``/``writeln``, ``createContextualFragment``, ``parseFromString``,
``setHTMLUnsafe`` — given anything but a string literal without ``${``. A sink used any other way (``+=``,
``el["innerHTML"] = x``, ``Object.assign(el, {innerHTML: x})``, passed around) fails too. ``web/*.html`` may have
no inline script, no ``on*=`` handler, no ``style`` attribute or element and no ``javascript:`` URL: the CSP
(``dicomweb/headers.py``) refuses them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_javascript

WEB = Path(__file__).resolve().parents[1] / "web"
PROPERTY_SINKS = {"innerHTML", "outerHTML", "srcdoc"}  # assigned
# called: which arguments are parsed as HTML (None: all of them)
METHOD_SINKS: dict[str, int | None] = {
    "insertAdjacentHTML": 1,
    "createContextualFragment": 0,
    "parseFromString": 0,
    "setHTMLUnsafe": 0,
}
DOCUMENT_SINKS = {"write", "writeln"}  # only as document.write(...)
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_javascript.language()))


@dataclass(frozen=True)
class Finding:
    line: int
    sink: str
    why: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.sink} {self.why}"


def literal(node: tree_sitter.Node | None) -> bool:
    """A string literal, or a template literal without a substitution."""
    if node is None:
        return False
    if node.type == "parenthesized_expression" and node.named_child_count == 1:
        return literal(node.named_children[0])
    if node.type == "string":
        return True
    return node.type == "template_string" and not any(c.type == "template_substitution" for c in node.children)


def _name(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode()


def _sink_of(node: tree_sitter.Node) -> tuple[str, tree_sitter.Node] | None:
    """(sink name, the expression naming it) when ``node`` names an HTML sink."""
    parent = node.parent
    if parent is None:
        return None
    if node.type in ("property_identifier", "shorthand_property_identifier"):
        name = _name(node)
        if parent.type == "member_expression" and name in DOCUMENT_SINKS:
            target = parent.child_by_field_name("object")
            return (f"document.{name}", parent) if target is not None and _name(target).endswith("document") else None
        if name in PROPERTY_SINKS or name in METHOD_SINKS:
            return name, parent
        return None
    if node.type == "string" and parent.type == "subscript_expression" and parent.child_by_field_name("index") == node:
        name = _name(node)[1:-1]
        if name in PROPERTY_SINKS or name in METHOD_SINKS:
            return name, parent
    return None


def findings(source: bytes) -> list[Finding]:
    tree = PARSER.parse(source)
    assert not tree.root_node.has_error, "the file does not parse as JavaScript"
    found: list[Finding] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        sink = _sink_of(node)
        if sink is None:
            continue
        name, access = sink
        line = node.start_point[0] + 1
        holder = access.parent
        if access.type in ("member_expression", "subscript_expression") and holder is not None:
            if holder.type == "assignment_expression" and holder.child_by_field_name("left") == access:
                if name not in PROPERTY_SINKS:
                    found.append(Finding(line, name, "is assigned"))
                elif not literal(holder.child_by_field_name("right")):
                    found.append(Finding(line, name, "is assigned something other than a string literal"))
                continue
            if holder.type == "call_expression" and holder.child_by_field_name("function") == access:
                arguments = holder.child_by_field_name("arguments")
                args = arguments.named_children if arguments is not None else []
                which = METHOD_SINKS.get(name) if not name.startswith("document.") else None
                if name in PROPERTY_SINKS:
                    found.append(Finding(line, name, "is called"))
                elif not all(literal(a) for i, a in enumerate(args) if which is None or i == which):
                    found.append(Finding(line, name, "is given something other than a string literal"))
                continue
        found.append(Finding(line, name, f"is used as {access.type} in {holder.type if holder else 'nothing'}"))
    return sorted(found, key=lambda f: f.line)


def scripts() -> list[Path]:
    files = sorted(WEB.rglob("*.js"))
    assert len(files) > 10, f"web/ has {len(files)} scripts: the viewer moved?"
    return files


@pytest.mark.parametrize("path", scripts(), ids=lambda p: p.name)
def test_no_script_of_the_viewer_parses_text_as_html(path: Path) -> None:
    found = findings(path.read_bytes())
    assert not found, f"{path.relative_to(WEB.parent)}: " + "; ".join(map(str, found))


# The rule itself: each of these must be flagged (and the literal forms must not), else the test above proves nothing.
FLAGGED = [
    "el.innerHTML = `<b>${name}</b>`;",
    "el.innerHTML = name;",
    "el.innerHTML = '<b>' + name + '</b>';",
    "el.outerHTML = `<i>${x}</i>`;",
    "el.innerHTML += 'x';",
    'el["innerHTML"] = name;',
    "Object.assign(el, { innerHTML: name });",
    "const innerHTML = 'x'; Object.assign(el, { innerHTML });",
    "el.insertAdjacentHTML('beforeend', name);",
    "el.insertAdjacentHTML('beforeend', `<td>${name}</td>`);",
    "document.write(name);",
    "window.document.writeln(`${name}`);",
    "range.createContextualFragment(name);",
    "new DOMParser().parseFromString(name, 'text/html');",
    "frame.srcdoc = name;",
    "el.setHTMLUnsafe(name);",
    "const set = (v) => { el.innerHTML = v; };",
    "const f = el.insertAdjacentHTML; f('beforeend', name);",
]
ALLOWED = [
    "el.innerHTML = `<h2>Tags</h2><table><tbody></tbody></table>`;",
    "el.innerHTML = '<p class=\"muted\">None yet.</p>';",
    "el.innerHTML = '';",
    "el.insertAdjacentHTML(where, '<hr>');",
    "el.textContent = `${name}`;",
    "log.write(name);",  # not document.write
    "const t = `<b>${name}</b>`; el.textContent = t;",
    "// el.innerHTML = name;  (comments are not code)",
]


@pytest.mark.parametrize("source", FLAGGED)
def test_the_lint_flags_html_built_from_values(source: str) -> None:
    assert findings(source.encode()), source


@pytest.mark.parametrize("source", ALLOWED)
def test_the_lint_allows_literals_and_text(source: str) -> None:
    assert findings(source.encode()) == [], source


class _InlineCode(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        line = self.getpos()[0]
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"line {line}: <{tag} {name}=...> (inline handler)")
            if name == "style":
                self.problems.append(f"line {line}: <{tag} style=...> (inline style)")
            if name in ("href", "src", "action", "formaction") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.problems.append(f"line {line}: <{tag} {name}=javascript:...>")
        if tag == "style":
            self.problems.append(f"line {line}: <style> element (inline style)")
        self._script_without_src = tag == "script" and not dict(attrs).get("src")

    def handle_data(self, data: str) -> None:
        if self._script_without_src and data.strip():
            self.problems.append(f"line {self.getpos()[0]}: inline <script>")

    def handle_endtag(self, tag: str) -> None:
        self._script_without_src = False


@pytest.mark.parametrize("path", sorted(WEB.rglob("*.html")), ids=lambda p: p.name)
def test_the_pages_have_no_inline_script_or_style(path: Path) -> None:
    checker = _InlineCode()
    checker.feed(path.read_text(encoding="utf-8"))
    assert checker.problems == [], f"{path.name}: {checker.problems}"


def test_the_page_check_flags_inline_code() -> None:
    checker = _InlineCode()
    checker.feed(
        '<body onload="x()"><script>alert(1)</script><p style="color:red">'
        '<a href=" JavaScript:alert(1)">a</a><style>p{}</style><script src="app.js"></script></body>'
    )
    assert len(checker.problems) == 5, checker.problems
