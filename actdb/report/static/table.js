// Client-side sorting and filtering of the layer table: no library, no network.
// A filter of digits is a unit number, or part of a text column (a class may be named by digits:
// "1984"); any other text matches anywhere in a row (a class).
(function () {
  var table = document.getElementById("units");
  if (!table) return;
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (th, column) {
    var type = th.getAttribute("data-type");
    if (!type) return;
    th.addEventListener("click", function () {
      var descending = !th.classList.contains("desc");
      Array.prototype.forEach.call(headers, function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(descending ? "desc" : "asc");
      var key = function (row) {
        var cell = row.cells[column];
        return type === "number" ? parseFloat(cell.getAttribute("data-value")) : cell.textContent.trim().toLowerCase();
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = x < y ? -1 : x > y ? 1 : 0;
        return descending ? -order : order;
      });
      var fragment = document.createDocumentFragment();
      rows.forEach(function (row) { fragment.appendChild(row); });
      body.appendChild(fragment);
    });
  });
  var textColumns = [];
  Array.prototype.forEach.call(headers, function (th, column) {
    if (th.getAttribute("data-type") === "text") textColumns.push(column);
  });
  var inText = function (row, text) {
    return textColumns.some(function (column) {
      return row.cells[column].textContent.toLowerCase().indexOf(text) >= 0;
    });
  };
  var filter = document.getElementById("filter");
  var shown = document.getElementById("shown");
  filter.addEventListener("input", function () {
    var text = filter.value.trim().toLowerCase();
    var count = 0;
    rows.forEach(function (row) {
      var unit = row.cells[0].textContent.trim();
      var match = !text || (/^\d+$/.test(text) ? unit === text || inText(row, text)
                                               : row.textContent.toLowerCase().indexOf(text) >= 0);
      row.style.display = match ? "" : "none";
      if (match) count++;
    });
    shown.textContent = count;
  });
})();
