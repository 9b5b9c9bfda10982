"""Tables that scripts keep inside hand-written READMEs: the text between ``<!-- NAME -->`` and
``<!-- /NAME -->`` is the script's, the prose around it the author's.

Used by experiments/figure1_table.py, experiments/paper_claims/summarize.py and
experiments/transfer/summarize.py, so a rerun refreshes a table without touching what was written
around it.
"""
import os


def between_markers(body, name, text, required=True, where="README.md"):
    """``body`` with ``text`` between its ``<!-- NAME -->`` and ``<!-- /NAME -->`` markers. Without the
    markers: a one-line exit when ``required``, else ``body`` unchanged."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in body or end not in body:
        if required:
            raise SystemExit(f"{where} has no {start} ... {end} markers: add them where the table goes")
        return body
    head, rest = body.split(start, 1)
    return f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}"


def write_between_markers(readme, name, text, required=True):
    """:func:`between_markers` applied to the file ``readme`` (rewritten only if it changed)."""
    body = open(readme).read() if os.path.isfile(readme) else ""
    new = between_markers(body, name, text, required, where=readme)
    if new != body:
        with open(readme, "w") as f:
            f.write(new)
