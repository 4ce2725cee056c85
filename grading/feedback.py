"""Feedback HTML: nbgrader's own feedback template, plus the grader's messages on top.

nbgrader's ``GenerateFeedback`` renders an autograded notebook with its ``feedback``
template after reading scores back from the gradebook.  The grader already knows the scores
(it computed them with nbgrader's ``determine_grade``), so it fills the same fields
(``cell.metadata.nbgrader.score``/``points``, ``resources.nbgrader``) and renders with the
same exporter configuration, without a database round trip per notebook.  The exporter is
built once per process (template loading is the expensive part), and it skips nbconvert's
accessibility pass when that pass has nothing to do: the pass parses the whole page with
BeautifulSoup (about 30 ms for a 130 KB feedback page, the most expensive step of a small
submission's grading, profiled with py-spy) to add ``alt`` to images and ``tabindex`` to
JupyterLab-styled cells, and nbgrader's feedback template has neither.
"""

from __future__ import annotations

import copy
import html
import os
import threading

import nbformat

_EXPORTER = None
_LOCK = threading.Lock()


def _exporter():
    global _EXPORTER
    with _LOCK:
        if _EXPORTER is None:
            import nbgrader
            from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
            from traitlets.config import Config

            base = os.path.dirname(nbgrader.__file__)
            c = Config()
            c.HTMLExporter.template_name = "feedback"
            # validate the notebook once, after the last preprocessor, not after each of them
            # (nbconvert's own option; the schema check was a quarter of the page's cost)
            c.HTMLExporter.optimistic_validation = True
            # the template's own CSS header pass is replaced by the one below (same CSS)
            c.CSSHTMLHeaderPreprocessor.enabled = False
            c.HTMLExporter.extra_template_basedirs = [
                os.path.join(base, "server_extensions", "formgrader", "templates")
            ]
            c.HTMLExporter.extra_template_paths = [
                os.path.join(
                    base, "server_extensions", "formgrader", "static", "node_modules", "bootstrap", "dist", "css"
                )
            ]
            ex = _exporter_class()(config=c)
            ex.register_preprocessor(_css_header_class(CSSHTMLHeaderPreprocessor)(config=c), enabled=True)
            _EXPORTER = ex
        return _EXPORTER


def _css_header_class(base):
    class CSSHeaderOnce(base):
        """nbconvert's CSS header pass (pygments' style sheet, and the user's custom.css
        when it differs from the default one), built once per style and custom.css file
        state instead of for every page: building pygments' style sheet was a tenth of a
        feedback page's cost.  The page's CSS is the same."""

        _made: dict = {}

        def _generate_header(self, resources):
            custom = os.path.join(resources["config_dir"], "custom", "custom.css")
            try:
                st = os.stat(custom)
                state = (st.st_mtime_ns, st.st_size)
            except OSError:
                state = None
            key = (str(self.style), self.highlight_class, custom, state)
            header = self._made.get(key)
            if header is None:
                header = self._made[key] = super()._generate_header(resources)
            return list(header)

    return CSSHeaderOnce


#: Cells' HTML is remembered by what it is made from (per exporter and highlighter): most
#: cells of a module's submissions are the release's own (instructions, tests) and render
#: alike in every feedback page.  Entries per memo, and the longest source a memo keeps:
MEMO_ENTRIES = 2048
MEMO_SOURCE_CHARS = 20_000


def _remember(memo: dict, key, value: str, size: int) -> None:
    if size > MEMO_SOURCE_CHARS:
        return
    if len(memo) >= MEMO_ENTRIES:
        memo.clear()  # a long-running worker: start over rather than grow
    memo[key] = value


