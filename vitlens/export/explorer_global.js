/* vitlens global view: a joint 2-D embedding of the query and key vectors of one layer and head
 * over a set of images (AttentionViz, Yeh et al. 2023). vitlensGlobal(root, data) draws it; the
 * payload comes from vitlens/export/explorer.py (write_global). Clicking a point shows its image
 * and patch and links to that image's explorer page at that layer, head and patch.
 */
function vitlensGlobal(root, data) {
  "use strict";
  function bytesOf(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function decodeF16(enc) {   // the page stores the coordinates as float16
    var n = enc.shape.reduce(function (a, b) { return a * b; }, 1), u = new Uint16Array(bytesOf(enc.b64).buffer, 0, n);
    var out = new Float32Array(n);
    for (var i = 0; i < n; i++) {
      var h = u[i], s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
      out[i] = e === 0 ? s * Math.pow(2, -14) * (f / 1024) : e === 31 ? (f ? NaN : s * Infinity) : s * Math.pow(2, e - 15) * (1 + f / 1024);
    }
    return out;
  }
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    for (var k in (attrs || {})) { if (k === "text") e.textContent = attrs[k]; else if (k === "cls") e.className = attrs[k]; else e.setAttribute(k, attrs[k]); }
    (kids || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  var T = data.tokens, P = data.prefix.length, G = data.grid, nImg = data.images.length, M = nImg * T;
  var st = {li: data.layers.length - 1, head: 0, color: "kind", picked: null};
  var cache = {};
  function coords(li) { if (!cache[li]) cache[li] = decodeF16(data.layers[li].emb); return cache[li]; }  // [H, 2, M, 2]

  root.innerHTML = ""; root.classList.add("vlx");
  var layerSel = el("select", {"data-role": "layer"}), headSel = el("select", {"data-role": "head"});
  data.layers.forEach(function (ly, i) { layerSel.appendChild(el("option", {value: String(i), text: "layer " + ly.layer})); });
  var colorSel = el("select", {"data-role": "color"});
  [["kind", "query / key"], ["position", "patch position"], ["image", "image"]].forEach(function (o) { colorSel.appendChild(el("option", {value: o[0], text: o[1]})); });
  layerSel.addEventListener("change", function () { st.li = parseInt(layerSel.value, 10); render(); });
  headSel.addEventListener("change", function () { st.head = parseInt(headSel.value, 10); render(); });
  colorSel.addEventListener("change", function () { st.color = colorSel.value; render(); });
  var S = 560, canvas = el("canvas", {"data-role": "scatter", width: String(S), height: String(S)});
  canvas.style.border = "1px solid #ccd"; canvas.style.cursor = "crosshair";
  var info = el("div", {cls: "vlx-info", "data-role": "info"});
  var picked = el("div", {"data-role": "picked"});
  var legend = el("div", {cls: "vlx-note"});
  root.appendChild(el("div", {cls: "vlx-title", text: "Queries and keys of " + nImg + " images \u2014 " + data.model}));
  root.appendChild(el("div", {cls: "vlx-sub", text: "Joint PCA of one head's query and key vectors (keys scaled and translated so that " +
    "attention is unchanged, as in AttentionViz). Click a point to see its image and patch."}));
  root.appendChild(el("div", {cls: "vlx-controls"}, [el("label", {}, [document.createTextNode("layer "), layerSel]),
    el("label", {}, [document.createTextNode("head "), headSel]), el("label", {}, [document.createTextNode("colour by "), colorSel])]));
  root.appendChild(el("div", {cls: "vlx-body"}, [el("div", {cls: "vlx-view"}, [canvas, legend, info]), el("div", {cls: "vlx-side"}, [picked])]));

  var ctx = canvas.getContext("2d"), screen = null;
  function hsl(h, s, l) { return "hsl(" + Math.round(h) + "," + s + "%," + l + "%)"; }
  function colorOf(kind, i, t) {
    if (st.color === "kind") return kind === 0 ? "rgba(46,110,200,0.55)" : "rgba(220,90,40,0.55)";
    if (st.color === "image") return hsl(360 * i / Math.max(1, nImg), 70, kind === 0 ? 45 : 60);
    if (t < P) return "rgba(0,0,0,0.8)";
    var r = Math.floor((t - P) / G[1]), c = (t - P) % G[1];
    return "rgb(" + Math.round(40 + 200 * r / Math.max(1, G[0] - 1)) + "," + Math.round(40 + 200 * c / Math.max(1, G[1] - 1)) + ",160)";
  }
  function render() {
    var ly = data.layers[st.li];
    if (headSel.getAttribute("data-layer") !== String(st.li)) {
      headSel.innerHTML = "";
      ly.heads.forEach(function (h, i) { headSel.appendChild(el("option", {value: String(i), text: "head " + h})); });
      headSel.setAttribute("data-layer", String(st.li));
      if (st.head >= ly.heads.length) st.head = 0;
    }
    layerSel.value = String(st.li); headSel.value = String(st.head);
    var xy = coords(st.li), base = st.head * 2 * M * 2, lo = [Infinity, Infinity], hi = [-Infinity, -Infinity], i, a;
    for (i = 0; i < 2 * M; i++) for (a = 0; a < 2; a++) { var v = xy[base + 2 * i + a]; if (v < lo[a]) lo[a] = v; if (v > hi[a]) hi[a] = v; }
    var span = Math.max(hi[0] - lo[0], hi[1] - lo[1]) || 1, pad = 14;
    screen = new Float32Array(4 * M);
    ctx.clearRect(0, 0, S, S); ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, S, S);
    for (var kind = 0; kind < 2; kind++) for (i = 0; i < M; i++) {
      var x = pad + (xy[base + 2 * (kind * M + i)] - lo[0]) / span * (S - 2 * pad);
      var y = S - pad - (xy[base + 2 * (kind * M + i) + 1] - lo[1]) / span * (S - 2 * pad);
      screen[2 * (kind * M + i)] = x; screen[2 * (kind * M + i) + 1] = y;
      var t = i % T;
      ctx.fillStyle = colorOf(kind, Math.floor(i / T), t);
      ctx.beginPath(); ctx.arc(x, y, t < P ? 4 : 2.2, 0, 2 * Math.PI); ctx.fill();
    }
    if (st.picked) {
      var pk = st.picked.kind * M + st.picked.index;
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(screen[2 * pk], screen[2 * pk + 1], 7, 0, 2 * Math.PI); ctx.stroke();
    }
    var ex = ly.explained[st.head];
    legend.textContent = (st.color === "kind" ? "blue: queries, orange: keys. " : st.color === "position" ? "red: lower rows, green: right columns; black: prefix tokens. " : "one hue per image (queries darker). ") +
      "PCA axes hold " + (100 * ex[0]).toFixed(1) + "% and " + (100 * ex[1]).toFixed(1) + "% of the variance.";
    root.setAttribute("data-ready", "1");
  }
  function tokenName(t) { return t < P ? data.prefix[t] : "patch (" + Math.floor((t - P) / G[1]) + ", " + ((t - P) % G[1]) + ")"; }
  function pick(kind, index) {
    st.picked = {kind: kind, index: index};
    var im = data.images[Math.floor(index / T)], t = index % T, ly = data.layers[st.li], head = ly.heads[st.head];
    picked.innerHTML = "";
    var c = el("canvas", {width: "160", height: "160", "data-role": "thumb"}), g = c.getContext("2d"), img = new Image();
    img.onload = function () {
      g.drawImage(img, 0, 0, 160, 160);
      if (t >= P) {
        var r = Math.floor((t - P) / G[1]), col = (t - P) % G[1];
        g.lineWidth = 2; g.strokeStyle = "#fff"; g.strokeRect(col * 160 / G[1], r * 160 / G[0], 160 / G[1], 160 / G[0]);
      }
    };
    img.src = im.thumb;
    var hash = "#layer=" + ly.layer + "&head=" + head + "&mode=" + (kind === 0 ? "row" : "col") +
      (t >= P ? "&patch=" + Math.floor((t - P) / G[1]) + "," + ((t - P) % G[1]) : "&mode=cls");
    if (t < P) hash = "#layer=" + ly.layer + "&head=" + head + "&mode=cls";
    var link = el("a", {href: im.href + hash, target: "_blank", "data-role": "open", text: "open " + im.name + " at this patch"});
    picked.appendChild(el("div", {cls: "vlx-title", text: (kind === 0 ? "query" : "key") + " of " + tokenName(t)}));
    picked.appendChild(el("div", {text: im.name + ", layer " + ly.layer + ", head " + head}));
    picked.appendChild(c); picked.appendChild(el("div", {}, [link]));
    render();
  }
  canvas.addEventListener("click", function (ev) {
    var r = canvas.getBoundingClientRect(), x = (ev.clientX - r.left) * S / r.width, y = (ev.clientY - r.top) * S / r.height;
    var best = -1, bd = 100;   // within 10 px
    for (var i = 0; i < 2 * M; i++) { var dx = screen[2 * i] - x, dy = screen[2 * i + 1] - y, d = dx * dx + dy * dy; if (d < bd) { bd = d; best = i; } }
    if (best >= 0) pick(best >= M ? 1 : 0, best % M);
  });
  root.vitlens = {state: st, render: render, pick: pick, screen: function () { return Array.from(screen); }};
  render();
}
