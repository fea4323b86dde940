// A pane's mouse and touch input: window drag, pan, zoom (drag or Ctrl+wheel, about the pointer), slice by
// wheel, double click to reset, and the before/after divider.

import * as loader from "./loader.js";
import { placement } from "./paint.js";

export function bindPointer(pane) {
  const canvas = pane.canvas;
  let last = null;
  let mode = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    pane.options.onActivate?.(pane);
    mode = e.button === 1 ? "pan" : e.button === 2 ? "zoom" : e.shiftKey ? "pan" : pane.tool;
    last = { x: e.clientX, y: e.clientY };
    pane.dragging = mode === "window";
    if (pane.dragging) loader.cancelPrefetch();
    pane.dragWindow = pane.effectiveWindow();
    canvas.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const dx = e.clientX - last.x;
    const dy = e.clientY - last.y;
    if (!dx && !dy) return;
    last = { x: e.clientX, y: e.clientY };
    drag(pane, mode, dx, dy, e.timeStamp);
  });
  const end = (e) => {
    if (!last) return;
    last = null;
    mode = null;
    if (canvas.hasPointerCapture(e.pointerId)) canvas.releasePointerCapture(e.pointerId);
    if (pane.dragging) {
      pane.dragging = false;
      pane.schedulePrefetch();
    }
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("dblclick", () => pane.resetView());
  bindWheel(pane);
}

/** One step of a drag in `mode` (window, pan or zoom) by dx, dy CSS pixels. */
function drag(pane, mode, dx, dy, timeStamp) {
  if (mode === "window") {
    if (!pane.renderable) return;
    // Right = wider, down = higher level (darker); faster for wide windows.
    const k = Math.max(1, pane.dragWindow.width / 256);
    pane.dragWindow = {
      center: pane.dragWindow.center + dy * k,
      width: Math.max(1, pane.dragWindow.width + dx * k),
    };
    pane.setWindow(pane.dragWindow, timeStamp);
    pane.options.onWindow?.(pane, timeStamp);
  } else if (mode === "pan") {
    pane.panX += dx;
    pane.panY += dy;
    pane.draw();
  } else if (mode === "zoom") {
    zoomAt(pane, Math.exp(-dy * 0.01), null);
  }
}

function bindWheel(pane) {
  const canvas = pane.canvas;
  let wheel = 0;
  canvas.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      pane.options.onActivate?.(pane);
      if (e.ctrlKey || e.metaKey) {
        zoomAt(pane, Math.exp(-e.deltaY * 0.002), e);
        return;
      }
      // A mouse notch (|deltaY| >= 50) is one slice; a touchpad's small deltas add up to one.
      wheel = Math.abs(e.deltaY) >= 50 ? e.deltaY : wheel + e.deltaY;
      if (Math.abs(wheel) >= 50) {
        pane.step(Math.sign(wheel));
        wheel = 0;
      }
    },
    { passive: false },
  );
}

/** Zoom by `factor` keeping the image point under the mouse (or the centre) in place. */
export function zoomAt(pane, factor, event) {
  const bitmap = pane.channels.main.bitmap;
  const newZoom = Math.max(0.1, Math.min(20, pane.zoom * factor));
  if (bitmap && event) {
    const dpr = window.devicePixelRatio || 1;
    const rect = pane.canvas.getBoundingClientRect();
    const px = (event.clientX - rect.left) * dpr;
    const py = (event.clientY - rect.top) * dpr;
    const before = placement(pane, bitmap, 0, pane.canvas.width, pane.canvas.height);
    const u = (px - before.x) / before.scale;
    const v = (py - before.y) / before.scale;
    pane.zoom = newZoom;
    const after = placement(pane, bitmap, 0, pane.canvas.width, pane.canvas.height);
    pane.panX += (px - (after.x + u * after.scale)) / dpr;
    pane.panY += (py - (after.y + v * after.scale)) / dpr;
  } else {
    pane.zoom = newZoom;
  }
  pane.draw();
}

export function bindDivider(pane) {
  const d = pane.divider;
  d.addEventListener("pointerdown", (e) => {
    d.setPointerCapture(e.pointerId);
    e.stopPropagation();
    e.preventDefault();
  });
  d.addEventListener("pointermove", (e) => {
    if (!d.hasPointerCapture(e.pointerId)) return;
    const rect = pane.el.getBoundingClientRect();
    pane.splitAt = Math.max(0.02, Math.min(0.98, (e.clientX - rect.left) / rect.width));
    pane.draw();
  });
  d.addEventListener("pointerup", (e) => d.releasePointerCapture(e.pointerId));
}