def _highlighter_class():
    from nbconvert.filters.highlight import Highlight2HTML, _pygments_highlight

    class HighlightOnce(Highlight2HTML):
        """nbconvert's ``highlight_code`` filter with one pygments formatter per language,
        reused for every code cell (nbconvert builds one per cell, and a formatter computes
        its style table when it is built), and each source's HTML remembered; the cell's
        HTML is the same."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._formatters: dict = {}
            self._done: dict = {}

        def __call__(self, source, language=None, metadata=None):
            from pygments.formatters import HtmlFormatter

            language = language or self.pygments_lexer
            magics = (metadata or {}).get("magics_language")
            key = (language, magics if isinstance(magics, str) else None, source)
            done = self._done.get(key)
            if done is not None:
                return done
            fmt = self._formatters.get(language)
            if fmt is None:
                fmt = self._formatters[language] = HtmlFormatter(
                    cssclass=html.escape(f" highlight hl-{language}"), **self.extra_formatter_options
                )
            out = _pygments_highlight(source if len(source) > 0 else " ", fmt, language, metadata)
            _remember(self._done, key, out, len(source))
            return out

    return HighlightOnce


def _exporter_class():
    from jinja2 import pass_context
    from nbconvert.exporters import HTMLExporter, TemplateExporter

    class FeedbackExporter(HTMLExporter):
        #: what nbconvert's accessibility pass (``HTMLExporter.from_notebook_node``) edits
        ACCESSIBILITY_TARGETS = ("<img", "jp-Cell-inputWrapper", "jp-OutputArea-output")

        def from_notebook_node(self, nb, resources=None, **kw):
            html_text, res = self._render(nb, resources, **kw)
            if any(t in html_text for t in self.ACCESSIBILITY_TARGETS):
                return super().from_notebook_node(nb, resources, **kw)  # the pass has work to do
            return html_text, res

        @pass_context
        def markdown2html(self, context, source):
            """nbconvert's, remembered for a cell without attachments (its HTML depends only on
            its source, the notebook's path and this exporter's settings then)."""
            cell = context.get("cell", {})
            if cell.get("attachments"):
                return super().markdown2html(context, source)
            path = context.get("resources", {}).get("metadata", {}).get("path", "")
            memo = self.__dict__.setdefault("_markdown", {})
            key = (source, path)
            done = memo.get(key)
            if done is None:
                done = super().markdown2html(context, source)
                _remember(memo, key, done, len(source))
            return done

        def _render(self, nb, resources, **kw):
            # HTMLExporter.from_notebook_node up to its BeautifulSoup pass (nbconvert 7)
            from nbconvert.exporters.html import WidgetsDataTypeFilter

            langinfo = nb.metadata.get("language_info", {})
            lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
            highlight_code = self.filters.get("highlight_code")
            if highlight_code is None:
                made = self.__dict__.setdefault("_highlighters", {})
                highlight_code = made.get(lexer)
                if highlight_code is None:
                    highlight_code = made[lexer] = _highlighter_class()(pygments_lexer=lexer, parent=self)
            resources = self._init_resources(resources)
            filter_data_type = WidgetsDataTypeFilter(
                notebook_metadata=self._nb_metadata, parent=self, resources=resources
            )
            self.register_filter("highlight_code", highlight_code)
            self.register_filter("filter_data_type", filter_data_type)
            return TemplateExporter.from_notebook_node(self, nb, resources, **kw)

    return FeedbackExporter


def _summary_cell(result: dict) -> nbformat.NotebookNode:
    lines = [f"## Grading: {result['score']:g} / {result['max_score']:g} points", ""]
    for c in result.get("cells", []):
        if c.get("score") is None:
            continue
        mark = "passed" if c["score"] >= c["max_score"] else ("partial" if c["score"] > 0 else "failed")
        lines.append(
            f"- **{html.escape(c['grade_id'])}** ({c['kind']}): {c['score']:g} / {c['max_score']:g} {mark}"
            + (f" — {html.escape(c['message'])}" if c.get("message") else "")
        )
    if result.get("messages"):
        lines += ["", "### Notes from the grader", ""]
        lines += [f"- {html.escape(m)}" for m in result["messages"]]
    return nbformat.v4.new_markdown_cell("\n".join(lines), metadata={"livelab": {"grading-summary": True}})


def render(nb: nbformat.NotebookNode, result: dict) -> str:
    """The feedback page for an executed, scored notebook."""
    # copies of what changes here only: nbconvert deep-copies the notebook before it edits it
    nb = copy.copy(nb)
    scores = {c["grade_id"]: c for c in result.get("cells", [])}
    cells = [_summary_cell(result)]
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta and (meta.get("grade") or meta.get("task")):
            cell = copy.copy(cell)
            cell["metadata"] = copy.copy(cell["metadata"])
            meta = cell["metadata"]["nbgrader"] = copy.copy(meta)
            c = scores.get(meta.get("grade_id"))
            meta["score"] = c["score"] if c and c["score"] is not None else 0.0
            meta["points"] = c["max_score"] if c else float(meta.get("points", 0) or 0)
        cells.append(cell)
    nb["cells"] = cells
    resources = {
        "nbgrader": {
            "notebook": result.get("notebook", "notebook"),
            "score": result["score"],
            "max_score": result["max_score"],
            "late_penalty": 0,
        }
    }
    body, _ = _exporter().from_notebook_node(nb, resources=resources)
    return body
