// One viewport pane: a canvas showing /rendered images of one series, slice by slice (and frame by frame).
//
// Pixels come from the server (window, enhancement), geometry is client-side: zoom, pan and invert change only how
// the bitmap is drawn, so they never wait for the network. A window or enhancement change asks for a new image;
// each "channel" (the main image, and the plain one for before/after comparison) has at most one request in flight
// and sends at most one every THROTTLE_MS, always for the newest wish: a drag that moves faster than the server
// renders skips intermediate windows instead of queueing them (latest wins), and never shows an older one after a
// newer one.

import { getJSON, instancePath, qido } from "./api.js";
import { NON_IMAGE_MODALITIES, TAG, formatDate, formatName, formatTime, number, text, value } from "./dicom.js";
import * as loader from "./loader.js";
import { showError } from "./toast.js";

const THROTTLE_MS = 30;
const MAX_RENDER_SIDE = 2048; // larger images are rendered down to this (viewport=), zoom then magnifies that
const PREFETCH_AHEAD = 6;
const PREFETCH_BEHIND = 3;
let drawSeq = 0; // global order of requests, so a pane never draws an answer older than what it shows

// -- instance metadata (overlay text, stored window, tag browser), cached per instance ----------------------------
const metadataCache = new Map();
export function instanceMetadata(study, series, sop) {
  const key = `${study}/${series}/${sop}`;
  if (!metadataCache.has(key)) {
    const promise = getJSON(`${instancePath(study, series, sop)}/metadata`, {
      headers: { Accept: "application/dicom+json" },
    }).then((list) => list[0] ?? {});
    promise.catch(() => metadataCache.delete(key));
    metadataCache.set(key, promise);
    if (metadataCache.size > 2000) metadataCache.delete(metadataCache.keys().next().value);
  }
  return metadataCache.get(key);
}

/** A series' displayable items: one per frame, instances ordered by Instance Number. */
export async function seriesItems(study, series) {
  const found = await qido(`studies/${study}/series/${series}/instances`, {
    includefield: "InstanceNumber,NumberOfFrames,Rows,Columns",
  });
  const instances = found.map((ds) => ({
    sop: value(ds, TAG.SOPInstanceUID),
    number: number(ds, TAG.InstanceNumber),
    frames: number(ds, TAG.NumberOfFrames) ?? 1,
    rows: number(ds, TAG.Rows),
    cols: number(ds, TAG.Columns),
  }));
  instances.sort((a, b) => (a.number ?? 1e12) - (b.number ?? 1e12) || (a.sop < b.sop ? -1 : 1));
  const items = [];
  for (const inst of instances) {
    for (let f = 1; f <= inst.frames; f++) items.push({ ...inst, frame: inst.frames > 1 ? f : null });
  }
  return items;
}

class Channel {
  constructor(pane) {
    this.pane = pane;
    this.wanted = null; // URL the pane wants now
    this.key = null; // URL of the bitmap shown
    this.bitmap = null;
    this.drawn = 0; // drawSeq of the bitmap shown
    this.busy = false;
    this.lastSent = -1e9;
    this.timer = 0;
    this.failed = null;
  }

  want(url) {
    this.wanted = url;
    // "loading" until the wish is drawn, also while it waits for the throttle (tests and users see it pending).
    this.pane.el.classList.toggle("loading", this.pane.waiting());
    this.pump();
  }

  clear() {
    this.wanted = this.key = this.bitmap = null;
  }

  pump() {
    const url = this.wanted;
    const format = this.pane.format;
    if (!url || url === this.key || url === this.failed) return;
    const cached = loader.peek(url, format);
    if (cached) {
      this.show(url, cached, ++drawSeq);
      return;
    }
    if (this.busy) return; // the request in flight pumps again when it ends: the newest wish is sent then
    const wait = this.lastSent + THROTTLE_MS - performance.now();
    if (wait > 0) {
      if (!this.timer) {
        this.timer = setTimeout(() => {
          this.timer = 0;
          this.pump();
        }, wait);
      }
      return;
    }
    this.busy = true;
    this.lastSent = performance.now();
    const seq = ++drawSeq;
    loader
      .load(url, format)
      .then(
        (bitmap) => {
          if (seq > this.drawn && this.pane.format === format) this.show(url, bitmap, seq);
        },
        (err) => {
          if (url === this.wanted) {
            this.failed = url;
            this.pane.failed(err);
          }
        },
      )
      .finally(() => {
        this.busy = false;
        this.pane.el.classList.toggle("loading", this.pane.waiting());
        this.pump();
      });
  }

