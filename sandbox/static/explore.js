// The explorer's page: a Leaflet map whose tiles the server computes (sandbox/explore/),
// with axes in the map's units, the cursor's coordinates, the view's scale and zoom depth,
// legends, tile progress, the view's measures (basin fractions or trainable share, and the
// box-counting dimension of its boundary), bookmarks and the view as copyable text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, landscapes: {}, map: null, layers: [], marks: null, path: null };
// Counters and the last answers, for the browser tests.
window.explorer = { tilesLoaded: 0, pathsShown: 0, pathsDropped: 0, measured: 0, measure: null, errors: [], state };

// The three maps: what their axes are, in which units.
const MAPS = {
  basins: { x: "x", y: "y", log: false },
  trainability: { x: "log10 lr1 (input layer)", y: "log10 lr2 (output layer)", log: true, xs: "lr1", ys: "lr2" },
  init_vs_lr: { x: "log10 offset of W1's init", y: "log10 lr (both layers)", log: true, xs: "offset", ys: "lr" },
  sweep: { x: "x", y: "y", log: false },
};

// Basin maps: the live one, and a stored sweep (`--sweep DIR`) continued live past its grid
// by a surface of its own (`sweep.surface`: its function, bounds and labelling rules).
function basinLike() { return mode() === "basins" || mode() === "sweep"; }
function landscape() { return mode() === "sweep" ? state.config.sweep.surface.name : $("landscape").value; }
// Why a stored sweep cannot go on live (its steps over the live limit); null when it can.
function liveOff() { return mode() === "sweep" ? state.config.sweep.live_off : null; }

function sweepParams() {
  // The stored sweep's settings at the chosen combination of its axes (as /tile takes them).
  const sw = state.config.sweep, p = new URLSearchParams();
  p.set("landscape", sw.surface.name);
  p.set("optimizer", sw.optimizer);
  for (const [k, v] of Object.entries(sw.hyper)) p.set(k, v);
  for (const el of document.querySelectorAll("#sweep-axes select")) p.set(el.dataset.name, sw.axes[el.dataset.name][el.value]);
  p.set("steps", sw.steps);
  if (sw.tol) p.set("tol", sw.tol);
  p.set("colour", "basin");
  return p;
}

function sweepIndices() {
  const p = new URLSearchParams();
  for (const el of document.querySelectorAll("#sweep-axes select")) p.set(el.dataset.name, el.value);
  return p;
}

function buildSweep() {
  const sw = state.config.sweep, box = $("sweep-axes");
  box.innerHTML = "";
  for (const [name, values] of Object.entries(sw.axes)) {
    const lab = document.createElement("label");
    lab.textContent = name;
    const sel = document.createElement("select");
    sel.dataset.name = name;
    values.forEach((v, i) => sel.add(new Option(String(v), String(i))));
    const want = initial.get(`sweep_${name}`);
    sel.value = values.some((_, i) => String(i) === want) ? want : "0";
    sel.addEventListener("change", refresh);
    box.append(lab, sel);
  }
  const k = sw.minima.length;
  $("sweep-about").textContent = `${sw.folder}: ${sw.landscape}, ${sw.optimizer}, ${sw.steps} steps, ` +
    `${sw.grid[0]} × ${sw.grid[1]} starts (${sw.dtype}); labelled as the sweep labels: ` +
    (k ? `within ${sw.basin_tol} of its ${k} minim${k > 1 ? "a" : "um"}` : "it names no minima, so every run is not converged") +
    `, diverged past ${sw.bound}. ` +
    (sw.live_off ? "" : "Past the stored resolution the map goes on live, labelled the same way.");
}

function mode() { return $("mode").value; }

