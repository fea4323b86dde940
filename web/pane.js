// One viewport pane: a canvas showing /rendered images of one series, slice by slice (and frame by frame).
//
// Pixels come from the server (window, enhancement), geometry is client-side: zoom, pan and invert change only how
// the bitmap is drawn, so they never wait for the network. A window or enhancement change asks for a new image;
// each "channel" (the main image, and the plain one for before/after comparison) has at most one request in flight
// and sends at most one every THROTTLE_MS, always for the newest wish: a drag that moves faster than the server
// renders skips intermediate windows instead of queueing them (latest wins), and never shows an older one after a
// newer one.
//
// The pane's parts: channel.js (the request throttle), paint.js (the canvas), overlay.js (the corner text),
// pointer.js (mouse and touch), metadata.js (the series' items, instance headers).

import { instancePath } from "./api.js";
import { NON_IMAGE_MODALITIES, TAG, number, text, value } from "./dicom.js";
import { Channel } from "./channel.js";
import * as loader from "./loader.js";
import { instanceMetadata, seriesItems } from "./metadata.js";
import { writeCorners } from "./overlay.js";
import { paint } from "./paint.js";
import { bindDivider, bindPointer } from "./pointer.js";
import { showError } from "./toast.js";

const MAX_RENDER_SIDE = 2048; // larger images are rendered down to this (viewport=), zoom then magnifies that
const PREFETCH_AHEAD = 6;
const PREFETCH_BEHIND = 3;

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
    bindPointer(this);
    bindDivider(this);
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

  draw() {
    paint(this);
  }

  drawOverlay() {
    writeCorners(this);
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
