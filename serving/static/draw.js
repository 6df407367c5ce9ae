// Draw-a-digit page: turns the drawing into an MNIST-like 28x28 image and asks the v2 REST API.
// MNIST's recipe: crop to the ink's bounding box, scale to fit a 20x20 box keeping the aspect ratio
// (area-averaged, so grey levels are anti-aliased), then place it in 28x28 so that its centre of mass
// sits at the centre. tests/support/drawing.py implements the same steps in numpy for the tests.
"use strict";

const SIZE = 28;
const BOX = 20;
const DEBOUNCE_MS = 120;
const MODEL = document.querySelector('meta[name="digits-model"]').content;

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const seen = document.getElementById("seen").getContext("2d");
const digitEl = document.getElementById("digit");
const statusEl = document.getElementById("status");
const bars = document.getElementById("bars");

let drawn = 0; // bumps on every change of the drawing
let timer = null;
let inflight = false;
let last = null;

for (let d = 0; d < 10; d++) {
  const li = document.createElement("li");
  li.innerHTML = `<span>${d}</span><span class="track"><span class="fill"></span></span><span class="pct">0%</span>`;
  li.dataset.digit = d;
  li.dataset.p = "0";
  bars.appendChild(li);
}

function setupPen() {
  ctx.lineWidth = pad.width / 15;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#fff";
}

function point(event) {
  // Canvas pixels from client coordinates (inside the border, whatever the CSS size).
  const rect = pad.getBoundingClientRect();
  return [
    (event.clientX - rect.left - pad.clientLeft) * (pad.width / pad.clientWidth),
    (event.clientY - rect.top - pad.clientTop) * (pad.height / pad.clientHeight),
  ];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  last = point(event);
  ctx.beginPath();
  ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fillStyle = "#fff";
  ctx.fill();
  changed();
});
pad.addEventListener("pointermove", (event) => {
  if (last === null) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ctx.beginPath();
  ctx.moveTo(last[0], last[1]);
  for (const e of events.length ? events : [event]) {
    last = point(e);
    ctx.lineTo(last[0], last[1]);
  }
  ctx.stroke();
  changed();
});
for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
  pad.addEventListener(type, () => {
    if (last === null) return;
    last = null;
    schedule(0); // the stroke ended: answer now
  });
}

document.getElementById("clear").addEventListener("click", () => {
  ctx.clearRect(0, 0, pad.width, pad.height);
  drawn += 1;
  pad.dataset.drawn = drawn;
  clearTimeout(timer);
  show(null);
});

function changed() {
  drawn += 1;
  pad.dataset.drawn = drawn;
  schedule(DEBOUNCE_MS);
}

function schedule(delay) {
  clearTimeout(timer);
  timer = setTimeout(infer, delay);
}

// ---- MNIST-like preprocessing ----
function overlaps(src, dst) {
  // For each target cell, the source cells it covers and by how much (area averaging).
  const ratio = src / dst;
  const rows = [];
  for (let i = 0; i < dst; i++) {
    const lo = i * ratio, hi = (i + 1) * ratio, cells = [];
    for (let j = Math.floor(lo); j < Math.min(src, Math.ceil(hi)); j++) {
      const w = Math.min(j + 1, hi) - Math.max(j, lo);
      if (w > 0) cells.push([j, w / ratio]);
    }
    rows.push(cells);
  }
  return rows;
}

