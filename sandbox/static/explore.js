// The explorer's page: a Leaflet map whose tiles the server computes (sandbox/explore.py).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, landscapes: {}, map: null, layers: [], marks: null, path: null };
// Counters the browser test reads.
window.explorer = { tilesLoaded: 0, pathsShown: 0, errors: [], state };

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
  return $("mode").value === "basins"
    ? state.landscapes[$("landscape").value].bounds
    : state.config.trainability.bounds;
}

function newMap() {
  const b = world();
  const center = state.map ? null : initial.get("cx") && [parseFloat(initial.get("cy")), parseFloat(initial.get("cx"))];
  if (state.map) state.map.remove();
  const maxZoom = $("mode").value === "basins"
    ? state.landscapes[$("landscape").value].max_zoom : state.config.trainability.max_zoom;
  const map = L.map("map", { crs: crsFor(b), minZoom: 0, maxZoom, zoomSnap: 1, attributionControl: false });
  map.fitBounds([[b[1][0], b[0][0]], [b[1][1], b[0][1]]]);
  if (center && initial.get("z")) map.setView(center, parseInt(initial.get("z")));
  map.on("moveend", () => { updateLink(); fractions(); });
  map.on("click", (e) => showPath(e.latlng));
  state.map = map;
  state.layers = [];
  state.marks = L.layerGroup().addTo(map);
  state.path = L.layerGroup().addTo(map);
  refresh();
}

function tileLayer(url, opts) {
  const layer = L.tileLayer(url, Object.assign({ tileSize: 256, noWrap: true, maxZoom: state.map.getMaxZoom(),
    bounds: L.latLngBounds([[world()[1][0], world()[0][0]], [world()[1][1], world()[0][1]]]) }, opts));
  layer.on("tileload", () => { window.explorer.tilesLoaded += 1; });
  layer.on("tileerror", (e) => status("a tile failed: " + e.tile.src, true));
  return layer;
}

function refresh() {
  if (!state.map) return;
  for (const l of state.layers) state.map.removeLayer(l);
  state.layers = [];
  state.marks.clearLayers();
  state.path.clearLayers();
  const basinsMode = $("mode").value === "basins";
  $("basin-controls").hidden = !basinsMode;
  $("train-controls").hidden = basinsMode;
  $("frac-box").hidden = !basinsMode;
  $("path-box").hidden = !basinsMode;
  if (basinsMode) {
    $("lr-value").textContent = lr().toPrecision(4);
    const info = state.landscapes[$("landscape").value];
    $("formula").firstElementChild.textContent = info.formula;
    state.layers.push(tileLayer("/tile/{z}/{x}/{y}.png?" + descentParams()).addTo(state.map));
    info.minima.forEach((m, i) => L.circleMarker([m[1], m[0]], { radius: 6, color: "#000", weight: 1.5,
      fillColor: info.colours[i + 2], fillOpacity: 1 }).bindTooltip(`minimum ${i}: (${m[0].toFixed(3)}, ${m[1].toFixed(3)})`).addTo(state.marks));
    info.saddles.forEach((s) => L.marker([s[1], s[0]], { icon: L.divIcon({ className: "saddle", iconSize: [8, 8] }) })
      .bindTooltip("saddle").addTo(state.marks));
    fractions();
  } else {
    const px = state.config.trainability.px;
    // Coarse tiles first (the server computes smaller tiles first), each finer layer on top.
    const levels = [px[1], px[2], px[px.length - 1]];
    const q = trainParams();
    for (const n of levels) {
      state.layers.push(tileLayer(`/tile/trainability/{z}/{x}/{y}.png?${q}&px=${n}`, {}).addTo(state.map));
    }
  }
  updateLink();
}

function viewBox() {
  // The part of the landscape's bounds in view (null when none is).
  const b = state.map.getBounds(), w = world();
  const v = { x0: Math.max(b.getWest(), w[0][0]), x1: Math.min(b.getEast(), w[0][1]),
    y0: Math.max(b.getSouth(), w[1][0]), y1: Math.min(b.getNorth(), w[1][1]) };
  return v.x0 < v.x1 && v.y0 < v.y1 ? v : null;
}

let fracSeq = 0;
async function fractions() {
  if ($("mode").value !== "basins" || !state.map) return;
  const seq = ++fracSeq;
  const v = viewBox();
  if (!v) { $("fractions").innerHTML = ""; return; }
  const p = descentParams();
  p.delete("colour");
  for (const [k, val] of Object.entries(v)) p.set(k, val);
  p.set("n", 48);
  try {
    const r = await getJSON("/api/basins?" + p);
    if (seq !== fracSeq) return;
    const info = state.landscapes[$("landscape").value];
    const rows = Object.entries(r.fractions).filter(([, f]) => f > 0).map(([k, f]) => {
      const c = k === "diverged" ? info.colours[0] : k === "not_converged" ? info.colours[1] : info.colours[parseInt(k) + 2];
      const name = /^\d+$/.test(k) ? `(${r.minima[k].map((a) => a.toFixed(2)).join(", ")})` : k.replace("_", " ");
      return `<tr><td><span class="sw" style="background:${c}"></span></td><td>${name}</td><td>${(100 * f).toFixed(1)}%</td></tr>`;
    });
    $("fractions").innerHTML = rows.join("") + "<tr><td></td><td><small>48×48 starts over the view (within the bounds)</small></td></tr>";
    status("");
  } catch (e) { status(e.message, true); }
}

