"""The layer table's filter (report/static/table.js) run in Node.js on a small stand-in for the
page's DOM (the browser tests, in test_report_browser.py, need chromium): digits find a unit by
its number and a class named by digits; other text matches anywhere in a row."""
from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources

import pytest

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js to run the report's script")

HEADERS = ["number", None, None, "number", "number", "number", "text", "number"]  # as layer.html's columns
CLASSES = ["tench", "1984", "tench", "route 66", "tabby", "tench", "1984", "tabby", "sea_cucumber", "tench", "", "66"]

HARNESS = """
const spec = JSON.parse(process.argv[1]);
const node = (text) => ({textContent: text, getAttribute: () => null});
const headers = spec.headers.map((type) => ({getAttribute: (n) => (n === "data-type" ? type : null),
                                              addEventListener() {}, classList: {add() {}, remove() {}}}));
const rows = spec.rows.map((cells) => ({cells: cells.map(node), style: {display: ""},
                                        get textContent() { return cells.join(""); }}));
let listener = null;
const elements = {
  units: {tBodies: [{rows, appendChild() {}}], tHead: {rows: [{cells: headers}]}},
  filter: {value: "", addEventListener: (event, f) => { listener = f; }},
  shown: {textContent: ""},
};
global.document = {getElementById: (id) => elements[id], createDocumentFragment: () => ({appendChild() {}})};
eval(spec.script);
const answers = {};
for (const text of spec.filters) {
  elements.filter.value = text;
  listener();
  answers[text] = {units: rows.filter((r) => r.style.display !== "none").map((r) => r.cells[0].textContent),
                   shown: elements.shown.textContent};
}
console.log(JSON.stringify(answers));
"""


def filtered(filters: list[str]) -> dict:
    script = resources.files("actdb.report").joinpath("static", "table.js").read_text()
    rows = [[str(unit), "", "", "0.5", "0.1", "1.0", label, "0.25"] for unit, label in enumerate(CLASSES)]
    spec = json.dumps({"headers": HEADERS, "rows": rows, "script": script, "filters": filters})
    done = subprocess.run([NODE, "-e", HARNESS, spec], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_digits_find_a_unit_and_a_class_named_by_digits_other_text_any_cell():
    filters = ["1984", "7", "66", "TABBY", "", "0.25"]
    answers = filtered(filters)
    for text in filters:
        wanted = text.strip().lower()
        if not wanted:
            expected = list(range(len(CLASSES)))
        elif wanted.isdigit():  # the unit itself, or a class whose name holds the digits
            expected = [u for u, label in enumerate(CLASSES) if str(u) == wanted or wanted in label.lower()]
        else:  # anywhere in the row
            expected = [u for u, label in enumerate(CLASSES)
                        if wanted in "".join([str(u), "", "", "0.5", "0.1", "1.0", label, "0.25"]).lower()]
        assert answers[text]["units"] == [str(u) for u in expected], text
        assert answers[text]["shown"] == len(expected), text
    assert answers["1984"]["units"] == ["1", "6"] and answers["7"]["units"] == ["7"]
    assert answers["66"]["units"] == ["3", "11"]  # "route 66" and "66"; no unit 66 in this layer
