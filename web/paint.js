// Painting a pane's canvas: the bitmap(s) placed with zoom and pan, the before/after split or side by side,
// and the record of each draw that tests and bench/bench_viewer.py read.

import { writeCorners } from "./overlay.js";

/** Where the image goes in a box of the canvas: scale and top-left corner, with zoom and pan applied. */
export function placement(pane, bitmap, boxX, boxW, boxH) {
  const dpr = window.devicePixelRatio || 1;
  // The image's own size, so that a zoom:2-enhanced (larger) bitmap covers the same area as the plain one.
  const iw = pane.item?.cols ?? bitmap.width;
  const ih = pane.item?.rows ?? bitmap.height;
  const scale = Math.min(boxW / iw, boxH / ih) * pane.zoom;
  const x = boxX + boxW / 2 + pane.panX * dpr - (iw * scale) / 2;
  const y = boxH / 2 + pane.panY * dpr - (ih * scale) / 2;
  return { x, y, w: iw * scale, h: ih * scale, scale };
}

export function paint(pane) {
  const { ctx, canvas } = pane;
  const { main, plain } = pane.channels;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const splitting = pane.comparing() && pane.compare === "split";
  pane.divider.hidden = !splitting;
  pane.divider.style.left = `${pane.splitAt * 100}%`;
  if (!main.bitmap || !pane.item) {
    writeCorners(pane);
    return;
  }
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.filter = pane.invert ? "invert(1)" : "none";
  const cw = canvas.width;
  const ch = canvas.height;
  if (pane.comparing() && plain.bitmap && pane.compare === "side") {
    drawInBox(pane, plain.bitmap, 0, cw / 2, ch);
    drawInBox(pane, main.bitmap, cw / 2, cw / 2, ch);
    ctx.filter = "none";
    ctx.fillStyle = "#ffd54a";
    ctx.fillRect(cw / 2 - 1, 0, 2, ch);
  } else if (splitting && plain.bitmap) {
    const at = Math.round(pane.splitAt * cw);
    drawInBox(pane, plain.bitmap, 0, cw, ch);
    ctx.save();
    ctx.beginPath();
    ctx.rect(at, 0, cw - at, ch);
    ctx.clip();
    ctx.fillStyle = "#000";
    ctx.fillRect(at, 0, cw - at, ch);
    drawInBox(pane, main.bitmap, 0, cw, ch);
    ctx.restore();
  } else {
    drawInBox(pane, main.bitmap, 0, cw, ch);
  }
  ctx.filter = "none";
  writeCorners(pane);
  recordDraw(pane);
}

function drawInBox(pane, bitmap, boxX, boxW, boxH) {
  const p = placement(pane, bitmap, boxX, boxW, boxH);
  pane.ctx.save();
  pane.ctx.beginPath();
  pane.ctx.rect(boxX, 0, boxW, boxH);
  pane.ctx.clip();
  pane.ctx.drawImage(bitmap, p.x, p.y, p.w, p.h);
  pane.ctx.restore();
}

/** window.__dcmnodeLastDraw / __dcmnodeDraws: what was drawn and when, for tests and bench/bench_viewer.py. */
function recordDraw(pane) {
  const now = performance.now();
  const url = pane.channels.main.key;
  const shown = new URL(url, location.href).searchParams.get("window") ?? "";
  const asked = pane.inputTimes.get(shown);
  if (asked !== undefined) {
    for (const [w, t] of pane.inputTimes) if (t <= asked) pane.inputTimes.delete(w);
  }
  const record = {
    t: now,
    role: pane.role,
    url,
    window: shown,
    enhance: new URL(url, location.href).searchParams.get("enhance") ?? "",
    plain: pane.comparing() ? pane.channels.plain.key : null,
    index: pane.index,
    latency: asked === undefined ? null : now - asked,
  };
  window.__dcmnodeLastDraw = record;
  const log = (window.__dcmnodeDraws ??= []);
  log.push(record);
  if (log.length > 2000) log.splice(0, log.length - 2000);
}