function mnistLike(alpha, width, height) {
  let minX = width, minY = height, maxX = -1, maxY = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (alpha[y * width + x] > 0) {
        if (x < minX) minX = x;
        if (x > maxX) maxX = x;
        if (y < minY) minY = y;
        if (y > maxY) maxY = y;
      }
    }
  }
  if (maxX < 0) return null;
  const bw = maxX - minX + 1, bh = maxY - minY + 1;
  const scale = BOX / Math.max(bw, bh);
  const tw = Math.max(1, Math.round(bw * scale)), th = Math.max(1, Math.round(bh * scale));
  const wx = overlaps(bw, tw), wy = overlaps(bh, th);
  // Rows first (th x bw), then columns (th x tw).
  const rows = new Float64Array(th * bw);
  for (let ty = 0; ty < th; ty++) {
    for (const [sy, w] of wy[ty]) {
      const base = (minY + sy) * width + minX;
      for (let sx = 0; sx < bw; sx++) rows[ty * bw + sx] += w * alpha[base + sx];
    }
  }
  const small = new Float64Array(th * tw);
  let mass = 0, mx = 0, my = 0;
  for (let ty = 0; ty < th; ty++) {
    for (let tx = 0; tx < tw; tx++) {
      let v = 0;
      for (const [sx, w] of wx[tx]) v += w * rows[ty * bw + sx];
      small[ty * tw + tx] = v;
      mass += v;
      mx += v * (tx + 0.5);
      my += v * (ty + 0.5);
    }
  }
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  const ox = clamp(Math.round(SIZE / 2 - mx / mass), SIZE - tw);
  const oy = clamp(Math.round(SIZE / 2 - my / mass), SIZE - th);
  const image = new Float32Array(SIZE * SIZE);
  for (let ty = 0; ty < th; ty++) {
    for (let tx = 0; tx < tw; tx++) {
      image[(oy + ty) * SIZE + ox + tx] = Math.min(255, Math.round(small[ty * tw + tx] * 255));
    }
  }
  return image;
}

function canvasImage() {
  const pixels = ctx.getImageData(0, 0, pad.width, pad.height).data;
  const alpha = new Float32Array(pad.width * pad.height);
  for (let i = 0; i < alpha.length; i++) alpha[i] = pixels[i * 4 + 3] / 255;
  return mnistLike(alpha, pad.width, pad.height);
}

// ---- the API ----
async function infer() {
  if (inflight) { schedule(DEBOUNCE_MS); return; }
  const version = drawn;
  const image = canvasImage();
  if (image === null) { show(null); return; }
  drawSeen(image);
  inflight = true;
  statusEl.textContent = "asking the model\u2026";
  try {
    const response = await fetch(`/v2/models/${encodeURIComponent(MODEL)}/infer`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        inputs: [{ name: "images", datatype: "FP32", shape: [1, SIZE, SIZE], data: Array.from(image) }],
        outputs: [{ name: "probabilities" }, { name: "classes" }],
      }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    if (version === drawn) show(body, version);
    statusEl.textContent = "";
  } catch (error) {
    statusEl.textContent = `error: ${error.message}`;
  } finally {
    inflight = false;
  }
}

function drawSeen(image) {
  const data = seen.createImageData(SIZE, SIZE);
  for (let i = 0; i < SIZE * SIZE; i++) {
    data.data.set([image[i], image[i], image[i], 255], i * 4);
  }
  seen.putImageData(data, 0, 0);
}

function show(body, version) {
  const outputs = {};
  for (const output of body ? body.outputs : []) outputs[output.name] = output.data;
  const probabilities = outputs.probabilities || new Array(10).fill(0);
  const best = body ? outputs.classes[0] : null;
  digitEl.textContent = best === null ? "\u2013" : String(best);
  digitEl.dataset.answered = body ? version : "";
  bars.querySelectorAll("li").forEach((li, d) => {
    const p = probabilities[d];
    li.dataset.p = String(p);
    li.classList.toggle("top", d === best);
    li.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  });
  if (body) {
    document.getElementById("model-name").textContent = body.model_name;
    document.getElementById("model-version").textContent = body.model_version;
  } else {
    seen.clearRect(0, 0, SIZE, SIZE);
  }
}

async function loadModelInfo() {
  try {
    const response = await fetch(`/v2/models/${encodeURIComponent(MODEL)}`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    document.getElementById("model-name").textContent = body.name;
    document.getElementById("model-version").textContent = body.versions[0];
  } catch (error) {
    statusEl.textContent = `model not ready: ${error.message}`;
  }
}

setupPen();
pad.dataset.drawn = drawn;
loadModelInfo();
