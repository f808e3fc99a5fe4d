// cnn-xp serve: draw on the pad (pointer events) or drop an image; the canvas is POSTed as a
// PNG to /api/predict (debounced) and the answer drawn: bars, #prediction, Grad-CAM, feature maps.
"use strict";
(function () {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const zone = document.getElementById("dropzone");
  const statusLine = document.getElementById("status");
  const DEBOUNCE_MS = 120;
  let drawing = false, last = null, timer = null, sent = 0, shown = 0, dirty = false, cleared = 0;

  function blank() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    dirty = false;
  }

  function point(e) {
    const r = pad.getBoundingClientRect();
    return { x: (e.clientX - r.left) * pad.width / r.width, y: (e.clientY - r.top) * pad.height / r.height };
  }

  function stroke(a, b) {
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 18;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
    dirty = true;
  }

  pad.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    drawing = true;
    last = point(e);
    try { pad.setPointerCapture(e.pointerId); } catch (_) { /* synthetic pointers */ }
    stroke(last, last);
    schedule();
  });
  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    e.preventDefault();
    const p = point(e);
    stroke(last, p);
    last = p;
    schedule();
  });
  for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
    pad.addEventListener(type, () => {
      if (drawing) { drawing = false; schedule(0); }
    });
  }

  function schedule(delay) {
    clearTimeout(timer);
    timer = setTimeout(sendCanvas, delay === undefined ? DEBOUNCE_MS : delay);
  }

  function sendCanvas() {
    if (!dirty) return;
    const generation = cleared;
    pad.toBlob((blob) => { if (blob && generation === cleared) send(blob, "image/png"); }, "image/png");
  }

  async function send(body, type) {
    const id = ++sent;
    let res, data;
    try {
      res = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": type || "application/octet-stream" }, body });
      data = await res.json();
    } catch (err) {
      if (id >= shown) setStatus("no answer from the server (" + err + ")", true);
      return;
    }
    if (id < shown) return; // an older answer arriving late
    shown = id;
    if (!res.ok) {
      setStatus(data && data.error ? data.error : "error " + res.status, true);
      return;
    }
    render(data);
  }

  function setStatus(text, error) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", !!error);
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function render(d) {
    document.getElementById("prediction").textContent = d["class"];
    document.getElementById("confidence").textContent = "p = " + d.probability.toFixed(3);
    document.getElementById("model").textContent = "model: " + d.model;
    const bars = document.getElementById("bars");
    bars.replaceChildren();
    d.probabilities.forEach((p, k) => {
      const row = el("div", "bar" + (k === d.class_index ? " top" : ""));
      row.append(el("span", "name", d.class_names[k]));
      const track = el("span", "track"), fill = el("span", "fill");
      fill.style.width = (100 * p).toFixed(1) + "%";
      fill.style.display = "block";
      track.append(fill);
      row.append(track, el("span", "p", (100 * p).toFixed(1) + "%"));
      bars.append(row);
    });
    document.getElementById("input").src = d.input;
    const cam = document.getElementById("gradcam");
    if (d.grad_cam) { cam.src = d.grad_cam; cam.style.visibility = "visible"; }
    else cam.style.visibility = "hidden";
    document.getElementById("camcaption").textContent =
      d.grad_cam ? "Grad-CAM of '" + d["class"] + "' (layer " + d.grad_cam_layer + ")" : "no Grad-CAM (no spatial layer)";
    const features = document.getElementById("features");
    features.replaceChildren();
    for (const layer of d.feature_maps) {
      const box = el("div", "layer");
      box.append(el("div", "title", "feature maps, layer " + layer.index + " " + layer.layer + " (" + layer.shape.join("×") + ")"));
      const maps = el("div", "maps");
      layer.channels.forEach((src, c) => {
        const img = el("img");
        img.src = src;
        img.alt = "channel " + c;
        img.title = "channel " + c;
        maps.append(img);
      });
      box.append(maps);
      features.append(box);
    }
    setStatus(d.class_names.length + " classes; top: " + d["class"]);
  }

  function reset() {
    clearTimeout(timer);
    cleared++; sent++; shown = sent; // canvases being encoded and answers on their way are dropped
    blank();
    document.getElementById("prediction").textContent = "–";
    document.getElementById("confidence").textContent = "";
    document.getElementById("bars").replaceChildren();
    document.getElementById("features").replaceChildren();
    for (const id of ["input", "gradcam"]) document.getElementById(id).removeAttribute("src");
    setStatus("Draw with the mouse or a finger.");
  }
  document.getElementById("clear").addEventListener("click", reset);

  function openFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) { setStatus(file.name + " is not an image", true); return; }
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      blank();
      const s = Math.min(pad.width / img.width, pad.height / img.height);
      const w = img.width * s, h = img.height * s;
      ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
      URL.revokeObjectURL(url);
      dirty = true;
    };
    img.onerror = () => URL.revokeObjectURL(url);
    img.src = url;
    clearTimeout(timer);
    send(file, file.type || "application/octet-stream"); // the file itself, as predict would read it
  }

  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    openFile(e.dataTransfer.files[0]);
  });
  document.getElementById("file").addEventListener("change", (e) => openFile(e.target.files[0]));

  blank();
})();
