// A series' items and each instance's metadata, as the viewer asks the node for them (QIDO-RS and WADO-RS
// metadata); used by the panes (overlay text, stored window) and the tag browser.

import { getJSON, instancePath, qido } from "./api.js";
import { TAG, number, value } from "./dicom.js";

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