function crsFor(b) {
  // One 256-pixel tile over the bounds at zoom 0, y up; lng = x, lat = y.
  const w = b[0][1] - b[0][0], h = b[1][1] - b[1][0];
  return L.extend({}, L.CRS.Simple, {
    transformation: new L.Transformation(256 / w, (-256 * b[0][0]) / w, -256 / h, (256 * b[1][1]) / h),
    infinite: false,
  });
}

function lr() { return Math.pow(10, parseFloat($("lr").value)); }

function descentParams() {
  if (mode() === "sweep") return sweepParams();
  const p = new URLSearchParams();
  p.set("landscape", $("landscape").value);
  p.set("optimizer", $("optimizer").value);
  p.set("lr", lr().toPrecision(6));
  p.set("steps", $("steps").value);
  p.set("colour", $("colour").value);
  for (const el of document.querySelectorAll("#hypers input")) p.set(el.dataset.name, el.value);
  return p;
}

function trainParams() {
  const p = new URLSearchParams();
  p.set("steps", $("tsteps").value);
  return p;
}

function viewParams() {
  // The view's settings: those of its tiles, plus the finest trainability resolution.
  if (mode() === "sweep") {
    const p = sweepParams();
    for (const [k, v] of sweepIndices()) p.set(`sweep_${k}`, v);
    return p;
  }
  if (mode() === "basins") return descentParams();
  const p = trainParams();
  p.set("tpx", $("tpx").value);
  return p;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "err" : "";
  if (isError) window.explorer.errors.push(text);
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function buildHypers() {
  const defaults = state.config.optimizers[$("optimizer").value];
  const box = $("hypers");
  const old = {};
  for (const el of box.querySelectorAll("input")) old[el.dataset.name] = el.value;
  box.innerHTML = "";
  for (const [name, value] of Object.entries(defaults)) {
    if (name === "lr") continue;
    const lab = document.createElement("label");
    lab.textContent = name;
    const inp = document.createElement("input");
    inp.type = "number"; inp.step = "any"; inp.dataset.name = name;
    inp.value = old[name] ?? initial.get(name) ?? value;
    inp.addEventListener("change", refresh);
    box.append(lab, inp);
  }
}

function world() {
  return basinLike() ? state.landscapes[landscape()].bounds : state.config.maps[mode()].bounds;
}

function maxZoom() {
  return basinLike() ? state.landscapes[landscape()].max_zoom : state.config.maps[mode()].max_zoom;
}

function newMap() {
  const b = world();
  const first = !state.map;
  if (state.map) state.map.remove();
  const map = L.map("map", { crs: crsFor(b), minZoom: 0, maxZoom: maxZoom(), zoomSnap: 1, attributionControl: false });
  map.fitBounds([[b[1][0], b[0][0]], [b[1][1], b[0][1]]]);
  if (first && initial.get("cx") && initial.get("z")) {
    map.setView([parseFloat(initial.get("cy")), parseFloat(initial.get("cx"))], parseInt(initial.get("z")));
  }
  map.on("moveend", () => { updateLink(); drawAxes(); measure(); progress(); });
  map.on("move", drawAxes);
  map.on("click", (e) => showPath(e.latlng));
  map.on("mousemove", (e) => cursor(e.latlng));
  state.map = map;
  state.layers = [];
  map.createPane("stored").style.zIndex = 150;  // below the live tiles (tilePane: 200)
  state.marks = L.layerGroup().addTo(map);
  state.path = L.layerGroup().addTo(map);
  refresh();
}

// ------------------------------------------------------------------ tiles and their progress

function tileLayer(url, coarse, minZoom) {
  const w = world();
  // The server's version of its code and surfaces: a tile the browser keeps is one they drew.
  url += "&v=" + state.config.tiles_version;
  const layer = L.tileLayer(url, { tileSize: 256, noWrap: true, maxZoom: maxZoom(), minZoom: minZoom || 0,
    bounds: L.latLngBounds([[w[1][0], w[0][0]], [w[1][1], w[0][1]]]) });
  layer.coarse = coarse;
  layer.on("tileloadstart tileload load", progress);
  layer.on("tileload", () => { window.explorer.tilesLoaded += 1; });
  layer.on("tileerror", async (e) => {
    e.tile.dataset.failed = "1";
    progress();
    // The server says why in its JSON error; the image element cannot read it.
    let why = "no answer";
    try { const r = await fetch(e.tile.src); why = (await r.json()).error || r.statusText; } catch (err) { why = err.message; }
    status(`a tile failed: ${why}`, true);
  });
  return layer;
}

function progress() {
  // The tiles each layer shows now (Leaflet's own record of them): loaded, failed, asked.
  let done = true;
  const parts = state.layers.filter((l) => l._tiles).map((l) => {
    const tiles = Object.values(l._tiles || {}).filter((t) => t.current);
    const failed = tiles.filter((t) => t.el.dataset.failed).length;
    const loaded = tiles.filter((t) => t.loaded).length - failed;
    if (loaded + failed < tiles.length) done = false;
    const text = `${loaded} of ${tiles.length} ${l.coarse ? "coarse " : ""}tiles`;
    return failed ? `${text}, ${failed} failed` : text;
  });
  $("progress").textContent = parts.length ? (done ? "all tiles shown: " : "computing: ") + parts.join("; ") : "";
  $("progress").className = done ? "" : "busy";
}

function refresh() {
  if (!state.map) return;
  for (const l of state.layers) state.map.removeLayer(l);
  state.layers = [];
  state.marks.clearLayers();
  clearPath();
  const basinsMode = basinLike();
  $("basin-controls").hidden = mode() !== "basins";
  $("sweep-controls").hidden = mode() !== "sweep";
  $("train-controls").hidden = basinsMode;
  $("path-box").hidden = !basinsMode;
  $("train-about").textContent = basinsMode ? "" : (mode() === "trainability"
    ? "lr1 on the input layer, lr2 on the output layer."
    : "An offset added to every initial weight of the input layer (x), one lr for both layers (y).");
  if (mode() === "sweep") {
    // The stored map, one pixel a start; live tiles on top once a tile's pixel is finer
    // than the stored grid's.
    const sw = state.config.sweep, e = sw.extent, w = world();
    const img = L.imageOverlay("/sweep.png?" + sweepIndices(), [[e[1][0], e[0][0]], [e[1][1], e[0][1]]],
      { className: "stored", pane: "stored" }).addTo(state.map);
    img.on("load", () => { window.explorer.sweepShown = (window.explorer.sweepShown || 0) + 1; });
    state.layers.push(img);
    // The first zoom whose tile pixels are no coarser than the stored grid's.
    const live = Math.max(0, Math.ceil(Math.log2((w[0][1] - w[0][0]) / (256 * sw.pixel[0])) - 1e-9));
    state.liveZoom = live;
    if (sw.live_off) status(sw.live_off);  // one line, instead of every tile failing
    else state.layers.push(tileLayer("/tile/{z}/{x}/{y}.png?" + descentParams(), false, live).addTo(state.map));
    const info = state.landscapes[landscape()];
    info.minima.forEach((m, i) => L.circleMarker([m[1], m[0]], { radius: 6, color: "#000", weight: 1.5,
      fillColor: info.colours[i + 2], fillOpacity: 1 }).bindTooltip(`minimum ${i}: (${m[0].toFixed(3)}, ${m[1].toFixed(3)})`).addTo(state.marks));
  } else if (basinsMode) {
    $("lr-value").textContent = lr().toPrecision(4);
    const info = state.landscapes[$("landscape").value];
    $("formula").firstElementChild.textContent = info.formula;
    state.layers.push(tileLayer("/tile/{z}/{x}/{y}.png?" + descentParams(), false).addTo(state.map));
    info.minima.forEach((m, i) => L.circleMarker([m[1], m[0]], { radius: 6, color: "#000", weight: 1.5,
      fillColor: info.colours[i + 2], fillOpacity: 1 }).bindTooltip(`minimum ${i}: (${m[0].toFixed(3)}, ${m[1].toFixed(3)})`).addTo(state.marks));
    info.saddles.forEach((s) => L.marker([s[1], s[0]], { icon: L.divIcon({ className: "saddle", iconSize: [8, 8] }) })
      .bindTooltip("saddle").addTo(state.marks));
  } else {
    // Coarse tiles first (the server computes smaller tiles first), each finer layer on top,
    // up to the finest resolution chosen (fewer runs per tile on a slow machine).
    const px = state.config.trainability.px.filter((n) => n <= parseInt($("tpx").value));
    const levels = px.length > 2 ? [px[1], px[2], px[px.length - 1]] : px;
    const q = trainParams();
    levels.forEach((n, i) => {
      const coarse = i < levels.length - 1;
      state.layers.push(tileLayer(`/tile/${mode()}/{z}/{x}/{y}.png?${q}&px=${n}`, coarse).addTo(state.map));
    });
  }
  legend();
  updateLink();
  drawAxes();
  measure();
}

// ------------------------------------------------------------------ axes, cursor, scale

function niceStep(span, count) {
  // 1, 2 or 5 times a power of ten, about span / count.
  const raw = span / count, p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

function digits(step) { return Math.max(0, -Math.floor(Math.log10(step) + 1e-9)); }

function ticks(lo, hi, count) {
  const step = niceStep(hi - lo, count), d = digits(step);
  const out = [];
  for (let k = Math.ceil(lo / step); k * step <= hi; k++) {
    const v = k * step;
    out.push({ v, text: (Math.abs(v) < step / 2 ? 0 : v).toFixed(d) });
  }
  return out;
}

function drawAxes() {
  if (!state.map) return;
  const b = state.map.getBounds(), size = state.map.getSize(), m = MAPS[mode()];
  const xs = $("axis-x"), ys = $("axis-y");
  xs.innerHTML = ""; ys.innerHTML = "";
  const w = b.getEast() - b.getWest(), h = b.getNorth() - b.getSouth();
  for (const t of ticks(b.getWest(), b.getEast(), Math.max(2, Math.floor(size.x / 110)))) {
    if (((t.v - b.getWest()) / w) * size.x < 50) continue;  // under the y axis's labels
    const el = document.createElement("span");
    el.className = "tick tick-x"; el.dataset.value = t.v; el.textContent = t.text;
    el.style.left = `${((t.v - b.getWest()) / w) * size.x}px`;
    xs.append(el);
  }
  for (const t of ticks(b.getSouth(), b.getNorth(), Math.max(2, Math.floor(size.y / 70)))) {
    if (((b.getNorth() - t.v) / h) * size.y > size.y - 24) continue;  // on the x axis's row
    const el = document.createElement("span");
    el.className = "tick tick-y"; el.dataset.value = t.v; el.textContent = t.text;
    el.style.top = `${((b.getNorth() - t.v) / h) * size.y}px`;
    ys.append(el);
  }
  $("axis-x-name").textContent = m.x; $("axis-y-name").textContent = m.y;
  const full = world()[0][1] - world()[0][0];
  const depth = Math.log10(w / full);
  const width = m.log ? `${w.toPrecision(3)} decades` : `${w.toPrecision(3)} (x units)`;
  $("scale").textContent = `view width ${width}; zoom ${state.map.getZoom()}: ` +
    (depth > -0.05 ? "the full view" : `10^${depth.toFixed(1)} of the full view`);
}

function cursor(ll) {
  const m = MAPS[mode()], b = state.map.getBounds(), size = state.map.getSize();
  // As many digits as a screen pixel needs.
  const dx = digits((b.getEast() - b.getWest()) / size.x) + 1, dy = digits((b.getNorth() - b.getSouth()) / size.y) + 1;
  let text = `x = ${ll.lng.toFixed(dx)}, y = ${ll.lat.toFixed(dy)}`;
  if (m.log) {
    text = `log10 ${m.xs} = ${ll.lng.toFixed(dx)}, log10 ${m.ys} = ${ll.lat.toFixed(dy)}` +
      ` (${m.xs} = ${Math.pow(10, ll.lng).toPrecision(dx + 1)}, ${m.ys} = ${Math.pow(10, ll.lat).toPrecision(dy + 1)})`;
  }
  $("cursor").textContent = text;
  $("cursor").dataset.x = ll.lng; $("cursor").dataset.y = ll.lat;
}

// ------------------------------------------------------------------ legends

function bar(stops) { return `<span class="bar" style="background:linear-gradient(to right, ${stops.join(",")})"></span>`; }

function legend() {
  const lg = state.config.legends;
  let html = "";
  if (basinLike()) {
    const info = state.landscapes[landscape()], colour = mode() === "sweep" ? "basin" : $("colour").value;
    if (colour === "basin") {
      html = info.minima.map((m, i) => `<div class="minimum"><span class="sw" style="background:${info.colours[i + 2]}"></span> minimum ${i} at (${m[0].toFixed(3)}, ${m[1].toFixed(3)})</div>`).join("") +
        `<div><span class="sw" style="background:${info.colours[1]}"></span> not converged (no minimum within ${info.basin_tol})</div>` +
        `<div><span class="sw" style="background:${info.colours[0]}"></span> diverged</div>`;
    } else if (colour === "steps") {
      html = `<div>steps to |grad| &lt; tol, log scale</div><div>1 ${bar(lg.steps.stops)} ${$("steps").value}</div>` +
        `<div><span class="sw" style="background:${lg.steps.special}"></span> never reached tol</div>`;
    } else {
      html = `<div>final loss − f_min</div><div>1e${lg.loss.decades[0]} ${bar(lg.loss.stops)} 1e${lg.loss.decades[1]}</div>` +
        `<div><span class="sw" style="background:${lg.loss.special}"></span> diverged</div>`;
    }
  } else {
    html = `<div>trains (darker: faster) ${bar(lg.trainability.trains.slice().reverse())}</div>` +
      `<div>diverges (darker: sooner) ${bar(lg.trainability.diverges.slice().reverse())}</div>`;
  }
  $("legend").innerHTML = html;
}

// ------------------------------------------------------------------ what the view measures

function viewBox() {
  // The part of the map's bounds in view (null when none is).
  const b = state.map.getBounds(), w = world();
  const v = { x0: Math.max(b.getWest(), w[0][0]), x1: Math.min(b.getEast(), w[0][1]),
    y0: Math.max(b.getSouth(), w[1][0]), y1: Math.min(b.getNorth(), w[1][1]) };
  return v.x0 < v.x1 && v.y0 < v.y1 ? v : null;
}

function dimensionText(d) {
  if (d.dim === null) return `boundary dimension: — (${d.why})`;
  return `boundary dimension ${d.dim.toFixed(3)} (box sizes ${d.sizes[0]} to ${d.sizes[d.sizes.length - 1]} px, ` +
    `rms residual ${d.residual.toFixed(3)})`;
}

let measureSeq = 0, measureTimer = null;
function measure() {
  clearTimeout(measureTimer);
  $("measures").innerHTML = "<small>measuring the view…</small>";
  measureTimer = setTimeout(measureNow, 150);
}

async function measureNow() {
  if (!state.map) return;
  const seq = ++measureSeq;
  const v = viewBox();
  if (!v) { $("measures").innerHTML = ""; return; }
  if (liveOff()) { $("measures").innerHTML = "<small>no live runs: the stored map only</small>"; return; }
  const basinsMode = basinLike();
  const p = basinsMode ? descentParams() : trainParams();
  p.delete("colour");
  for (const [k, val] of Object.entries(v)) p.set(k, val);
  const n = 64;
  p.set("n", n);
  $("measures").innerHTML = "<small>measuring the view…</small>";
  try {
    const r = await getJSON((basinsMode ? "/api/basins?" : `/api/${mode()}?`) + p);
    if (seq !== measureSeq) return;
    let html = "";
    if (basinsMode) {
      const info = state.landscapes[landscape()];
      html = Object.entries(r.fractions).filter(([, f]) => f > 0).map(([k, f]) => {
        const c = k === "diverged" ? info.colours[0] : k === "not_converged" ? info.colours[1] : info.colours[parseInt(k) + 2];
        const name = /^\d+$/.test(k) ? `(${r.minima[k].map((a) => a.toFixed(2)).join(", ")})` : k.replace("_", " ");
        return `<tr><td><span class="sw" style="background:${c}"></span></td><td>${name}</td><td>${(100 * f).toFixed(1)}%</td></tr>`;
      }).join("");
      html = `<b>basin fractions</b><table id="fractions">${html}</table>`;
    } else {
      html = `<div id="share">trainable share ${(100 * r.trainable_share).toFixed(1)}%</div>`;
    }
    html += `<div id="dimension">${dimensionText(r.dimension)}</div>` +
      `<small>${n}×${n} runs over the view (within the map's bounds)</small>`;
    $("measures").innerHTML = html;
    window.explorer.measure = { query: Object.fromEntries(p), answer: r };
    window.explorer.measured += 1;
  } catch (e) { if (seq === measureSeq) { $("measures").innerHTML = ""; status(e.message, true); } }
}

// ------------------------------------------------------------------ paths

// A path answer is drawn only if no refresh (new settings) or later click came after its
// click: each bumps pathSeq.
let pathSeq = 0;

function clearPath() {
  pathSeq += 1;
  state.path.clearLayers();
  $("path-info").textContent = "click a start on the map";
  const c = $("curve");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
}

async function showPath(latlng) {
  if (!basinLike()) return;
  if (liveOff()) { status(liveOff()); return; }
  const w = world();
  if (latlng.lng < w[0][0] || latlng.lng > w[0][1] || latlng.lat < w[1][0] || latlng.lat > w[1][1]) {
    status(`a path starts inside the map's bounds: x in [${w[0]}], y in [${w[1]}]`);
    return;
  }
  const seq = ++pathSeq;
  const p = descentParams();
  p.delete("colour");
  p.set("x", latlng.lng); p.set("y", latlng.lat); p.set("z", state.map.getZoom());
  try {
    const r = await getJSON("/api/path?" + p);
    if (seq !== pathSeq) { window.explorer.pathsDropped += 1; return; }
    state.path.clearLayers();
    const pts = r.path.map((q) => [q[1], q[0]]);
    L.polyline(pts, { color: "#fff", weight: 3 }).addTo(state.path);
    L.polyline(pts, { color: "#d62728", weight: 1.5 }).addTo(state.path);
    if (pts.length) L.circleMarker(pts[0], { radius: 4, color: "#000", fillColor: "#fff", fillOpacity: 1 }).addTo(state.path);
    const what = r.diverged ? "diverged" : r.label >= 0 ? `reached minimum ${r.label}` : "not converged";
    const loss = r.final_loss === null ? "not finite" : r.final_loss.toPrecision(4);
    $("path-info").textContent = `from (${r.start[0].toFixed(4)}, ${r.start[1].toFixed(4)}): ${what}, loss ${loss}`;
    const c = $("curve");
    if (r.losses.length) drawCurve(r.steps, r.losses, state.landscapes[landscape()].f_min);
    else c.getContext("2d").clearRect(0, 0, c.width, c.height);
    window.explorer.pathsShown += 1;
    document.body.dataset.paths = window.explorer.pathsShown;
  } catch (e) { if (seq === pathSeq) status(e.message, true); }
}

function drawCurve(steps, losses, fmin) {
  // Loss above the global minimum, log scale, against the step.
  const c = $("curve"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const base = fmin ?? Math.min(...losses);
  const v = losses.map((l) => Math.log10(Math.max(l - base, 1e-12)));
  const lo = Math.min(...v), hi = Math.max(...v) + 1e-9, smax = Math.max(steps[steps.length - 1], 1);
  g.strokeStyle = "#d62728"; g.beginPath();
  v.forEach((y, i) => {
    const px = 30 + (steps[i] / smax) * (c.width - 36), py = 8 + (1 - (y - lo) / (hi - lo)) * (c.height - 26);
    i ? g.lineTo(px, py) : g.moveTo(px, py);
  });
  g.stroke();
  g.fillStyle = "#333"; g.font = "10px sans-serif";
  g.fillText(`1e${hi.toFixed(0)}`, 0, 12); g.fillText(`1e${lo.toFixed(0)}`, 0, c.height - 18);
  g.fillText("step " + smax, c.width - 60, c.height - 4); g.fillText("loss − f_min", 30, c.height - 4);
}

// ------------------------------------------------------------------ the view as a link, text, bookmark

function viewQuery() {
  const p = viewParams();
  p.set("mode", mode());
  const c = state.map.getCenter();
  p.set("cx", c.lng); p.set("cy", c.lat); p.set("z", state.map.getZoom());
  return p;
}

function viewText() {
  const b = state.map.getBounds(), m = MAPS[mode()], q = viewQuery();
  const lines = [`map: ${mode()}`];
  for (const [k, v] of q) if (!["mode", "cx", "cy", "z"].includes(k)) lines.push(`${k}: ${v}`);
  lines.push(`${m.x}: ${b.getWest()} to ${b.getEast()}`);
  lines.push(`${m.y}: ${b.getSouth()} to ${b.getNorth()}`);
  lines.push(`zoom: ${state.map.getZoom()}`);
  lines.push(`link: ${location.origin}${location.pathname}?${q}`);
  return lines.join("\n");
}

function updateLink() {
  if (!state.map) return;
  const url = location.pathname + "?" + viewQuery();
  $("link").href = url;
  history.replaceState(null, "", url);
  $("view-text").value = viewText();
}

const BOOKMARKS = "gradient-sandbox.explorer.bookmarks";

function bookmarks() {
  try { return JSON.parse(localStorage.getItem(BOOKMARKS) || "[]"); } catch { return []; }
}

function showBookmarks() {
  const list = $("bookmarks");
  list.innerHTML = "";
  bookmarks().forEach((b, i) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = b.url; a.textContent = b.name;
    const x = document.createElement("button");
    x.textContent = "×"; x.title = "forget this bookmark"; x.className = "forget";
    x.addEventListener("click", () => {
      const all = bookmarks(); all.splice(i, 1);
      localStorage.setItem(BOOKMARKS, JSON.stringify(all)); showBookmarks();
    });
    li.append(a, " ", x);
    list.append(li);
  });
}

$("bookmark").addEventListener("click", () => {
  const name = $("bookmark-name").value.trim() || `${mode()} at zoom ${state.map.getZoom()}`;
  const all = bookmarks();
  all.push({ name, url: location.pathname + "?" + viewQuery() });
  localStorage.setItem(BOOKMARKS, JSON.stringify(all));
  $("bookmark-name").value = "";
  showBookmarks();
});

$("copy").addEventListener("click", async () => {
  $("view-text").select();
  try { await navigator.clipboard.writeText($("view-text").value); status("view copied"); }
  catch { document.execCommand("copy"); status("view selected: copy it with Ctrl+C"); }
});

$("save").addEventListener("click", () => {
  // The view within the bounds, at the screen's resolution (no finer than the deepest
  // zoom's pixels: finer is beyond what float64 resolves), computed in one piece.
  const r = Math.min(window.devicePixelRatio || 1, 2 ** (maxZoom() - state.map.getZoom()));
  const v = viewBox();
  if (!basinLike()) { status("saving is for basin maps; trainability tiles save one by one", true); return; }
  if (!v) { status("the view shows nothing of the landscape's bounds", true); return; }
  if (liveOff()) { status(liveOff()); return; }
  const px = (x, y) => state.map.latLngToContainerPoint([y, x]);
  const a0 = px(v.x0, v.y0), a1 = px(v.x1, v.y1);
  const w = Math.max(1, Math.min(Math.round(Math.abs(a1.x - a0.x) * r), state.config.limits.view));
  const h = Math.max(1, Math.min(Math.round(Math.abs(a1.y - a0.y) * r), state.config.limits.view));
  const p = descentParams();
  for (const [k, val] of Object.entries(v)) p.set(k, val);
  p.set("w", w); p.set("h", h);
  const a = document.createElement("a");
  const sw = state.config.sweep;
  a.href = "/view.png?" + p;
  a.download = mode() === "sweep" ? `sweep-${sw.landscape}-${sw.optimizer}.png` : `${$("landscape").value}-${$("optimizer").value}.png`;
  document.body.append(a); a.click(); a.remove();
});

const initial = new URLSearchParams(location.search);

async function main() {
  state.config = await getJSON("/api/config");
  for (const l of await getJSON("/api/landscapes")) state.landscapes[l.name] = l;
  for (const name of Object.keys(state.landscapes)) $("landscape").add(new Option(name, name));
  for (const name of Object.keys(state.config.optimizers)) $("optimizer").add(new Option(name, name));
  if (state.config.sweep) {
    $("mode").add(new Option("stored sweep", "sweep"));
    const surface = state.config.sweep.surface;  // not in the landscape menu
    state.landscapes[surface.name] = surface;
    buildSweep();
  }
  // A link's map, landscape or optimizer this server lacks (a stored sweep without --sweep,
  // another --fn): the default instead, said in the status line.
  const missing = [];
  const choose = (id, what, fallback) => {
    const want = initial.get(id);
    const ok = want !== null && [...$(id).options].some((o) => o.value === want);
    if (want !== null && !ok) missing.push(`${what} ${JSON.stringify(want)} (showing ${fallback})`);
    $(id).value = ok ? want : fallback;
  };
  choose("mode", "map", "basins");
  // A stored sweep's link names its own surface as its landscape, not one of the menu.
  if (initial.get("mode") === "sweep") $("landscape").value = "himmelblau";
  else choose("landscape", "landscape", "himmelblau");
  choose("optimizer", "optimizer", "sgd");
  if (missing.length) status(`not on this server: ${missing.join(", ")}`);
  if (initial.get("lr")) $("lr").value = Math.log10(parseFloat(initial.get("lr")));
  // The link's steps are for the map it names: not for the defaults shown instead.
  const opened = !initial.get("mode") || initial.get("mode") === mode();
  if (initial.get("steps") && opened) (mode() === "basins" ? $("steps") : $("tsteps")).value = initial.get("steps");
  if (initial.get("colour")) $("colour").value = initial.get("colour");
  if (initial.get("tpx")) $("tpx").value = initial.get("tpx");
  buildHypers();
  $("mode").addEventListener("change", newMap);
  $("landscape").addEventListener("change", newMap);
  $("optimizer").addEventListener("change", () => { buildHypers(); refresh(); });
  $("lr").addEventListener("input", () => { $("lr-value").textContent = lr().toPrecision(4); });
  for (const id of ["lr", "steps", "colour", "tsteps", "tpx"]) $(id).addEventListener("change", refresh);
  showBookmarks();
  newMap();
  document.body.dataset.ready = "1";
}

main().catch((e) => status(e.message, true));
