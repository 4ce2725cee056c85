"""Feedback HTML: nbgrader's own feedback template, plus the grader's messages on top.

nbgrader's ``GenerateFeedback`` renders an autograded notebook with its ``feedback``
template after reading scores back from the gradebook.  The grader already knows the scores
(it computed them with nbgrader's ``determine_grade``), so it fills the same fields
(``cell.metadata.nbgrader.score``/``points``, ``resources.nbgrader``) and renders with the
same exporter configuration, without a database round trip per notebook.  The exporter is
built once per process (template loading is the expensive part).
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
            from nbconvert.exporters import HTMLExporter
            from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
            from traitlets.config import Config

            base = os.path.dirname(nbgrader.__file__)
            c = Config()
            c.HTMLExporter.template_name = "feedback"
            c.HTMLExporter.extra_template_basedirs = [
                os.path.join(base, "server_extensions", "formgrader", "templates")
            ]
            c.HTMLExporter.extra_template_paths = [
                os.path.join(
                    base, "server_extensions", "formgrader", "static", "node_modules", "bootstrap", "dist", "css"
                )
            ]
            ex = HTMLExporter(config=c)
            ex.register_preprocessor(CSSHTMLHeaderPreprocessor(config=c), enabled=True)
            _EXPORTER = ex
        return _EXPORTER


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
    nb = copy.deepcopy(nb)
    scores = {c["grade_id"]: c for c in result.get("cells", [])}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta and (meta.get("grade") or meta.get("task")):
            c = scores.get(meta.get("grade_id"))
            meta["score"] = c["score"] if c and c["score"] is not None else 0.0
            meta["points"] = c["max_score"] if c else float(meta.get("points", 0) or 0)
    nb.cells.insert(0, _summary_cell(result))
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
