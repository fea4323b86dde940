// The tag browser: the header of the instance shown (WADO-RS /metadata, DICOM JSON), as tag / keyword / VR / value
// rows; sequences expand; the filter box keeps rows whose tag, keyword, VR or value contains the text (and the
// sequences leading to them, opened).

import { instanceMetadata } from "./metadata.js";
import { personName } from "./dicom.js";
import { showError } from "./toast.js";

let dictionary = null; // Map tag -> keyword, loaded on first use

async function keywords() {
  if (!dictionary) {
    const { KEYWORDS } = await import("./dicom-dictionary.js");
    dictionary = new Map(KEYWORDS.split("|").map((pair) => pair.split(":")));
  }
  return dictionary;
}

function keywordOf(tag) {
  const group = Number.parseInt(tag.slice(0, 4), 16);
  if (tag.endsWith("0000")) return "GroupLength";
  if (group % 2 === 1) return tag.slice(4, 6) === "00" ? "PrivateCreator" : "(private)";
  return dictionary.get(tag) ?? dictionary.get(`${tag.slice(0, 2)}xx${tag.slice(4)}`) ?? "";
}

function valueText(element) {
  if (element.BulkDataURI) return "(bulk data)";
  if (element.InlineBinary) return `(binary, ${Math.floor((element.InlineBinary.length * 3) / 4)} bytes)`;
  const values = element.Value ?? [];
  if (element.vr === "SQ") return `${values.length} item${values.length === 1 ? "" : "s"}`;
  return values.map((v) => (element.vr === "PN" ? personName(v) : v === null ? "" : String(v))).join("\\");
}

/** The data set as a tree of nodes: {tag, keyword, vr, value, items: [[node...]...] | null}. */
function tree(ds) {
  return Object.keys(ds)
    .sort()
    .map((tag) => {
      const element = ds[tag] ?? {};
      return {
        tag,
        keyword: keywordOf(tag),
        vr: element.vr ?? "",
        value: valueText(element),
        bulk: element.BulkDataURI ?? null,
        items: element.vr === "SQ" ? (element.Value ?? []).map(tree) : null,
      };
    });
}

export class TagBrowser {
  constructor(el) {
    this.el = el;
    this.el.innerHTML = `<h2>Tags</h2>
      <input type="search" class="tag-filter" placeholder="Filter: tag, keyword, VR or value" aria-label="Filter tags">
      <p class="muted tag-source"></p>
      <table class="tags"><tbody></tbody></table>`;
    this.filter = this.el.querySelector(".tag-filter");
    this.body = this.el.querySelector("tbody");
    this.source = this.el.querySelector(".tag-source");
    this.open = new Set(); // paths of expanded sequences
    this.nodes = [];
    this.filter.addEventListener("input", () => this.render());
    this.body.addEventListener("click", (event) => {
      const button = event.target.closest("button.toggle");
      if (!button) return;
      const path = button.dataset.path;
      if (this.open.has(path)) this.open.delete(path);
      else this.open.add(path);
      this.render();
    });
  }

  focusFilter() {
    this.filter.focus();
    this.filter.select();
  }

  /** Show the header of this instance (no-op when it is already shown). */
  async show(study, series, sop) {
    const key = `${study}/${series}/${sop}`;
    if (key === this.key) return;
    this.key = key;
    try {
      const [ds] = await Promise.all([instanceMetadata(study, series, sop), keywords()]);
      if (this.key !== key) return;
      this.nodes = tree(ds);
      this.source.textContent = `Instance ${sop}`;
      this.render();
    } catch (err) {
      this.key = null;
      showError(err, "Tag browser");
    }
  }

  render() {
    const needle = this.filter.value.trim().toLowerCase();
    const hit = (node) =>
      !needle ||
      `(${node.tag.slice(0, 4)},${node.tag.slice(4)}) ${node.tag} ${node.keyword} ${node.vr} ${node.value}`
        .toLowerCase()
        .includes(needle);
    // The rows to show for a list of nodes: a node stays when it or something inside it matches; a sequence shows
    // its items when opened by the user, or when the filter found something inside it.
    const walk = (nodes, depth, path) => {
      const out = [];
      for (const node of nodes) {
        const here = `${path}/${node.tag}`;
        const childRows = [];
        let inside = false;
        (node.items ?? []).forEach((item, n) => {
          const sub = walk(item, depth + 2, `${here}/${n}`);
          inside ||= sub.length > 0;
          if (!needle || sub.length) childRows.push({ item: n + 1, depth: depth + 1 }, ...sub);
        });
        if (!hit(node) && !inside) continue;
        const expanded = !!node.items && (this.open.has(here) || (!!needle && inside));
        out.push({ node, depth, path: here, expanded });
        if (expanded) out.push(...childRows);
      }
      return out;
    };
    const rows = walk(this.nodes, 0, "");
    this.body.replaceChildren(...rows.map((r) => this.row(r)));
    if (!rows.length) this.body.innerHTML = `<tr><td class="muted">No attribute matches.</td></tr>`;
  }

  row(r) {
    const tr = document.createElement("tr");
    if (r.item !== undefined) {
      tr.className = "item";
      const td = tr.insertCell();
      td.colSpan = 4;
      td.style.paddingLeft = `${r.depth * 0.8 + 0.3}rem`;
      td.textContent = `Item ${r.item}`;
      return tr;
    }
    const { node } = r;
    tr.dataset.tag = node.tag;
    const tag = tr.insertCell();
    tag.className = "tag";
    tag.style.paddingLeft = `${r.depth * 0.8 + 0.3}rem`;
    if (node.items) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "toggle";
      button.dataset.path = r.path;
      button.textContent = r.expanded ? "▾" : "▸";
      button.setAttribute("aria-expanded", String(!!r.expanded));
      button.setAttribute("aria-label", `${r.expanded ? "Collapse" : "Expand"} ${node.keyword || node.tag}`);
      tag.append(button);
    }
    tag.append(`(${node.tag.slice(0, 4)},${node.tag.slice(4)})`);
    tr.insertCell().textContent = node.keyword;
    const vr = tr.insertCell();
    vr.className = "vr";
    vr.textContent = node.vr;
    const value = tr.insertCell();
    const full = node.value;
    value.textContent = full.length > 200 ? `${full.slice(0, 200)}…` : full;
    if (full.length > 200) value.title = full;
    return tr;
  }
}