async function showPath(latlng) {
  if ($("mode").value !== "basins") return;
  const p = descentParams();
  p.delete("colour");
  p.set("x", latlng.lng); p.set("y", latlng.lat); p.set("z", state.map.getZoom());
  try {
    const r = await getJSON("/api/path?" + p);
    state.path.clearLayers();
    const pts = r.path.map((q) => [q[1], q[0]]);
    L.polyline(pts, { color: "#fff", weight: 3 }).addTo(state.path);
    L.polyline(pts, { color: "#d62728", weight: 1.5 }).addTo(state.path);
    L.circleMarker(pts[0], { radius: 4, color: "#000", fillColor: "#fff", fillOpacity: 1 }).addTo(state.path);
    const what = r.diverged ? "diverged" : r.label >= 0 ? `reached minimum ${r.label}` : "not converged";
    $("path-info").textContent = `from (${r.start[0].toFixed(4)}, ${r.start[1].toFixed(4)}): ${what}, loss ${r.final_loss.toPrecision(4)}`;
    drawCurve(r.steps, r.losses, state.landscapes[$("landscape").value].f_min);
    window.explorer.pathsShown += 1;
    document.body.dataset.paths = window.explorer.pathsShown;
  } catch (e) { status(e.message, true); }
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

function viewQuery() {
  const p = $("mode").value === "basins" ? descentParams() : trainParams();
  p.set("mode", $("mode").value);
  const c = state.map.getCenter();
  p.set("cx", c.lng); p.set("cy", c.lat); p.set("z", state.map.getZoom());
  return p;
}

function updateLink() {
  if (!state.map) return;
  const url = location.pathname + "?" + viewQuery();
  $("link").href = url;
  history.replaceState(null, "", url);
}

$("save").addEventListener("click", () => {
  // The view within the bounds, at the screen's resolution, computed in one piece.
  const r = window.devicePixelRatio || 1;
  const v = viewBox();
  if ($("mode").value !== "basins") { status("saving is for basin maps; trainability tiles save one by one", true); return; }
  if (!v) { status("the view shows nothing of the landscape's bounds", true); return; }
  const px = (x, y) => state.map.latLngToContainerPoint([y, x]);
  const a0 = px(v.x0, v.y0), a1 = px(v.x1, v.y1);
  const w = Math.max(1, Math.min(Math.round(Math.abs(a1.x - a0.x) * r), state.config.limits.view));
  const h = Math.max(1, Math.min(Math.round(Math.abs(a1.y - a0.y) * r), state.config.limits.view));
  const p = descentParams();
  for (const [k, val] of Object.entries(v)) p.set(k, val);
  p.set("w", w); p.set("h", h);
  const a = document.createElement("a");
  a.href = "/view.png?" + p; a.download = `${$("landscape").value}-${$("optimizer").value}.png`;
  document.body.append(a); a.click(); a.remove();
});

const initial = new URLSearchParams(location.search);

async function main() {
  state.config = await getJSON("/api/config");
  for (const l of await getJSON("/api/landscapes")) state.landscapes[l.name] = l;
  for (const name of Object.keys(state.landscapes)) $("landscape").add(new Option(name, name));
  for (const name of Object.keys(state.config.optimizers)) $("optimizer").add(new Option(name, name));
  $("landscape").value = initial.get("landscape") || "himmelblau";
  $("optimizer").value = initial.get("optimizer") || "sgd";
  $("mode").value = initial.get("mode") || "basins";
  if (initial.get("lr")) $("lr").value = Math.log10(parseFloat(initial.get("lr")));
  if (initial.get("steps")) (initial.get("mode") === "trainability" ? $("tsteps") : $("steps")).value = initial.get("steps");
  if (initial.get("colour")) $("colour").value = initial.get("colour");
  buildHypers();
  $("mode").addEventListener("change", newMap);
  $("landscape").addEventListener("change", newMap);
  $("optimizer").addEventListener("change", () => { buildHypers(); refresh(); });
  $("lr").addEventListener("input", () => { $("lr-value").textContent = lr().toPrecision(4); });
  for (const id of ["lr", "steps", "colour", "tsteps"]) $(id).addEventListener("change", refresh);
  newMap();
  document.body.dataset.ready = "1";
}

main().catch((e) => status(e.message, true));
