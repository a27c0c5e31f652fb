/* vitlens attention explorer.
 *
 * vitlensExplorer(root, data) builds the explorer inside `root` from the payload written by
 * vitlens/export/explorer.py (format described there). Everything lives in this function's
 * closure (the Python side wraps it in an IIFE per instance), so several explorers on one
 * page or notebook do not share state; the instance's API is root.vitlens (used by the tests).
 *
 * No network: the image is a data: URI, the attention arrays are base64 in the page.
 */
function vitlensExplorer(root, data) {
  "use strict";

  // ------------------------------------------------------------------ decoding
  function bytesOf(b64) {
    var s = atob(b64), n = s.length, out = new Uint8Array(n);
    for (var i = 0; i < n; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function halfToFloat(h) {
    var s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * Math.pow(2, e - 15) * (1 + f / 1024);
  }
  function prod(shape) { var n = 1; for (var i = 0; i < shape.length; i++) n *= shape[i]; return n; }
  /* An encoded array {dtype, shape, b64[, scale]} -> a flat typed array (little-endian payload). */
  function decode(enc) {
    var raw = bytesOf(enc.b64), n = prod(enc.shape), out, i;
    if (enc.dtype === "f32") return new Float32Array(raw.buffer, 0, n);
    if (enc.dtype === "i32") return new Int32Array(raw.buffer, 0, n);
    if (enc.dtype === "f16") {
      var u16 = new Uint16Array(raw.buffer, 0, n);
      out = new Float32Array(n);
      var table = new Float32Array(65536);
      for (i = 0; i < 65536; i++) table[i] = halfToFloat(i);
      for (i = 0; i < n; i++) out[i] = table[u16[i]];
      return out;
    }
    if (enc.dtype === "u8row") {   // value = q * scale[row], one scale per row of the last axis
      var scale = new Float32Array(bytesOf(enc.scale).buffer), w = enc.shape[enc.shape.length - 1];
      out = new Float32Array(n);
      for (i = 0; i < n; i++) out[i] = raw[i] * scale[(i / w) | 0];
      return out;
    }
    throw new Error("vitlens explorer: unknown array encoding " + enc.dtype);
  }

  // ------------------------------------------------------------------ state
  var L = data.layers, P = data.prefix.length, clsIndex = data.prefix.indexOf("cls");
  var st = {
    tab: "attention", mode: "row", li: L.length - 1, head: "mean", cls: 0, alpha: 0.6,
    sel: null, hover: null, windows: true, grid: false
  };
  var decoded = {};            // layer position -> decoded attention
  var receivedCache = {};
  function attnOf(li) {
    if (!decoded[li]) {
      var ly = L[li], a = decode(ly.attn), entry = {a: a};
      if (ly.window) {
        entry.tokenIndex = decode(ly.window.token_index);
        entry.windowId = decode(ly.window.window_id);
        entry.regionId = decode(ly.window.region_id);
        var N = ly.grid[0] * ly.grid[1], pos = new Int32Array(N).fill(-1);
        for (var j = 0; j < entry.tokenIndex.length; j++) if (entry.tokenIndex[j] >= 0) pos[entry.tokenIndex[j]] = j;
        entry.pos = pos;      // stage token -> flat window position w * n + p
      }
      decoded[li] = entry;
    }
    return decoded[li];
  }
  function receivedOf(li) {
    if (!receivedCache[li]) receivedCache[li] = decode(L[li].received);
    return receivedCache[li];
  }
  var mapsDecoded = data.maps.map(function (m) { return null; });
  function methodMaps(mi) { if (!mapsDecoded[mi]) mapsDecoded[mi] = decode(data.maps[mi].maps); return mapsDecoded[mi]; }

  // -------------------------------------------------------------- geometry
  var box = data.box, inH = data.input[0], inW = data.input[1];
  var img = new Image();
  var iw = data.image.w, ih = data.image.h;
  var longSide = Math.max(iw, ih), target = Math.min(Math.max(longSide, 512), 1024);
  var S = target / longSide;                    // canvas pixels per image pixel
  var CW = Math.round(iw * S), CH = Math.round(ih * S);
  /* input pixel (x, y) -> canvas pixel */
  function toCanvas(x, y) {
    return [(box[0] + x * (box[2] - box[0]) / inW) * S, (box[1] + y * (box[3] - box[1]) / inH) * S];
  }
  function toInput(cx, cy) {
    return [(cx / S - box[0]) * inW / (box[2] - box[0]), (cy / S - box[1]) * inH / (box[3] - box[1])];
  }
  /* cell index of input point p on a grid with patch size */
  function cellAt(p, grid, patch) {
    if (!p) return -1;
    var r = Math.floor(p[1] / patch[0]), c = Math.floor(p[0] / patch[1]);
    if (r < 0 || c < 0 || r >= grid[0] || c >= grid[1]) return -1;
    return r * grid[1] + c;
  }
  function cellRect(cell, grid, patch) {
    var r = Math.floor(cell / grid[1]), c = cell % grid[1];
    var a = toCanvas(c * patch[1], r * patch[0]), b = toCanvas((c + 1) * patch[1], (r + 1) * patch[0]);
    return [a[0], a[1], b[0], b[1]];
  }

  // -------------------------------------------------------------- the maps
  function headList(li) { return L[li].heads; }
  /* Per head vector over the layer's tokens: fn(hPos) -> Float32Array(N); fused by st.head. */
  function fuse(li, perHead) {
    var H = headList(li).length;
    if (typeof st.head === "number") return perHead(st.head);
    var acc = null, i, h;
    for (h = 0; h < H; h++) {
      var v = perHead(h);
      if (!acc) { acc = Float32Array.from(v); continue; }
      if (st.head === "max") { for (i = 0; i < v.length; i++) if (v[i] > acc[i]) acc[i] = v[i]; }
      else { for (i = 0; i < v.length; i++) acc[i] += v[i]; }
    }
    if (st.head !== "max") for (i = 0; i < acc.length; i++) acc[i] /= H;
    return acc;
  }
  /* Attention of layer li, head position h: the row of query cell q ("row"), the CLS row ("cls"),
     or the column of key cell q ("col"), over the layer's patch cells. Prefix part in out.prefix. */
  function attnVector(li, h, mode, q) {
    var ly = L[li], e = attnOf(li), N = ly.grid[0] * ly.grid[1], out = new Float32Array(N), j;
    var H = ly.heads.length;
    if (!ly.window) {
      var T = N + P, base = h * T * T;
      if (mode === "row" || mode === "cls") {
        var qt = mode === "cls" ? clsIndex : P + q, rowBase = base + qt * T;
        for (j = 0; j < N; j++) out[j] = e.a[rowBase + P + j];
        out.prefix = []; for (j = 0; j < P; j++) out.prefix.push(e.a[rowBase + j]);
      } else {
        var kt = P + q;
        for (j = 0; j < N; j++) out[j] = e.a[base + (P + j) * T + kt];
        out.prefix = []; for (j = 0; j < P; j++) out.prefix.push(e.a[base + j * T + kt]);
      }
      return out;
    }
    var n = ly.window.n, flat = e.pos[q], w = Math.floor(flat / n), p = flat % n;
    var wBase = ((w * H) + h) * n * n;
    for (j = 0; j < n; j++) {
      var tk = e.tokenIndex[w * n + j];
      if (tk < 0) continue;
      out[tk] = mode === "col" ? e.a[wBase + j * n + p] : e.a[wBase + p * n + j];
    }
    out.prefix = [];
    return out;
  }
  function selCell(li) {
    var ly = L[li], p = st.hover || st.sel;
    var c = cellAt(p, ly.grid, ly.patch);
    return c;
  }
  /* The map on screen: {values, grid, patch, label} (values null when nothing to show). */
  function currentMap(headOverride) {
    var saved = st.head;
    if (headOverride !== undefined) st.head = headOverride;
    try {
      var ly = L[st.li];
      if (st.tab === "attention") {
        var q = selCell(st.li);
        if (st.mode !== "cls" && q < 0) return {values: null, grid: ly.grid, patch: ly.patch, label: "click a patch"};
        var pre = null;
        var v = fuse(st.li, function (h) { var r = attnVector(st.li, h, st.mode, q); pre = pre || r.prefix; return r; });
        var what = st.mode === "cls" ? "CLS row" : (st.mode === "row" ? "row of patch " + cellName(q, ly.grid) :
          "column of patch " + cellName(q, ly.grid));
        return {values: v, grid: ly.grid, patch: ly.patch, label: what, cell: st.mode === "cls" ? -1 : q};
      }
      if (st.tab === "received") {
        var R = receivedOf(st.li), N = ly.grid[0] * ly.grid[1];
        var rv = fuse(st.li, function (h) { return R.subarray(h * N, (h + 1) * N); });
        return {values: rv, grid: ly.grid, patch: ly.patch, label: "attention received"};
      }
      var mi = tabMethodIndex(st.tab), m = data.maps[mi], G = m.grid[0] * m.grid[1];
      var k = m.classes ? st.cls : 0, all = methodMaps(mi);
      return {values: all.subarray(k * G, (k + 1) * G), grid: m.grid, patch: m.patch,
              label: m.label + (m.classes ? " for " + data.classes[st.cls].name : "")};
    } finally { st.head = saved; }
  }
  function cellName(c, grid) { return "(" + Math.floor(c / grid[1]) + ", " + (c % grid[1]) + ")"; }
  function tabMethodIndex(tab) { return parseInt(tab.slice(2), 10); }

  // -------------------------------------------------------------- drawing
  var lut = data.lut;
  function range(v) {
    var lo = Infinity, hi = -Infinity;
    for (var i = 0; i < v.length; i++) { if (v[i] < lo) lo = v[i]; if (v[i] > hi) hi = v[i]; }
    return [lo, hi];
  }
  /* Min-max to 0..255 (a constant map is all 0), as vitlens.export.overlay does. */
  function level(x, lo, hi) { return hi > lo ? Math.round((x - lo) / (hi - lo) * 255) : 0; }
  function drawScene(ctx, map, scale, opts) {
    var w = ctx.canvas.width, h = ctx.canvas.height;
    ctx.save();
    ctx.clearRect(0, 0, w, h);
    ctx.scale(scale, scale);
    ctx.imageSmoothingEnabled = iw * S < CW * 0.999 || longSide < 256 ? false : true;
    ctx.drawImage(img, 0, 0, CW, CH);
    var b0 = [box[0] * S, box[1] * S, box[2] * S, box[3] * S];
    // dim what the model never saw (outside its centre crop)
    ctx.fillStyle = "rgba(0,0,0,0.6)";
    ctx.beginPath(); ctx.rect(0, 0, CW, CH); ctx.rect(b0[0], b0[1], b0[2] - b0[0], b0[3] - b0[1]);
    ctx.fill("evenodd");
    if (map.values) {
      var r = range(map.values), G = map.grid, i;
      ctx.save();
      ctx.beginPath(); ctx.rect(b0[0], b0[1], b0[2] - b0[0], b0[3] - b0[1]); ctx.clip();
      ctx.globalAlpha = st.alpha;
      for (i = 0; i < map.values.length; i++) {
        var lv = level(map.values[i], r[0], r[1]), rc = cellRect(i, G, map.patch);
        ctx.fillStyle = "rgb(" + lut[3 * lv] + "," + lut[3 * lv + 1] + "," + lut[3 * lv + 2] + ")";
        // whole canvas pixels, so neighbouring cells neither overlap nor leave seams
        var x0 = Math.round(rc[0]), y0 = Math.round(rc[1]);
        ctx.fillRect(x0, y0, Math.round(rc[2]) - x0, Math.round(rc[3]) - y0);
      }
      ctx.restore();
      map.range = r;
    }
    var ly = L[st.li];
    if (opts.overlays && st.tab !== "rollout" && st.tab.indexOf("m:") !== 0) {
      if (ly.window && st.windows) drawWindows(ctx, st.li);
      if (st.grid) drawGrid(ctx, map.grid, map.patch);
    } else if (opts.overlays && st.grid) drawGrid(ctx, map.grid, map.patch);
    if (opts.overlays && map.cell !== undefined && map.cell >= 0) {
      var cr = cellRect(map.cell, map.grid, map.patch);
      ctx.lineWidth = 2; ctx.strokeStyle = "#fff";
      ctx.strokeRect(cr[0] + 1, cr[1] + 1, cr[2] - cr[0] - 2, cr[3] - cr[1] - 2);
      ctx.lineWidth = 1; ctx.strokeStyle = "#000";
      ctx.strokeRect(cr[0] - 0.5, cr[1] - 0.5, cr[2] - cr[0] + 1, cr[3] - cr[1] + 1);
    }
    ctx.restore();
  }
  function drawGrid(ctx, grid, patch) {
    ctx.save(); ctx.strokeStyle = "rgba(255,255,255,0.35)"; ctx.lineWidth = 1; ctx.beginPath();
    for (var r = 0; r <= grid[0]; r++) { var a = toCanvas(0, r * patch[0]), b = toCanvas(grid[1] * patch[1], r * patch[0]); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); }
    for (var c = 0; c <= grid[1]; c++) { var a2 = toCanvas(c * patch[1], 0), b2 = toCanvas(c * patch[1], grid[0] * patch[0]); ctx.moveTo(a2[0], a2[1]); ctx.lineTo(b2[0], b2[1]); }
    ctx.stroke(); ctx.restore();
  }
  /* Swin: boundaries between stage tokens of different windows (solid) and, inside a shifted
     window, of different shift-mask regions (dashed): the sets of tokens that can attend to each other. */
  function drawWindows(ctx, li) {
    var ly = L[li], e = attnOf(li), gh = ly.grid[0], gw = ly.grid[1], pt = ly.patch;
    function seg(x0, y0, x1, y1) { var a = toCanvas(x0, y0), b = toCanvas(x1, y1); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); }
    [["win", [], "rgba(255,255,255,0.9)"], ["reg", [4, 3], "rgba(255,255,255,0.7)"]].forEach(function (pass) {
      ctx.save(); ctx.setLineDash(pass[1]); ctx.strokeStyle = pass[2]; ctx.lineWidth = 1.5; ctx.beginPath();
      for (var r = 0; r < gh; r++) for (var c = 0; c < gw; c++) {
        var t = r * gw + c;
        if (c + 1 < gw) {
          var dw = e.windowId[t] !== e.windowId[t + 1], dr = e.regionId[t] !== e.regionId[t + 1];
          if (pass[0] === "win" ? dw : (!dw && dr)) seg((c + 1) * pt[1], r * pt[0], (c + 1) * pt[1], (r + 1) * pt[0]);
        }
        if (r + 1 < gh) {
          var dw2 = e.windowId[t] !== e.windowId[t + gw], dr2 = e.regionId[t] !== e.regionId[t + gw];
          if (pass[0] === "win" ? dw2 : (!dw2 && dr2)) seg(c * pt[1], (r + 1) * pt[0], (c + 1) * pt[1], (r + 1) * pt[0]);
        }
      }
      ctx.stroke(); ctx.restore();
    });
  }

  // -------------------------------------------------------------- DOM
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  root.innerHTML = "";
  root.classList.add("vlx");
  var title = el("div", {cls: "vlx-title", text: data.name + " \u2014 " + data.model});
  var sub = el("div", {cls: "vlx-sub", text: (data.windowed ? "windowed attention (" + data.family + "), " : "") +
    "input " + inW + "\u00d7" + inH + " px, " + data.num_layers + " layers" +
    (P ? ", prefix tokens: " + data.prefix.join(", ") : "") + ". Click or hover a patch."});
  var tabs = el("div", {cls: "vlx-tabs", role: "tablist"});
  var tabDefs = [["attention", "Attention"], ["received", "Received"]];
  data.maps.forEach(function (m, i) { tabDefs.push(["m:" + i, m.label]); });
  var tabButtons = {};
  tabDefs.forEach(function (t) {
    var b = el("button", {cls: "vlx-tab", type: "button", "data-tab": t[0], text: t[1]});
    b.addEventListener("click", function () { st.tab = t[0]; render(); });
    tabs.appendChild(b); tabButtons[t[0]] = b;
  });
  var name = root.id || "vlx";
  function radio(value, label, disabled) {
    var inp = el("input", {type: "radio", name: name + "-mode", value: value, "data-mode": value});
    if (disabled) inp.disabled = true;
    inp.addEventListener("change", function () { st.mode = value; render(); });
    return el("label", {title: label}, [inp, document.createTextNode(" " + label)]);
  }
  var modeBox = el("span", {cls: "vlx-mode"}, [
    radio("row", "patch row (where it looks)"),
    radio("cls", "CLS row", clsIndex < 0 || data.windowed),
    radio("col", "column (what looks at it)")]);
  var slider = el("input", {type: "range", min: "0", max: String(L.length - 1), step: "1", value: String(st.li), "data-role": "layer"});
  var layerLabel = el("span", {"data-role": "layer-label"});
  slider.addEventListener("input", function () { st.li = parseInt(slider.value, 10); render(); });
  var layerBox = el("label", {}, [document.createTextNode("layer "), slider, document.createTextNode(" "), layerLabel]);
  var headSel = el("select", {"data-role": "head"});
  headSel.addEventListener("change", function () {
    var v = headSel.value; st.head = (v === "mean" || v === "max" || v === "all") ? v : parseInt(v, 10); render();
  });
  var headBox = el("label", {}, [document.createTextNode("head "), headSel]);
  var classSel = el("select", {"data-role": "class"});
  data.classes.forEach(function (c, i) { classSel.appendChild(el("option", {value: String(i), text: c.name + " (" + c.prob.toFixed(3) + ")"})); });
  classSel.addEventListener("change", function () { st.cls = parseInt(classSel.value, 10); render(); });
  var classBox = el("label", {}, [document.createTextNode("class "), classSel]);
  var alpha = el("input", {type: "range", min: "0", max: "1", step: "0.05", value: String(st.alpha), "data-role": "alpha"});
  alpha.addEventListener("input", function () { st.alpha = parseFloat(alpha.value); render(); });
  var alphaBox = el("label", {}, [document.createTextNode("opacity "), alpha]);
  var winChk = el("input", {type: "checkbox", "data-role": "windows"}); winChk.checked = st.windows;
  winChk.addEventListener("change", function () { st.windows = winChk.checked; render(); });
  var gridChk = el("input", {type: "checkbox", "data-role": "grid"});
  gridChk.addEventListener("change", function () { st.grid = gridChk.checked; render(); });
  var exportBtn = el("button", {cls: "vlx-btn", type: "button", "data-role": "export", text: "Export PNG"});
  exportBtn.addEventListener("click", exportPNG);
  var controls = el("div", {cls: "vlx-controls"}, [modeBox, layerBox, headBox, classBox, alphaBox,
    data.windowed ? el("label", {}, [winChk, document.createTextNode(" windows")]) : null,
    el("label", {}, [gridChk, document.createTextNode(" grid")]), exportBtn]);

  var canvas = el("canvas", {cls: "vlx-main", "data-role": "main"});
  canvas.width = CW; canvas.height = CH;
  var barCanvas = el("canvas"); barCanvas.width = 256; barCanvas.height = 1;
  var bctx = barCanvas.getContext("2d"), bimg = bctx.createImageData(256, 1);
  for (var i0 = 0; i0 < 256; i0++) { bimg.data[4 * i0] = lut[3 * i0]; bimg.data[4 * i0 + 1] = lut[3 * i0 + 1]; bimg.data[4 * i0 + 2] = lut[3 * i0 + 2]; bimg.data[4 * i0 + 3] = 255; }
  bctx.putImageData(bimg, 0, 0);
  var lo = el("span"), hi = el("span"), caption = el("span");
  var bar = el("div", {cls: "vlx-bar"}, [lo, barCanvas, hi, caption]);
  var info = el("div", {cls: "vlx-info", "data-role": "info"});
  var multi = el("div", {cls: "vlx-multi", "data-role": "multi"});
  var view = el("div", {cls: "vlx-view"}, [canvas, bar, info, multi]);
  var preds = el("ol", {cls: "vlx-preds"});
  data.classes.forEach(function (c) {
    preds.appendChild(el("li", {}, [el("span", {cls: "vlx-pbar", style: "width:" + Math.max(1, Math.round(c.prob * 80)) + "px"}),
      el("span", {text: c.prob.toFixed(3) + "  " + c.name})]));
  });
  var charts = el("div", {"data-role": "charts"});
  var side = el("div", {cls: "vlx-side"}, [el("div", {cls: "vlx-title", text: "Predictions"}), preds,
    el("div", {cls: "vlx-title", text: "Heads of this image"}), charts,
    el("div", {cls: "vlx-note", text: "Each dot is one head (x: layer). Click a dot to show that layer and head. " +
      "Maps are min-max scaled per view; the patch row is the attention of the selected query patch over the keys; " +
      "the column is the attention the selected patch receives from every query."})]);
  var body = el("div", {cls: "vlx-body"}, [view, side]);
  root.appendChild(title); root.appendChild(sub); root.appendChild(tabs); root.appendChild(controls); root.appendChild(body);
  (data.notes || []).forEach(function (n) { root.appendChild(el("div", {cls: "vlx-note", text: n})); });

  // -------------------------------------------------------------- interaction
  function eventPoint(ev) {
    var r = canvas.getBoundingClientRect();
    var cx = (ev.clientX - r.left) * canvas.width / r.width, cy = (ev.clientY - r.top) * canvas.height / r.height;
    return toInput(cx, cy);
  }
  function insideInput(p) { return p[0] >= 0 && p[1] >= 0 && p[0] < inW && p[1] < inH; }
  canvas.addEventListener("mousemove", function (ev) {
    var p = eventPoint(ev);
    st.hover = insideInput(p) ? p : null;
    if (st.tab === "attention" && st.mode !== "cls") render(); else showInfo(p);
  });
  canvas.addEventListener("mouseleave", function () { st.hover = null; render(); });
  canvas.addEventListener("click", function (ev) {
    var p = eventPoint(ev);
    if (!insideInput(p)) return;
    st.sel = p; st.hover = null;
    if (st.tab === "attention" && st.mode === "cls") st.mode = "row";
    render();
  });
  var lastMap = null;
  function showInfo(p) {
    if (!lastMap || !lastMap.values) { info.textContent = lastMap ? lastMap.label : ""; return; }
    var c = p ? cellAt(p, lastMap.grid, lastMap.patch) : -1;
    var txt = lastMap.label;
    if (lastMap.prefixText) txt += " \u2014 " + lastMap.prefixText;
    if (c >= 0) txt += " \u2014 at " + cellName(c, lastMap.grid) + ": " + fmt(lastMap.values[c]);
    info.textContent = txt;
  }
  function fmt(x) { return Math.abs(x) >= 0.01 || x === 0 ? x.toFixed(4) : x.toExponential(2); }

  function exportPNG() {
    var a = document.createElement("a");
    var layer = L[st.li].layer;
    a.download = (data.name.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/\.[A-Za-z0-9]+$/, "") || "image") + "_" +
      st.tab.replace(":", "") + (st.tab === "attention" ? "_" + st.mode : "") + "_L" + layer + "_" +
      (typeof st.head === "number" ? "h" + L[st.li].heads[st.head] : st.head) + ".png";
    a.href = canvas.toDataURL("image/png");
    a.style.display = "none";
    root.appendChild(a); a.click(); root.removeChild(a);
    return a.download;
  }

  // -------------------------------------------------------------- charts
  var SVG = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs) { var e = document.createElementNS(SVG, tag); for (var k in attrs) e.setAttribute(k, attrs[k]); return e; }
  function drawCharts() {
    charts.innerHTML = "";
    ["distance", "entropy"].forEach(function (key) {
      var rows = data.stats[key];
      if (!rows) return;
      var W = 300, H = 140, ml = 34, mb = 18, mt = 24, vals = [];
      rows.forEach(function (r) { r.forEach(function (v) { if (v !== null) vals.push(v); }); });
      if (!vals.length) return;
      var vmin = Math.min.apply(null, vals), vmax = Math.max.apply(null, vals);
      if (vmax <= vmin) { vmax = vmin + 1; }
      var svg = svgEl("svg", {width: W, height: H, "class": "vlx-chart", "data-stat": key});
      var t = svgEl("text", {x: 0, y: 10}); t.textContent = (key === "distance" ? "mean attention distance" : "attention entropy") + " (" + data.stats.units[key] + ")";
      svg.appendChild(t);
      var xs = function (li) { return ml + (L.length > 1 ? li * (W - ml - 8) / (L.length - 1) : (W - ml) / 2); };
      var ys = function (v) { return mt + (1 - (v - vmin) / (vmax - vmin)) * (H - mt - mb); };
      [vmin, vmax].forEach(function (v) { var tx = svgEl("text", {x: 0, y: ys(v) + 3}); tx.textContent = v.toPrecision(3); svg.appendChild(tx); });
      svg.appendChild(svgEl("rect", {x: xs(st.li) - 5, y: mt - 2, width: 10, height: H - mt - mb + 4, fill: "#eef1f7"}));
      rows.forEach(function (r, li) {
        if (li % Math.ceil(L.length / 12) === 0) { var lx = svgEl("text", {x: xs(li) - 3, y: H - 4}); lx.textContent = L[li].layer; svg.appendChild(lx); }
        r.forEach(function (v, h) {
          if (v === null) return;
          var on = li === st.li && st.head === h;
          var c = svgEl("circle", {cx: xs(li), cy: ys(v), r: on ? 5 : 3, fill: on ? "#e0402a" : "#4a6fb5", "fill-opacity": on ? 1 : 0.7,
            "data-layer": li, "data-head": h});
          var tt = svgEl("title", {}); tt.textContent = "layer " + L[li].layer + ", head " + L[li].heads[h] + ": " + v.toPrecision(4);
          c.appendChild(tt);
          c.addEventListener("click", function () { setLayerHead(li, h); });
          svg.appendChild(c);
        });
      });
      charts.appendChild(svg);
    });
  }
  function setLayerHead(li, h) {
    st.li = li; st.head = h;
    if (st.tab !== "attention" && st.tab !== "received") st.tab = "attention";
    render();
  }

  // -------------------------------------------------------------- render
  var ctx = canvas.getContext("2d");
  function render() {
    var ly = L[st.li], perLayer = st.tab === "attention" || st.tab === "received";
    var H = ly.heads.length;
    if (typeof st.head === "number" && st.head >= H) st.head = "mean";
    Object.keys(tabButtons).forEach(function (k) { tabButtons[k].classList.toggle("vlx-on", k === st.tab); });
    // head options depend on the layer (Swin stages have different head counts)
    var wanted = ["mean", "max", "all"].concat(ly.heads.map(function (h, i) { return String(i); }));
    if (headSel.options.length !== wanted.length || headSel.getAttribute("data-layer") !== String(st.li)) {
      headSel.innerHTML = "";
      ["mean", "max", "all"].forEach(function (v) { headSel.appendChild(el("option", {value: v, text: v === "all" ? "all (small multiples)" : v + " over heads"})); });
      ly.heads.forEach(function (h, i) { headSel.appendChild(el("option", {value: String(i), text: "head " + h})); });
      headSel.setAttribute("data-layer", String(st.li));
    }
    headSel.value = String(st.head);
    slider.value = String(st.li);
    layerLabel.textContent = ly.layer + (ly.window ? " (stage " + ly.window.stage + ", " + ly.grid[0] + "\u00d7" + ly.grid[1] +
      (ly.window.shift[0] || ly.window.shift[1] ? ", shifted" : "") + ")" : "") + " / " + (data.num_layers - 1);
    modeBox.querySelectorAll("input").forEach(function (inp) { inp.checked = inp.value === st.mode; });
    modeBox.classList.toggle("vlx-off", st.tab !== "attention");
    layerBox.classList.toggle("vlx-off", !perLayer);
    headBox.classList.toggle("vlx-off", !perLayer);
    var mi = st.tab.indexOf("m:") === 0 ? tabMethodIndex(st.tab) : -1;
    classBox.classList.toggle("vlx-off", !(mi >= 0 && data.maps[mi].classes));
    classSel.value = String(st.cls);

    var map = currentMap(st.head === "all" ? "mean" : undefined);
    if (st.tab === "attention" && map.values && P) {
      var q = map.cell, pv = fuse(st.li, function (h) { var r = attnVector(st.li, h, st.mode, q); return Float32Array.from(r.prefix); });
      map.prefixText = (st.mode === "col" ? "from " : "on ") + data.prefix.map(function (nm, i) { return nm + " " + fmt(pv[i]); }).join(", ");
    }
    drawScene(ctx, map, 1, {overlays: true});
    lastMap = map;
    if (map.values) { lo.textContent = fmt(map.range[0]); hi.textContent = fmt(map.range[1]); }
    else { lo.textContent = ""; hi.textContent = ""; }
    caption.textContent = map.label + (perLayer ? ", layer " + ly.layer + ", " + (typeof st.head === "number" ? "head " + ly.heads[st.head] : st.head === "all" ? "mean over heads" : st.head + " over heads") : "");
    showInfo(st.hover);
    // small multiples of every head
    multi.innerHTML = "";
    if (st.head === "all" && perLayer) {
      var tw = Math.min(180, Math.round(CW / 3)), sc = tw / CW;
      ly.heads.forEach(function (h, i) {
        var m = currentMap(i), c = el("canvas", {"data-head": String(i)});
        c.width = Math.round(CW * sc); c.height = Math.round(CH * sc);
        drawScene(c.getContext("2d"), m, sc, {overlays: false});
        var fig = el("figure", {"data-head": String(i)}, [c, el("figcaption", {text: "head " + h})]);
        fig.addEventListener("click", function () { st.head = i; render(); });
        multi.appendChild(fig);
      });
    }
    drawCharts();
    root.setAttribute("data-ready", "1");
  }

  // -------------------------------------------------------------- start
  var mid = L[st.li];
  st.sel = [(Math.floor(mid.grid[1] / 2) + 0.5) * mid.patch[1], (Math.floor(mid.grid[0] / 2) + 0.5) * mid.patch[0]];
  if (mid.patch[1] * mid.grid[1] > inW) st.sel[0] = inW / 2;
  if (mid.patch[0] * mid.grid[0] > inH) st.sel[1] = inH / 2;

  // a link from the global view: #layer=L&head=H&mode=row|col|cls&patch=r,c (model layer and head indices)
  var hash = {};
  String(window.location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("="); if (p[0]) hash[p[0]] = decodeURIComponent(p[1] || "");
  });
  if (hash.layer !== undefined) {
    L.forEach(function (ly, i) { if (ly.layer === parseInt(hash.layer, 10)) st.li = i; });
    var hp = L[st.li].heads.indexOf(parseInt(hash.head, 10));
    if (hp >= 0) st.head = hp;
    if (hash.mode === "row" || hash.mode === "col" || (hash.mode === "cls" && clsIndex >= 0 && !data.windowed)) st.mode = hash.mode;
    if (hash.patch) {
      var rc = hash.patch.split(","), lyh = L[st.li];
      st.sel = [(parseInt(rc[1], 10) + 0.5) * lyh.patch[1], (parseInt(rc[0], 10) + 0.5) * lyh.patch[0]];
    }
  }

  root.vitlens = {
    state: st, render: render, exportPNG: exportPNG, currentMap: function () { return currentMap(st.head === "all" ? "mean" : undefined); },
    canvasScale: S, setLayerHead: setLayerHead
  };
  img.onload = render;
  img.onerror = function () { root.appendChild(el("div", {cls: "vlx-error", text: "vitlens explorer: the embedded image could not be decoded"})); };
  img.src = data.image.src;
}
