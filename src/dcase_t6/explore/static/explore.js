// The queries page: sort, search and paginate the table of window.EXPLORE_QUERIES (data/queries.js).
// Only the visible page of rows is in the DOM; the state (sort, search, page) lives in the URL hash,
// so the back button from a query page returns to the same view.
(function () {
  "use strict";
  var data = window.EXPLORE_QUERIES;
  var PAGE = 50;
  var table = document.getElementById("queries");
  var head = table.tHead.rows[0], body = table.tBodies[0];
  var search = document.getElementById("search");
  var state = {sort: data.defaultSort, desc: false, q: "", page: 0};
  var shown = [];

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function key(row, column) {  // the value a column sorts by; a ranks list sorts by its best rank
    var value = row[column];
    return Array.isArray(value) ? value[0] : value;
  }
  function cell(row, index) {
    var column = data.columns[index], value = row[index];
    if (column.type === "text") {
      return '<td class="text"><a href="query/' + row[0] + '.html">' + escapeHtml(value) + "</a></td>";
    }
    if (column.type === "ranks") return "<td>" + value.join(", ") + "</td>";
    if (column.type === "diff") {
      var sign = value > 0 ? "up" : value < 0 ? "down" : "";
      return '<td class="num ' + sign + '">' + (value > 0 ? "+" : "") + value.toFixed(3) + "</td>";
    }
    if (column.type === "num") return '<td class="num">' + value.toFixed(3) + "</td>";
    return '<td class="num">' + value + "</td>";
  }
  function readHash() {
    var params = new URLSearchParams(location.hash.slice(1));
    if (params.has("sort")) state.sort = Math.min(+params.get("sort") || 0, data.columns.length - 1);
    state.desc = params.get("desc") === "1";
    state.q = params.get("q") || "";
    state.page = Math.max(0, +params.get("page") || 0);
    search.value = state.q;
  }
  function writeHash() {
    var params = new URLSearchParams({sort: state.sort, desc: state.desc ? 1 : 0, q: state.q, page: state.page});
    history.replaceState(null, "", "#" + params.toString());
  }
  function select() {
    var needle = state.q.toLowerCase(), column = state.sort, sign = state.desc ? -1 : 1;
    shown = needle ? data.rows.filter(function (row) { return row[1].toLowerCase().indexOf(needle) >= 0; })
                   : data.rows.slice();
    shown.sort(function (a, b) {
      var x = key(a, column), y = key(b, column);
      if (x < y) return -sign;
      if (x > y) return sign;
      return a[0] - b[0];
    });
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var html = [];
    shown.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (row) {
      var cells = [];
      for (var i = 0; i < data.columns.length; i++) cells.push(cell(row, i));
      html.push('<tr data-query="' + row[0] + '">' + cells.join("") + "</tr>");
    });
    body.innerHTML = html.join("") || '<tr><td colspan="' + data.columns.length + '">no query matches</td></tr>';
    Array.prototype.forEach.call(head.cells, function (th, index) {
      th.className = index === state.sort ? (state.desc ? "sorted-desc" : "sorted-asc") : "";
    });
    document.getElementById("count").textContent = shown.length + " of " + data.rows.length + " queries";
    document.getElementById("page").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
    writeHash();
  }
  head.innerHTML = data.columns.map(function (column, index) {
    return '<th data-column="' + index + '" title="' + escapeHtml(column.title || "") + '">' + escapeHtml(column.label) + "</th>";
  }).join("");
  head.addEventListener("click", function (event) {
    var th = event.target.closest("th");
    if (!th) return;
    var column = +th.dataset.column;
    state.desc = column === state.sort ? !state.desc : data.columns[column].type === "diff";
    state.sort = column;
    state.page = 0;
    select();
    render();
  });
  search.addEventListener("input", function () {
    state.q = search.value;
    state.page = 0;
    select();
    render();
  });
  document.getElementById("prev").addEventListener("click", function () { state.page--; render(); });
  document.getElementById("next").addEventListener("click", function () { state.page++; render(); });
  readHash();
  select();
  render();
  performance.mark("queries-rendered");
})();