  show(url, bitmap, seq) {
    this.key = url;
    this.bitmap = bitmap;
    this.drawn = seq;
    this.failed = null;
    this.pane.el.classList.toggle("loading", this.pane.waiting());
    this.pane.draw();
  }
}

export class Pane {
  /**
   * @param {HTMLElement} host where the pane goes
   * @param {object} options role ("image" | "uncertainty"), label, and callbacks onActivate(pane),
   *   onIndex(pane) (slice changed), onWindow(pane, event) (window changed by the user), onInstance(pane)
   *   (the instance shown changed, metadata may follow)
   */
  constructor(host, options = {}) {
    this.options = options;
    this.role = options.role ?? "image";
    this.el = document.createElement("div");
    this.el.className = "pane";
    this.el.innerHTML = `<canvas></canvas>
      <div class="corner tl"></div><div class="corner tr"></div><div class="corner bl"></div><div class="corner br"></div>
      <div class="pane-label" hidden></div><div class="message" hidden></div><div class="busy"></div>
      <div class="split-divider" hidden title="Drag: before (left) / after (right)"><span>before | after</span></div>`;
    host.append(this.el);
    this.canvas = this.el.querySelector("canvas");
    this.ctx = this.canvas.getContext("2d");
    this.corners = Object.fromEntries(["tl", "tr", "bl", "br"].map((c) => [c, this.el.querySelector(`.${c}`)]));
    this.message = this.el.querySelector(".message");
    this.divider = this.el.querySelector(".split-divider");
    if (options.label) this.setLabel(options.label);

    this.items = [];
    this.index = 0;
    this.window = null; // {center, width}, or null: the stored window (no window parameter)
    this.storedWindow = null; // from the instance metadata, to show and to start a drag from
    this.enhance = ""; // the enhance= parameter
    this.compare = "off"; // off | split | side
    this.splitAt = 0.5;
    this.invert = false;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.tool = "window";
    this.format = "jpeg";
    this.meta = null; // metadata of the instance shown
    this.channels = { main: new Channel(this), plain: new Channel(this) };
    this.inputTimes = new Map(); // window parameter -> time of the input event that asked for it (latency figures)

    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.el);
    this.bindPointer();
    this.bindDivider();
  }

  destroy() {
    this.resizer.disconnect();
    this.stopCine();
    this.el.remove();
  }

  setLabel(label) {
    const el = this.el.querySelector(".pane-label");
    el.textContent = label;
    el.hidden = !label;
    this.el.classList.toggle("labelled", !!label);
  }

  // -- opening a series ---------------------------------------------------------------------------------------
  async open(study, seriesDs, studyDs) {
    this.study = study;
    this.seriesDs = seriesDs;
    this.studyDs = studyDs;
    this.series = value(seriesDs, TAG.SeriesInstanceUID);
    this.modality = text(seriesDs, TAG.Modality);
    this.channels.main.clear();
    this.channels.plain.clear();
    this.items = [];
    this.meta = null;
    this.storedWindow = null;
    this.showMessage("Loading…");
    this.draw();
    const items = await seriesItems(study, this.series);
    if (this.series !== value(seriesDs, TAG.SeriesInstanceUID)) return; // another series was opened meanwhile
    this.items = items;
    this.index = Math.min(this.index, Math.max(0, items.length - 1));
    this.renderable = !NON_IMAGE_MODALITIES.has(this.modality) && items.length > 0;
    if (!items.length) this.showMessage("This series has no instances.");
    else if (!this.renderable) {
      this.showMessage(`This series holds no images (${this.modality}).\nIts header is in the Tags panel.`);
    } else this.showMessage("");
    this.update();
  }

  get item() {
    return this.items[this.index];
  }

  get count() {
    return this.items.length;
  }

  showMessage(message) {
    this.message.textContent = message;
    this.message.hidden = !message;
  }

  failed(err) {
    this.showMessage(`This image could not be rendered.\n${err.message}`);
    showError(err, "Rendering");
  }

  // -- state changes --------------------------------------------------------------------------------------------
  setIndex(index) {
    if (!this.items.length) return;
    const clamped = Math.max(0, Math.min(this.items.length - 1, index));
    if (clamped === this.index && this.channels.main.wanted) return;
    this.index = clamped;
    this.update();
    this.options.onIndex?.(this);
  }

  step(delta) {
    this.setIndex(this.index + delta);
  }

  setWindow(window, inputTime) {
    this.window = window ? { center: Math.round(window.center), width: Math.max(1, Math.round(window.width)) } : null;
    if (inputTime !== undefined) this.inputTimes.set(this.windowParam(), inputTime);
    this.update();
  }

  setEnhance(enhance) {
    this.enhance = enhance;
    this.update();
  }

  setCompare(mode) {
    this.compare = mode;
    this.update();
  }

  setInvert(on) {
    this.invert = on;
    this.draw();
  }

  setTool(tool) {
    this.tool = tool;
    this.el.dataset.tool = tool;
  }

  setFormat(format) {
    this.format = format;
    this.channels.main.key = this.channels.plain.key = null;
    this.update();
  }

  resetView() {
    this.zoom = 1;
    this.panX = this.panY = 0;
    this.draw();
  }

  /** The window used now: the chosen one, else the stored one, else a guess from the pixel depth. */
  effectiveWindow() {
    if (this.window) return this.window;
    if (this.storedWindow) return this.storedWindow;
    if (this.modality === "CT") return { center: 40, width: 400 };
    const bits = number(this.meta, TAG.BitsStored) ?? 8;
    const signed = number(this.meta, TAG.PixelRepresentation) === 1;
    const slope = number(this.meta, TAG.RescaleSlope) ?? 1;
    const intercept = number(this.meta, TAG.RescaleIntercept) ?? 0;
    const range = 2 ** bits;
    return { center: (signed ? 0 : range / 2) * slope + intercept, width: range * slope };
  }

  windowParam() {
    return this.window ? `${this.window.center},${this.window.width}` : "";
  }

  // -- image requests ---------------------------------------------------------------------------------------------
  url(item, enhance) {
    const base = instancePath(this.study, this.series, item.sop);
    const params = new URLSearchParams();
    if (this.format === "jpeg") params.set("quality", "90");
    if (this.window) params.set("window", this.windowParam());
    if (Math.max(item.rows ?? 0, item.cols ?? 0) > MAX_RENDER_SIDE) {
      params.set("viewport", `${MAX_RENDER_SIDE},${MAX_RENDER_SIDE}`);
    }
    if (enhance) params.set("enhance", enhance);
    const path = item.frame ? `${base}/frames/${item.frame}/rendered` : `${base}/rendered`;
    return `${path}?${params}`;
  }

  /** Whether an image asked for is not drawn yet (a failed one is not waited for). */
  waiting() {
    const pending = (c) => !!c.wanted && c.wanted !== c.key && c.wanted !== c.failed;
    return pending(this.channels.main) || (this.comparing() && pending(this.channels.plain));
  }

  comparing() {
    return this.compare !== "off" && !!this.enhance;
  }

  update() {
    const item = this.item;
    if (!item || !this.renderable) {
      this.draw();
      return;
    }
    const url = this.url(item, this.enhance);
    // A failed render's message stays until something else is asked for (the same request is not repeated).
    if (url !== this.channels.main.failed && this.message.textContent.startsWith("This image could not")) {
      this.showMessage("");
    }
    this.channels.main.want(url);
    if (this.comparing()) this.channels.plain.want(this.url(item, ""));
    this.drawOverlay();
    this.loadMetadata();
    if (!this.dragging) this.schedulePrefetch();
  }

  schedulePrefetch() {
    clearTimeout(this.prefetchTimer);
    this.prefetchTimer = setTimeout(() => {
      if (this.dragging || !this.items.length) return;
      const ahead = this.cineTimer ? 12 : PREFETCH_AHEAD;
      const urls = [];
      for (let d = 1; d <= Math.max(ahead, PREFETCH_BEHIND); d++) {
        for (const i of [this.index + d, this.index - d]) {
          const inRange = i >= 0 && i < this.items.length;
          if (inRange && (i > this.index ? d <= ahead : d <= PREFETCH_BEHIND)) {
            urls.push(this.url(this.items[i], this.enhance));
          }
        }
      }
      loader.prefetch(urls, this.format);
    }, 60);
  }

  loadMetadata() {
    const item = this.item;
    clearTimeout(this.metaTimer);
    // While scrolling fast, only the slice the user stops on needs its header.
    this.metaTimer = setTimeout(async () => {
      try {
        const meta = await instanceMetadata(this.study, this.series, item.sop);
        if (this.item?.sop !== item.sop) return;
        this.meta = meta;
        const center = number(meta, TAG.WindowCenter);
        const width = number(meta, TAG.WindowWidth);
        this.storedWindow = center !== undefined && width ? { center, width } : null;
        this.drawOverlay();
        this.options.onInstance?.(this);
      } catch (err) {
        showError(err, "Instance header");
      }
    }, this.meta ? 120 : 0);
  }

  // -- drawing ------------------------------------------------------------------------------------------------
  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.el.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.el.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
      this.draw();
    }
  }

  /** Where the image goes in a box of the canvas: scale and top-left corner, with zoom and pan applied. */
  placement(bitmap, boxX, boxW, boxH) {
    const dpr = window.devicePixelRatio || 1;
    // The image's own size, so that a zoom:2-enhanced (larger) bitmap covers the same area as the plain one.
    const iw = this.item?.cols ?? bitmap.width;
    const ih = this.item?.rows ?? bitmap.height;
    const scale = Math.min(boxW / iw, boxH / ih) * this.zoom;
    const x = boxX + boxW / 2 + this.panX * dpr - (iw * scale) / 2;
    const y = boxH / 2 + this.panY * dpr - (ih * scale) / 2;
    return { x, y, w: iw * scale, h: ih * scale, scale };
  }

  draw() {
    const { ctx, canvas } = this;
    const { main, plain } = this.channels;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const splitting = this.comparing() && this.compare === "split";
    this.divider.hidden = !splitting;
    this.divider.style.left = `${this.splitAt * 100}%`;
    if (!main.bitmap || !this.item) {
      this.drawOverlay();
      return;
    }
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.filter = this.invert ? "invert(1)" : "none";
    const cw = canvas.width;
    const ch = canvas.height;
    if (this.comparing() && plain.bitmap && this.compare === "side") {
      this.drawInBox(plain.bitmap, 0, cw / 2, ch);
      this.drawInBox(main.bitmap, cw / 2, cw / 2, ch);
      ctx.filter = "none";
      ctx.fillStyle = "#ffd54a";
      ctx.fillRect(cw / 2 - 1, 0, 2, ch);
    } else if (splitting && plain.bitmap) {
      const at = Math.round(this.splitAt * cw);
      this.drawInBox(plain.bitmap, 0, cw, ch);
      ctx.save();
      ctx.beginPath();
      ctx.rect(at, 0, cw - at, ch);
      ctx.clip();
      ctx.fillStyle = "#000";
      ctx.fillRect(at, 0, cw - at, ch);
      this.drawInBox(main.bitmap, 0, cw, ch);
      ctx.restore();
    } else {
      this.drawInBox(main.bitmap, 0, cw, ch);
    }
    ctx.filter = "none";
    this.drawOverlay();
    this.recordDraw();
  }

  drawInBox(bitmap, boxX, boxW, boxH) {
    const p = this.placement(bitmap, boxX, boxW, boxH);
    this.ctx.save();
    this.ctx.beginPath();
    this.ctx.rect(boxX, 0, boxW, boxH);
    this.ctx.clip();
    this.ctx.drawImage(bitmap, p.x, p.y, p.w, p.h);
    this.ctx.restore();
  }

  /** window.__dcmnodeLastDraw / __dcmnodeDraws: what was drawn and when, for tests and bench/bench_viewer.py. */
  recordDraw() {
    const now = performance.now();
    const url = this.channels.main.key;
    const shown = new URL(url, location.href).searchParams.get("window") ?? "";
    const asked = this.inputTimes.get(shown);
    if (asked !== undefined) {
      for (const [w, t] of this.inputTimes) if (t <= asked) this.inputTimes.delete(w);
    }
    const record = {
      t: now,
      role: this.role,
      url,
      window: shown,
      enhance: new URL(url, location.href).searchParams.get("enhance") ?? "",
      plain: this.comparing() ? this.channels.plain.key : null,
      index: this.index,
      latency: asked === undefined ? null : now - asked,
    };
    window.__dcmnodeLastDraw = record;
    const log = (window.__dcmnodeDraws ??= []);
    log.push(record);
    if (log.length > 2000) log.splice(0, log.length - 2000);
  }

  drawOverlay() {
    const c = this.corners;
    const studyDs = this.studyDs;
    const meta = this.meta;
    const item = this.item;
    if (!item) {
      for (const el of Object.values(c)) el.textContent = "";
      return;
    }
    const sex = text(studyDs, TAG.PatientSex);
    const birth = formatDate(text(studyDs, TAG.PatientBirthDate));
    c.tl.textContent = [
      formatName(value(studyDs, TAG.PatientName)),
      text(studyDs, TAG.PatientID),
      [birth, sex].filter(Boolean).join("  "),
    ].join("\n");
    c.tr.textContent = [
      text(studyDs, TAG.StudyDescription),
      `${formatDate(text(studyDs, TAG.StudyDate))} ${formatTime(text(studyDs, TAG.StudyTime))}`.trim(),
      text(studyDs, TAG.AccessionNumber) && `Acc ${text(studyDs, TAG.AccessionNumber)}`,
    ].join("\n");
    const location = number(meta, TAG.SliceLocation);
    const thickness = number(meta, TAG.SliceThickness);
    const seriesNo = text(this.seriesDs, TAG.SeriesNumber);
    c.bl.textContent = [
      `Se ${seriesNo}${seriesNo ? ": " : ""}${text(this.seriesDs, TAG.SeriesDescription)}  ${this.modality}`,
      `Im ${item.number ?? "?"}  (${this.index + 1}/${this.items.length})`,
      item.frame ? `Frame ${item.frame}/${item.frames}` : "",
      location !== undefined ? `Loc ${location.toFixed(1)} mm${thickness ? `  Thk ${thickness} mm` : ""}` : "",
      item.cols ? `${item.cols}×${item.rows}` : "",
    ]
      .filter(Boolean)
      .join("\n");
    const w = this.effectiveWindow();
    const windowText = this.window
      ? `W ${this.window.width}  L ${this.window.center}`
      : `W ${fmt(w.width)}  L ${fmt(w.center)} (${this.storedWindow ? "stored" : "default"})`;
    c.br.textContent = [
      windowText,
      `Zoom ${Math.round(this.zoom * 100)} %`,
      this.invert ? "Inverted" : "",
      this.enhance ? `Enhance ${this.enhance}` : "",
      this.comparing() ? (this.compare === "split" ? "before | after" : "before  ·  after") : "",
    ]
      .filter(Boolean)
      .join("\n");
  }

  // -- mouse / touch -----------------------------------------------------------------------------------------------
  bindPointer() {
    const canvas = this.canvas;
    let last = null;
    let mode = null;
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("pointerdown", (e) => {
      this.options.onActivate?.(this);
      mode = e.button === 1 ? "pan" : e.button === 2 ? "zoom" : e.shiftKey ? "pan" : this.tool;
      last = { x: e.clientX, y: e.clientY };
      this.dragging = mode === "window";
      if (this.dragging) loader.cancelPrefetch();
      this.dragWindow = this.effectiveWindow();
      canvas.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      const dx = e.clientX - last.x;
      const dy = e.clientY - last.y;
      if (!dx && !dy) return;
      last = { x: e.clientX, y: e.clientY };
      if (mode === "window") {
        if (!this.renderable) return;
        // Right = wider, down = higher level (darker); faster for wide windows.
        const k = Math.max(1, this.dragWindow.width / 256);
        this.dragWindow = {
          center: this.dragWindow.center + dy * k,
          width: Math.max(1, this.dragWindow.width + dx * k),
        };
        this.setWindow(this.dragWindow, e.timeStamp);
        this.options.onWindow?.(this, e.timeStamp);
      } else if (mode === "pan") {
        this.panX += dx;
        this.panY += dy;
        this.draw();
      } else if (mode === "zoom") {
        this.zoomAt(Math.exp(-dy * 0.01), null);
      }
    });
    const end = (e) => {
      if (!last) return;
      last = null;
      mode = null;
      if (canvas.hasPointerCapture(e.pointerId)) canvas.releasePointerCapture(e.pointerId);
      if (this.dragging) {
        this.dragging = false;
        this.schedulePrefetch();
      }
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("dblclick", () => this.resetView());
    let wheel = 0;
    canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        this.options.onActivate?.(this);
        if (e.ctrlKey || e.metaKey) {
          this.zoomAt(Math.exp(-e.deltaY * 0.002), e);
          return;
        }
        // A mouse notch (|deltaY| >= 50) is one slice; a touchpad's small deltas add up to one.
        wheel = Math.abs(e.deltaY) >= 50 ? e.deltaY : wheel + e.deltaY;
        if (Math.abs(wheel) >= 50) {
          this.step(Math.sign(wheel));
          wheel = 0;
        }
      },
      { passive: false },
    );
  }

  /** Zoom by `factor` keeping the image point under the mouse (or the centre) in place. */
  zoomAt(factor, event) {
    const bitmap = this.channels.main.bitmap;
    const newZoom = Math.max(0.1, Math.min(20, this.zoom * factor));
    if (bitmap && event) {
      const dpr = window.devicePixelRatio || 1;
      const rect = this.canvas.getBoundingClientRect();
      const px = (event.clientX - rect.left) * dpr;
      const py = (event.clientY - rect.top) * dpr;
      const before = this.placement(bitmap, 0, this.canvas.width, this.canvas.height);
      const u = (px - before.x) / before.scale;
      const v = (py - before.y) / before.scale;
      this.zoom = newZoom;
      const after = this.placement(bitmap, 0, this.canvas.width, this.canvas.height);
      this.panX += (px - (after.x + u * after.scale)) / dpr;
      this.panY += (py - (after.y + v * after.scale)) / dpr;
    } else {
      this.zoom = newZoom;
    }
    this.draw();
  }

  bindDivider() {
    const d = this.divider;
    d.addEventListener("pointerdown", (e) => {
      d.setPointerCapture(e.pointerId);
      e.stopPropagation();
      e.preventDefault();
    });
    d.addEventListener("pointermove", (e) => {
      if (!d.hasPointerCapture(e.pointerId)) return;
      const rect = this.el.getBoundingClientRect();
      this.splitAt = Math.max(0.02, Math.min(0.98, (e.clientX - rect.left) / rect.width));
      this.draw();
    });
    d.addEventListener("pointerup", (e) => d.releasePointerCapture(e.pointerId));
  }

  // -- cine -----------------------------------------------------------------------------------------------------
  playCine(fps, onStep) {
    this.stopCine();
    let next = performance.now();
    const tick = (now) => {
      if (now >= next) {
        // Wait for the frame shown to be drawn before moving on, so a slow network slows cine instead of
        // turning it into a blank flicker.
        if (!this.waiting()) {
          this.setIndex((this.index + 1) % Math.max(1, this.items.length));
          onStep?.(this);
        }
        next = now + 1000 / fps;
      }
      this.cineTimer = requestAnimationFrame(tick);
    };
    this.cineTimer = requestAnimationFrame(tick);
    this.schedulePrefetch();
  }

  stopCine() {
    if (this.cineTimer) cancelAnimationFrame(this.cineTimer);
    this.cineTimer = 0;
  }

  get playing() {
    return !!this.cineTimer;
  }
}

function fmt(x) {
  return Number.isInteger(x) ? String(x) : x.toFixed(1);
}

