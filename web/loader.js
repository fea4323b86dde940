// Rendered images: fetched with the right Accept header, decoded off the main thread (createImageBitmap), kept in
// an LRU of decoded bitmaps, and prefetched with a small concurrency. The server keeps its own render cache, so a
// neighbouring slice asked for twice costs one render at most.

import { request } from "./api.js";

const BUDGET_BYTES = 384 * 1024 * 1024; // decoded RGBA bytes kept in memory (~360 slices of 512x512)
const PREFETCH_CONCURRENCY = 3;

const entries = new Map(); // key -> {promise, bitmap, bytes}; Map order = least recently used first
let used = 0;
let queue = []; // prefetch keys waiting
let running = 0;

function keyOf(url, format) {
  return `${format} ${url}`;
}

async function fetchBitmap(url, format) {
  const accept = format === "png" ? "image/png" : "image/jpeg";
  // JPEG answers may come from the browser's HTTP cache; a PNG request revalidates so that a cached JPEG of the
  // same URL is never taken for the lossless image.
  const response = await request(url, { headers: { Accept: accept }, cache: format === "png" ? "no-cache" : "default" });
  return createImageBitmap(await response.blob());
}

function remember(key, entry) {
  entries.delete(key);
  entries.set(key, entry);
}

function evict() {
  for (const [key, entry] of entries) {
    if (used <= BUDGET_BYTES) break;
    if (!entry.bitmap) continue; // still loading
    entries.delete(key);
    used -= entry.bytes;
    // Not bitmap.close(): a pane may still be showing it; the garbage collector frees it once nobody does.
  }
}

/** The decoded image for a rendered URL (from memory when present). */
export function load(url, format = "jpeg") {
  const key = keyOf(url, format);
  const known = entries.get(key);
  if (known) {
    remember(key, known);
    return known.promise;
  }
  const entry = { bitmap: null, bytes: 0 };
  entry.promise = fetchBitmap(url, format).then(
    (bitmap) => {
      entry.bitmap = bitmap;
      entry.bytes = bitmap.width * bitmap.height * 4;
      used += entry.bytes;
      evict();
      return bitmap;
    },
    (err) => {
      entries.delete(key); // a failure is not cached: asking again asks the server again
      throw err;
    },
  );
  entries.set(key, entry);
  return entry.promise;
}

/** The decoded image when it is already in memory, else null (never starts a request). */
export function peek(url, format = "jpeg") {
  const entry = entries.get(keyOf(url, format));
  if (!entry?.bitmap) return null;
  remember(keyOf(url, format), entry);
  return entry.bitmap;
}

/** Replace the prefetch queue (the newest wish wins: slices near the one now shown, with the window now used). */
export function prefetch(urls, format = "jpeg") {
  queue = urls.filter((url) => !entries.has(keyOf(url, format))).map((url) => [url, format]);
  pump();
}

export function cancelPrefetch() {
  queue = [];
}

function pump() {
  while (running < PREFETCH_CONCURRENCY && queue.length) {
    const [url, format] = queue.shift();
    if (entries.has(keyOf(url, format))) continue;
    running += 1;
    load(url, format)
      .catch(() => {}) // a prefetch failure shows up (as a toast) only if that slice is displayed
      .finally(() => {
        running -= 1;
        pump();
      });
  }
}
