// The series selector: a thumbnail, description, modality and image count per series; a listbox that the arrow
// keys walk (Enter or Space opens); placed at the bottom, top, left or right of the viewport (remembered).

import { seriesPath } from "./api.js";
import { NON_IMAGE_MODALITIES, TAG, number, text, value } from "./dicom.js";

const POSITION_KEY = "dcmnode.seriesStripPosition";
export const POSITIONS = ["bottom", "top", "left", "right"];

export function savedPosition() {
  const saved = localStorage.getItem(POSITION_KEY);
  return POSITIONS.includes(saved) ? saved : "bottom";
}

export function savePosition(position) {
  localStorage.setItem(POSITION_KEY, position);
}

export class SeriesStrip {
  /** `onDelete(uid)`: the Delete action of a series, offered when `canDelete` is set (the node says so). */
  constructor(el, onSelect, onDelete = null) {
    this.el = el;
    this.onSelect = onSelect;
    this.onDelete = onDelete;
    this.canDelete = false;
    this.series = [];
    this.selected = null;
    el.addEventListener("click", (event) => {
      const item = event.target.closest(".series-item");
      if (event.target.closest("button[data-action=delete]")) this.onDelete?.(item.dataset.series);
      else if (item) this.onSelect(item.dataset.series);
    });
    el.addEventListener("keydown", (event) => this.onKey(event));
  }

  /** `series`: QIDO series results of one study (with NumberOfSeriesRelatedInstances). */
  show(study, series) {
    this.study = study;
    this.series = series;
    this.el.replaceChildren();
    for (const ds of series) {
      const uid = value(ds, TAG.SeriesInstanceUID);
      const modality = text(ds, TAG.Modality);
      const item = document.createElement("div");
      item.className = "series-item";
      item.role = "option";
      item.tabIndex = -1;
      item.dataset.series = uid;
      item.setAttribute("aria-selected", "false");
      const thumb = document.createElement("div");
      thumb.className = "thumb";
      if (NON_IMAGE_MODALITIES.has(modality)) {
        thumb.textContent = modality;
      } else {
        const img = document.createElement("img");
        img.alt = "";
        img.loading = "lazy";
        img.src = `${seriesPath(study, uid)}/thumbnail`;
        img.addEventListener("error", () => thumb.replaceChildren(modality || "no image"));
        thumb.append(img);
      }
      const desc = document.createElement("div");
      desc.className = "desc";
      desc.textContent = text(ds, TAG.SeriesDescription) || "(no description)";
      desc.title = desc.textContent;
      const info = document.createElement("div");
      info.className = "muted";
      const count = number(ds, TAG.NumberOfSeriesRelatedInstances) ?? 0;
      info.textContent = `#${text(ds, TAG.SeriesNumber) || "–"} ${modality} · ${count} image${count === 1 ? "" : "s"}`;
      item.append(thumb, desc, info);
      if (this.canDelete && this.onDelete) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "danger series-delete";
        button.dataset.action = "delete";
        button.textContent = "Delete";
        button.title = "Delete this series from the node";
        item.append(button);
      }
      this.el.append(item);
    }
    if (this.selected) this.select(this.selected);
  }

  select(uid) {
    this.selected = uid;
    for (const item of this.el.children) {
      const here = item.dataset.series === uid;
      item.setAttribute("aria-selected", String(here));
      item.tabIndex = here ? 0 : -1;
      if (here) item.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }

  /** The series `delta` places away from the selected one (for "[" and "]"). */
  neighbour(delta) {
    const uids = this.series.map((ds) => value(ds, TAG.SeriesInstanceUID));
    const at = uids.indexOf(this.selected);
    return uids[Math.max(0, Math.min(uids.length - 1, at + delta))];
  }

  onKey(event) {
    if (event.target.closest?.("button")) return; // Enter or Space on Delete presses it
    const items = [...this.el.children];
    const focused = items.indexOf(document.activeElement);
    const from = focused >= 0 ? focused : Math.max(0, items.findIndex((i) => i.dataset.series === this.selected));
    const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, Home: -1e9, End: 1e9 };
    if (event.key in moves) {
      const to = Math.max(0, Math.min(items.length - 1, from + moves[event.key]));
      items[to]?.focus();
    } else if ((event.key === "Enter" || event.key === " ") && items[from]) {
      this.onSelect(items[from].dataset.series);
    } else {
      return;
    }
    event.preventDefault();
    event.stopPropagation(); // the viewer's own arrow keys (slices) must not see it
  }
}
