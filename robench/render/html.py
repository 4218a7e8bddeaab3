"""A document as one self-contained HTML page: inline CSS and a small sorting/filtering script, no external request.

Cells carry their hover text (95% interval, n, flags) in ``title``, flags as marks, and their sort
key in ``data-sort``; clicking a column header sorts the table by it, a text box filters its rows.
"""

from __future__ import annotations

from html import escape

from robench.document import Document, Item, Table

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#1b1b1b}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d4d4d4;padding:.25em .55em;vertical-align:top}td{overflow-wrap:anywhere}
td:first-child{min-width:9em}
thead th{background:#f1f3f5;position:sticky;top:0}th.sortable{cursor:pointer}
th.sortable:after{content:" \\2195";color:#999}th[aria-sort=ascending]:after{content:" \\2191"}
th[aria-sort=descending]:after{content:" \\2193"}td.num{text-align:right}
tbody tr:nth-child(even){background:#fafafa}sup.flag{color:#b3261e;font-weight:600;cursor:help}
dl.header{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}dt{font-weight:600}dd{margin:0}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto}figure{margin:1em 0}img{max-width:100%}
td a{color:inherit;text-decoration:underline dotted #888}td.num{white-space:nowrap}
input.filter{margin:.3em 0;padding:.2em .4em;width:20em}.note{color:#444}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function(table){
  var heads=table.tHead.rows[table.tHead.rows.length-1].cells;
  Array.prototype.forEach.call(heads,function(th,index){
    th.classList.add("sortable");
    th.addEventListener("click",function(){
      var ascending=th.getAttribute("aria-sort")!=="ascending";
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute("aria-sort");});
      th.setAttribute("aria-sort",ascending?"ascending":"descending");
      var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      function key(row){var c=row.cells[index];var v=c.getAttribute("data-sort");if(v===null)v=c.textContent;
        var x=parseFloat(v);return isNaN(x)?v.toLowerCase():x;}
      rows.sort(function(a,b){var x=key(a),y=key(b);
        if(typeof x!==typeof y){x=String(x);y=String(y);}
        return (x<y?-1:x>y?1:0)*(ascending?1:-1);});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
document.querySelectorAll("input.filter").forEach(function(box){
  var table=document.getElementById(box.getAttribute("data-table"));
  box.addEventListener("input",function(){
    var words=box.value.toLowerCase();
    Array.prototype.forEach.call(table.tBodies[0].rows,function(row){
      row.hidden=words!==""&&row.textContent.toLowerCase().indexOf(words)<0;});
  });
});
"""


def render_html(document: Document, *, nav: tuple[tuple[str, str], ...] = (), extra: str = "") -> str:
    """The document as a standalone HTML page; ``nav`` is (href, label) links at the top, ``extra`` raw HTML at the end."""
    links = "".join(f'<a href="{escape(href)}">{escape(label)}</a>' for href, label in nav)
    parts = [f"<nav>{links}</nav>" if nav else "", f"<h1>{escape(document.title)}</h1>"]
    if document.header:
        parts.append('<dl class="header">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>"
                                                     for k, v in document.header) + "</dl>")
    if document.commands:
        parts.append("<p>Produced by:</p><pre>" + "\n".join(escape(c) for c in document.commands) + "</pre>")
    for table in document.tables:
        if table.caption:
            parts.append(f"<h2>{escape(table.caption)}</h2>")
        parts.append(html_table(table))
    for name, caption in document.figures:
        parts.append(f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}'
                     "</figcaption></figure>")
    if document.flags:
        parts.append("<h2>Flags</h2><ul>" + "".join(
            f'<li id="flag-{escape(flag)}"><sup class="flag">{mark}</sup> <code>{escape(flag)}</code>: {escape(text)}</li>'
            for mark, flag, text in document.flags) + "</ul>")
    if document.missing:
        parts.append("<h2>Cells without a number</h2><ul>" + "".join(f"<li>{escape(line.lstrip('- '))}</li>"
                                                                    for line in document.missing) + "</ul>")
    parts += [f'<p class="note">{escape(note)}</p>' for note in document.notes]
    body = "\n".join(p for p in parts if p) + extra
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(document.title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body></html>\n")


def html_table(table: Table) -> str:
    """One sortable, filterable table; groups become a spanning header row."""
    ident = f"table-{escape(table.name)}"
    head = ""
    if table.groups:
        head += "<tr>" + "".join(f'<th colspan="{span}">{escape(label)}</th>' for label, span in table.groups) + "</tr>"
    head += "<tr>" + "".join(f'<th scope="col">{escape(c)}</th>' for c in table.columns) + "</tr>"
    numeric = [c in table.numeric for c in table.columns]
    body = "".join("<tr>" + "".join(_cell(item, num) for item, num in zip(row, numeric)) + "</tr>\n"
                   for row in table.rows)
    return (f'<input class="filter" type="search" placeholder="filter rows" aria-label="filter rows" '
            f'data-table="{ident}">\n<table class="sortable" id="{ident}"><thead>{head}</thead>\n'
            f"<tbody>\n{body}</tbody></table>")


def _cell(item: Item, numeric: bool) -> str:
    attributes = ' class="num"' if numeric else ""
    if item.title:
        attributes += f' title="{escape(item.title)}"'
    if item.sort is not None:
        attributes += f' data-sort="{escape(str(item.sort))}"'
    text = escape(item.text)
    if item.href:
        text = f'<a href="{escape(item.href)}">{text}</a>'
    marks = "".join(f'<sup class="flag">{escape(m)}</sup>' for m in item.marks)
    return f"<td{attributes}>{text}{marks}</td>"
