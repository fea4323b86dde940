// One channel of a pane (the main image, or the plain one for before/after comparison): at most one /rendered
// request in flight and at most one sent every THROTTLE_MS, always for the newest wish (latest wins), and never
// an answer older than what it shows.

import * as loader from "./loader.js";

const THROTTLE_MS = 30;
let drawSeq = 0; // global order of requests, so a pane never draws an answer older than what it shows

export class Channel {
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
