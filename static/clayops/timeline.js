/* clayops Timeline: draws /timeline/data with uPlot (static/vendor/uplot). No inline script or style:
   uPlot sets element styles through the CSSOM, which the Content-Security-Policy allows.
   Series differ by dash pattern and point shape as well as colour (Okabe-Ito palette, safe for
   colour-blind readers); marks are labelled lines (B breaker, P pause, O operator) numbered as in
   the table of marks under the chart. */
(function () {
  "use strict";

  var el = document.getElementById("timeline-chart");
  if (!el || typeof uPlot === "undefined") return;

  // key in the JSON, label (with the point's shape in words), colour, dash, point shape, scale
  var LINES = [
    ["accepted", "Accepted (solid, circles)", "#009E73", null, "circle", "n"],
    ["retry", "Retry later (dashed, squares)", "#E69F00", [10, 5], "square", "n"],
    ["rate_limited", "Rate-limited 429 (dotted, triangles)", "#56B4E9", [2, 4], "triangle", "n"],
    ["uncertain", "Uncertain (dash-dot, diamonds)", "#CC79A7", [12, 4, 2, 4], "diamond", "n"],
    ["dead", "Dead (long dashes, crosses)", "#D55E00", [16, 6], "cross", "n"],
    ["dlq", "DLQ inflow (short dashes, plus signs)", "#000000", [5, 3], "plus", "n"],
    ["credits", "Credits spent, right axis (thick steps, hollow squares)", "#0072B2", null, "hollow", "credits"],
  ];
  var MARK_DASH = { breaker: [6, 3], pause: [2, 3], operator: [] };

  function ratio() {
    return window.devicePixelRatio || 1;
  }

  function shape(path, kind, x, y, r) {
    if (kind === "circle") {
      path.moveTo(x + r, y);
      path.arc(x, y, r, 0, 2 * Math.PI);
    } else if (kind === "square" || kind === "hollow") {
      path.rect(x - r, y - r, 2 * r, 2 * r);
    } else if (kind === "triangle") {
      path.moveTo(x, y - r);
      path.lineTo(x + r, y + r);
      path.lineTo(x - r, y + r);
      path.closePath();
    } else if (kind === "diamond") {
      path.moveTo(x, y - r);
      path.lineTo(x + r, y);
      path.lineTo(x, y + r);
      path.lineTo(x - r, y);
      path.closePath();
    } else if (kind === "cross") {
      path.moveTo(x - r, y - r);
      path.lineTo(x + r, y + r);
      path.moveTo(x + r, y - r);
      path.lineTo(x - r, y + r);
    } else if (kind === "plus") {
      path.moveTo(x - r, y);
      path.lineTo(x + r, y);
      path.moveTo(x, y - r);
      path.lineTo(x, y + r);
    }
  }

  // A uPlot points path builder drawing `kind` at every non-zero value (zeros would crowd the axis).
  function points(kind) {
    return function (u, si, i0, i1) {
      var s = u.series[si];
      var xs = u.data[0];
      var ys = u.data[si];
      var r = (s.points.size / 2) * ratio();
      var open = kind === "cross" || kind === "plus" || kind === "hollow";
      var path = new Path2D();
      for (var i = i0; i <= i1; i++) {
        if (ys[i] == null || ys[i] === 0) continue;
        shape(path, kind, u.valToPos(xs[i], "x", true), u.valToPos(ys[i], s.scale, true), r);
      }
      return { stroke: path, fill: open ? null : path, clip: null, flags: 0 };
    };
  }

  function legendDash(u, si) {
    var dash = u.series[si].dash;
    if (!dash || !dash.length) return "solid";
    return dash[0] <= 2 ? "dotted" : "dashed";
  }

  // Vertical labelled lines for the marks, drawn after the series.
  function marksPlugin(marks) {
    return {
      hooks: {
        draw: [
          function (u) {
            var ctx = u.ctx;
            var box = u.bbox;
            var px = ratio();
            ctx.save();
            ctx.font = 11 * px + "px system-ui, sans-serif";
            ctx.textBaseline = "top";
            marks.forEach(function (m, n) {
              var x = Math.round(u.valToPos(m.t, "x", true));
              if (x < box.left || x > box.left + box.width) return;
              ctx.strokeStyle = "#1d2330";
              ctx.lineWidth = px;
              ctx.setLineDash((MARK_DASH[m.kind] || []).map(function (d) { return d * px; }));
              ctx.beginPath();
              ctx.moveTo(x, box.top);
              ctx.lineTo(x, box.top + box.height);
              ctx.stroke();
              var y = box.top + 2 * px + (n % 3) * 14 * px; // three rows, so neighbours do not overlap
              var w = ctx.measureText(m.label).width + 4 * px;
              ctx.fillStyle = "rgba(255,255,255,0.9)";
              ctx.fillRect(x + 2 * px, y, w, 13 * px);
              ctx.fillStyle = "#1d2330";
              ctx.fillText(m.label, x + 4 * px, y + px);
            });
            ctx.restore();
          },
        ],
      },
    };
  }

  // 24-hour clock and ISO dates, as in the tables under the chart (uPlot's default is 4:15pm, 11/30/26).
  function fmtDate(tpl) {
    return uPlot.fmtDate(
      tpl
        .split("{h}:{mm}{aa}").join("{HH}:{mm}")
        .split("{h}{aa}").join("{HH}:00")
        .split("{M}/{D}/{YY}").join("{YYYY}-{MM}-{DD}")
        .split("{M}/{D}").join("{MM}-{DD}")
    );
  }

  function upTo(u, min, max) {
    return [0, max > 0 ? max * 1.1 : 1];
  }

  function draw(json) {
    var tz = el.getAttribute("data-tz") || "UTC";
    var start = Date.parse(json.start) / 1000;
    var end = Date.parse(json.end) / 1000;
    var series = [{ label: "Bucket start" }];
    var data = [json.x];
    series.push({
      label: "Sends (grey bars)",
      scale: "n",
      stroke: "#6b7280",
      fill: "rgba(107,114,128,0.28)",
      width: 1,
      paths: uPlot.paths.bars({ align: 1, size: [0.9, Infinity] }),
      points: { show: false },
    });
    data.push(json.series.sends);
    LINES.forEach(function (l) {
      var credits = l[0] === "credits";
      series.push({
        label: l[1],
        scale: l[5],
        stroke: l[2],
        width: credits ? 2.5 : 1.5,
        dash: l[3] || undefined,
        paths: credits ? uPlot.paths.stepped({ align: 1 }) : undefined,
        points: { show: true, size: 8, width: 1.5, fill: l[2], paths: points(l[4]) },
        value: credits
          ? function (u, v) { return v == null ? "–" : v.toFixed(2); }
          : function (u, v) { return v == null ? "–" : String(v); },
      });
      data.push(json.series[l[0]]);
    });
    var opts = {
      width: Math.max(320, el.clientWidth),
      height: 340,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), tz); },
      fmtDate: fmtDate,
      scales: {
        x: { time: true, range: function () { return [start, end]; } },
        n: { range: upTo },
        credits: { range: upTo },
      },
      axes: [
        {},
        { scale: "n", label: "Sends, DLQ entries" },
        { scale: "credits", side: 1, label: "Credits", grid: { show: false } },
      ],
      series: series,
      legend: { markers: { dash: legendDash } },
      plugins: [marksPlugin(json.marks)],
    };
    el.textContent = "";
    var chart = new uPlot(opts, data, el);
    // The picture is an image with a text alternative; the legend under it stays a readable table.
    chart.ctx.canvas.setAttribute("role", "img");
    chart.ctx.canvas.setAttribute("aria-label", el.getAttribute("data-label") || "Timeline chart");
    if (document.getElementById("timeline-summary")) {
      chart.ctx.canvas.setAttribute("aria-describedby", "timeline-summary");
    }
    el.setAttribute("data-ready", "true");
    var resize = function () {
      chart.setSize({ width: Math.max(320, el.clientWidth), height: 340 });
    };
    window.addEventListener("resize", resize);
  }

  function fail(text) {
    el.textContent = "";
    var p = document.createElement("p");
    p.className = "errors";
    p.textContent = text + " The tables below hold the same figures.";
    el.appendChild(p);
    el.setAttribute("data-ready", "error");
  }

  fetch(el.getAttribute("data-src"), { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.json();
    })
    .then(draw)
    .catch(function (err) {
      fail("Could not draw the chart (" + err.message + ").");
    });
})();
