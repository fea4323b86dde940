// The study list: QIDO-RS search (name, ID, accession, date range, modality), sortable columns, limit/offset paging.

import { deleteResource, may, qido } from "./api.js";
import { TAG, formatDate, formatName, number, text, value } from "./dicom.js";
import { openDeidentify } from "./deidentify.js";
import { showError, toast } from "./toast.js";

const INCLUDE = ["StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"];

// Column → how a row sorts on it (sorting orders the rows of the current page: QIDO has no sort parameter).
const SORT_KEYS = {
  name: (s) => s.name.toLowerCase(),
  pid: (s) => s.pid,
  date: (s) => s.date + s.time,
  accession: (s) => s.accession,
  description: (s) => s.description.toLowerCase(),
  modalities: (s) => s.modalities,
  series: (s) => s.series,
  instances: (s) => s.instances,
};

export class StudiesView {
  constructor(root) {
    this.root = root;
    this.form = root.querySelector("#study-search");
    this.body = root.querySelector("#study-table tbody");
    this.offset = 0;
    this.rows = [];
    this.sort = { key: "date", dir: -1 };
    this.loaded = false;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.offset = 0;
      this.search();
    });
    this.form.addEventListener("reset", () => setTimeout(() => this.form.requestSubmit()));
    root.querySelector("#page-prev").addEventListener("click", () => this.page(-1));
    root.querySelector("#page-next").addEventListener("click", () => this.page(1));
    root.querySelector("#page-size").addEventListener("change", () => {
      this.offset = 0;
      this.search();
    });
    for (const th of root.querySelectorAll("th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => this.sortBy(th.dataset.sort));
    }
    this.canDelete = false;
    this.body.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action=delete]");
      const deid = event.target.closest("button[data-action=deidentify]");
      if (button) this.remove(button.closest("tr")).catch((err) => showError(err, "Delete"));
      else if (deid) this.deidentify(deid.closest("tr"));
      else this.open(event.target.closest("tr"));
    });
    this.body.addEventListener("keydown", (event) => {
      if (event.target.closest("button")) return; // Enter on the Delete button presses it, it does not open
      const tr = event.target.closest("tr");
      if (event.key === "Enter") this.open(tr);
      else if (event.key === "ArrowDown") tr?.nextElementSibling?.focus();
      else if (event.key === "ArrowUp") tr?.previousElementSibling?.focus();
      else return;
      event.preventDefault();
      event.stopPropagation();
    });
  }

  get pageSize() {
    return Number(this.root.querySelector("#page-size").value);
  }

  async enter() {
    this.canDelete = await may("delete");
    this.canDeidentify = await may("deidentify");
    const actions = this.canDelete || this.canDeidentify;
    for (const th of this.root.querySelectorAll("th.actions")) th.hidden = !actions;
    if (!this.loaded) await this.search();
  }

  get columns() {
    return this.canDelete || this.canDeidentify ? 9 : 8;
  }

  /** The Delete action of a row: asks, deletes the study (DELETE /dicom-web/studies/{uid}), searches again. */
  async remove(tr) {
    const s = this.rows.find((row) => row.uid === tr?.dataset.study);
    if (!s) return;
    const what = `the study of ${s.name || "(no name)"}${s.description ? ` (${s.description})` : ""}`;
    if (!confirm(`Delete ${what}: ${s.series} series, ${s.instances} images? This cannot be undone.`)) return;
    await deleteResource(`studies/${encodeURIComponent(s.uid)}`);
    toast(`Deleted ${what}.`);
    await this.search();
  }

  /** The De-identify action of a row: the dialog (deidentify.js). */
  deidentify(tr) {
    const s = this.rows.find((row) => row.uid === tr?.dataset.study);
    if (s) openDeidentify(s);
  }

  onKey(event) {
    if (event.key === "/") {
      this.form.elements.PatientName.focus();
      return true;
    }
    return false;
  }

  /** The QIDO parameters of the form. A name without a wildcard is a prefix search ("doe" finds "Doe^John"). */
  params() {
    const f = this.form.elements;
    let name = f.PatientName.value.trim();
    const fuzzy = f.fuzzy.checked;
    if (name && !fuzzy && !/[*?]/.test(name)) name += "*";
    const from = f.dateFrom.value.replaceAll("-", "");
    const to = f.dateTo.value.replaceAll("-", "");
    return {
      PatientName: name,
      PatientID: f.PatientID.value.trim(),
      AccessionNumber: f.AccessionNumber.value.trim(),
      StudyDate: from || to ? `${from}-${to}` : "",
      ModalitiesInStudy: f.ModalitiesInStudy.value,
      fuzzymatching: fuzzy && name ? "true" : "",
      includefield: INCLUDE.join(","),
      limit: this.pageSize + 1, // one more than shown tells whether there is a next page
      offset: this.offset,
    };
  }

  async search() {
    this.loaded = true;
    this.message("Searching…");
    let found;
    try {
      found = await qido("studies", this.params());
    } catch (err) {
      this.message("The search failed.");
      showError(err, "Study search");
      return;
    }
    this.more = found.length > this.pageSize;
    this.rows = found.slice(0, this.pageSize).map(studyRow);
    this.render();
  }

  /** The table's one row of text instead of studies. */
  message(text) {
    this.body.replaceChildren();
    const td = this.body.insertRow().insertCell();
    td.colSpan = this.columns;
    td.className = "empty";
    td.textContent = text;
  }

  page(step) {
    this.offset = Math.max(0, this.offset + step * this.pageSize);
    this.search();
  }

  sortBy(key) {
    this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : 1 };
    this.render();
  }

  render() {
    const { key, dir } = this.sort;
    const by = SORT_KEYS[key];
    const rows = [...this.rows].sort((a, b) => (by(a) < by(b) ? -dir : by(a) > by(b) ? dir : 0));
    for (const th of this.root.querySelectorAll("th[data-sort]")) {
      th.setAttribute("aria-sort", th.dataset.sort !== key ? "none" : dir > 0 ? "ascending" : "descending");
    }
    this.body.replaceChildren();
    if (!rows.length) this.message("No study matches.");
    for (const s of rows) {
      const tr = this.body.insertRow();
      tr.tabIndex = 0;
      tr.dataset.study = s.uid;
      const cells = [s.name, s.pid, formatDate(s.date), s.accession, s.description, s.modalities, s.series, s.instances];
      cells.forEach((v, i) => {
        const td = tr.insertCell();
        td.textContent = v ?? "";
        if (i >= 6) td.className = "num";
      });
      const actions = this.canDelete || this.canDeidentify ? tr.insertCell() : null;
      if (this.canDeidentify) {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.action = "deidentify";
        button.textContent = "De-identify";
        button.title = "Make a de-identified copy of this study (a new study, or a ZIP)";
        actions.append(button);
      }
      if (this.canDelete) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "danger";
        button.dataset.action = "delete";
        button.textContent = "Delete";
        button.title = "Delete this study from the node";
        actions.append(button);
      }
    }
    const first = this.rows.length ? this.offset + 1 : 0;
    this.root.querySelector("#page-info").textContent = `Studies ${first}–${this.offset + this.rows.length}`;
    this.root.querySelector("#page-prev").disabled = this.offset === 0;
    this.root.querySelector("#page-next").disabled = !this.more;
  }

  open(tr) {
    if (tr?.dataset.study) location.hash = `#/viewer/${encodeURIComponent(tr.dataset.study)}`;
  }
}

function studyRow(ds) {
  return {
    uid: value(ds, TAG.StudyInstanceUID),
    name: formatName(value(ds, TAG.PatientName)),
    pid: text(ds, TAG.PatientID),
    date: text(ds, TAG.StudyDate),
    time: text(ds, TAG.StudyTime),
    accession: text(ds, TAG.AccessionNumber),
    description: text(ds, TAG.StudyDescription),
    modalities: text(ds, TAG.ModalitiesInStudy).replaceAll("\\", ", "),
    series: number(ds, TAG.NumberOfStudyRelatedSeries) ?? 0,
    instances: number(ds, TAG.NumberOfStudyRelatedInstances) ?? 0,
  };
}
