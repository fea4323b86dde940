// The viewer page: a study's series (selector), one or more panes (the series, and after super-resolution its
// derived series and uncertainty map with synchronised scrolling), the toolbar, and the side panels.

import { deleteResource, getJSON, may, qido } from "./api.js";
import { NON_IMAGE_MODALITIES, TAG, formatName, number, text, value } from "./dicom.js";
import { EnhancePanel } from "./enhance.js";
import { StudyLabels } from "./labels.js";
import { POSITIONS, SeriesStrip, savePosition, savedPosition } from "./series.js";
import { SrPanel } from "./sr.js";
import { TagBrowser } from "./tags.js";
import { showError, toast } from "./toast.js";
import { Pane } from "./pane.js";

const PRESET_KEYS = { 0: "", 1: "40,80", 2: "-600,1500", 3: "400,1800", 4: "40,400", 5: "50,350" };

export class ViewerView {
  constructor(root) {
    this.root = root;
    this.$ = (selector) => root.querySelector(selector);
    this.panesEl = this.$("#panes");
    this.panes = [];
    this.active = null;
    this.tool = "window";
    this.format = "jpeg";
    this.panel = null;
    this.strip = new SeriesStrip(
      this.$("#series-strip"),
      (uid) => this.selectSeries(uid).catch((e) => showError(e)),
      (uid) => this.deleteSeries(uid).catch((e) => showError(e, "Delete")),
    );
    const body = (name) => this.$(`[data-panel-body="${name}"]`);
    this.enhancePanel = new EnhancePanel(body("enhance"), (enhance, compare) => this.applyEnhance(enhance, compare));
    this.srPanel = new SrPanel(body("sr"), (job) => this.openSrResult(job).catch((e) => showError(e, "SR result")));
    this.tags = new TagBrowser(body("tags"));
    this.labels = new StudyLabels(this.$("#study-labels"));
    this.setStripPosition(savedPosition());
    this.bindToolbar();
  }

  // -- routing ----------------------------------------------------------------------------------------------------
  async enter([study, series], query) {
    if (!study) {
      location.hash = "#/studies";
      return;
    }
    this.strip.canDelete = await may("delete");
    if (study !== this.study) await this.loadStudy(study);
    const jobId = query.get("job");
    if (jobId) {
      const job = await getJSON(`api/sr/jobs/${encodeURIComponent(jobId)}`);
      if (job.series !== this.mainSeries || this.panes.length < 2) await this.selectSeries(job.series);
      if (job.status === "done") await this.openSrResult(job);
      else this.openPanel("sr");
      return;
    }
    const wanted = series || this.firstImageSeries();
    if (wanted && (wanted !== this.mainSeries || !this.panes.length)) await this.selectSeries(wanted);
  }

  leave() {
    this.stopCine();
  }

  /** The Delete action of the series selector: asks, deletes (DELETE .../series/{uid}), then shows what is left
   * of the study (its first image series), or the study list when nothing is. */
  async deleteSeries(uid) {
    const ds = this.seriesDs(uid);
    if (!ds) return;
    const count = number(ds, TAG.NumberOfSeriesRelatedInstances) ?? 0;
    const label = text(ds, TAG.SeriesDescription) || `#${text(ds, TAG.SeriesNumber) || "–"} ${text(ds, TAG.Modality)}`;
    if (!confirm(`Delete the series ${label} (${count} images)? This cannot be undone.`)) return;
    await deleteResource(`studies/${encodeURIComponent(this.study)}/series/${encodeURIComponent(uid)}`);
    toast(`Deleted the series ${label}.`);
    const left = await qido(`studies/${this.study}/series`, {});
    if (!left.length) {
      location.hash = "#/studies"; // the study went with its last series
      return;
    }
    const study = this.study;
    const kept = this.mainSeries !== uid ? this.mainSeries : undefined;
    this.study = null; // opened again: its series list and its first pane
    history.replaceState(null, "", `#/viewer/${study}${kept ? `/${kept}` : ""}`);
    await this.enter([study, kept], new URLSearchParams());
  }

  async loadStudy(study) {
    this.study = study;
    this.mainSeries = null;
    this.closeExtraPanes();
    const [studies] = await Promise.all([
      qido("studies", { StudyInstanceUID: study, includefield: "StudyDescription" }),
      this.loadSeriesList(),
      this.labels.show(study),
    ]);
    if (!studies.length) throw new Error(`study ${study} is not stored on this node`);
    this.studyDs = studies[0];
    const name = formatName(value(this.studyDs, TAG.PatientName));
    this.$("#viewer-title").textContent = [name, text(this.studyDs, TAG.StudyDescription)].filter(Boolean).join(" — ");
  }

  async loadSeriesList() {
    const list = await qido(`studies/${this.study}/series`, {
      includefield: "NumberOfSeriesRelatedInstances,SeriesDescription",
    });
    list.sort((a, b) => (number(a, TAG.SeriesNumber) ?? 1e9) - (number(b, TAG.SeriesNumber) ?? 1e9));
    this.seriesList = list;
    this.strip.show(this.study, list);
  }

  seriesDs(uid) {
    return this.seriesList.find((ds) => value(ds, TAG.SeriesInstanceUID) === uid);
  }

  firstImageSeries() {
    const image = this.seriesList.find((ds) => !NON_IMAGE_MODALITIES.has(text(ds, TAG.Modality)));
    return value(image ?? this.seriesList[0], TAG.SeriesInstanceUID);
  }

  // -- panes --------------------------------------------------------------------------------------------------------
  addPane(role, label) {
    const pane = new Pane(this.panesEl, {
      role,
      label,
      onActivate: (p) => this.setActive(p),
      onIndex: (p) => this.onIndex(p),
      onWindow: (p) => this.onWindow(p),
      onInstance: (p) => this.onInstance(p),
    });
    pane.setTool(this.tool);
    pane.format = this.format;
    this.panes.push(pane);
    return pane;
  }

  closeExtraPanes() {
    for (const pane of this.panes.splice(1)) pane.destroy();
    this.panes[0]?.setLabel("");
    if (this.panes[0]) this.setActive(this.panes[0]);
  }

  setActive(pane) {
    this.active = pane;
    for (const p of this.panes) p.el.classList.toggle("active", p === pane && this.panes.length > 1);
    this.syncControls();
    this.onInstance(pane);
  }

  async selectSeries(uid) {
    this.stopCine();
    this.closeExtraPanes();
    if (!this.seriesDs(uid)) await this.loadSeriesList(); // e.g. a series derived since the study was opened
    const ds = this.seriesDs(uid);
    if (!ds) throw new Error(`series ${uid} is not in this study`);
    const pane = this.panes[0] ?? this.addPane("image");
    this.mainSeries = uid;
    this.strip.select(uid);
    this.srPanel.setSeries(uid);
    history.replaceState(null, "", `#/viewer/${this.study}/${uid}`);
    pane.index = 0;
    pane.window = null;
    pane.zoom = 1;
    pane.panX = pane.panY = 0;
    pane.enhance = this.enhancePanel.value();
    pane.compare = this.enhancePanel.compare;
    this.setActive(pane);
    await pane.open(this.study, ds, this.studyDs);
    this.syncControls();
  }

  /** A finished SR job: its derived series and uncertainty map beside the original, scrolling together. */
  async openSrResult(job) {
    const derived = job.result?.series ?? {};
    if (!derived.sr) throw new Error(`job ${job.id} has no derived series`);
    if (job.series !== this.mainSeries) await this.selectSeries(job.series);
    await this.loadSeriesList();
    this.strip.select(this.mainSeries);
    this.closeExtraPanes();
    const original = this.panes[0];
    original.setLabel("Original");
    const sr = this.addPane("image", `Super-resolved ×${job.factor} (${job.method})`);
    const unc = derived.unc ? this.addPane("uncertainty", "Uncertainty") : null;
    sr.window = original.window;
    this.$("#sync").checked = true;
    history.replaceState(null, "", `#/viewer/${this.study}/${this.mainSeries}?job=${job.id}`);
    const opening = [sr.open(this.study, this.seriesDs(derived.sr), this.studyDs)];
    if (unc) opening.push(unc.open(this.study, this.seriesDs(derived.unc), this.studyDs));
    for (const p of [sr, unc].filter(Boolean)) p.index = original.index;
    await Promise.all(opening);
    this.setActive(original);
  }

  onIndex(pane) {
    if (this.$("#sync").checked && !this.syncing) {
      this.syncing = true; // same slice index in every pane
      for (const p of this.panes) if (p !== pane) p.setIndex(pane.index);
      this.syncing = false;
    }
    if (pane === this.active) this.syncSlider();
  }

  onWindow(pane) {
    // The original and its super-resolved series share units (HU stay HU): a window applies to both.
    for (const p of this.panes) {
      if (p !== pane && p.role === "image" && pane.role === "image") p.setWindow(pane.window);
    }
    this.$("#preset").value = "custom";
  }

  onInstance(pane) {
    if (pane !== this.active || this.panel !== "tags" || !pane.item) return;
    this.tags.show(pane.study, pane.series, pane.item.sop);
  }

  applyEnhance(enhance, compare) {
    const pane = this.active;
    if (!pane) return;
    pane.enhance = enhance;
    pane.compare = compare;
    pane.update();
  }

  // -- toolbar ------------------------------------------------------------------------------------------------------
  bindToolbar() {
    for (const button of this.root.querySelectorAll("[data-tool]")) {
      button.addEventListener("click", () => this.setTool(button.dataset.tool));
    }
    this.$("#preset").addEventListener("change", (e) => this.applyPreset(e.target.value));
    this.$("#invert").addEventListener("click", () => this.toggleInvert());
    this.$("#reset").addEventListener("click", () => this.reset());
    this.$("#cine").addEventListener("click", () => this.toggleCine());
    this.$("#fps").addEventListener("change", () => {
      if (this.active?.playing) this.startCine();
    });
    this.$("#format").addEventListener("change", (e) => {
      this.format = e.target.value;
      for (const p of this.panes) p.setFormat(this.format);
    });
    this.$("#strip-position").addEventListener("change", (e) => this.setStripPosition(e.target.value, true));
    for (const button of this.root.querySelectorAll("[data-panel]")) {
      button.addEventListener("click", () => this.togglePanel(button.dataset.panel));
    }
    this.$("#slice").addEventListener("input", (e) => this.active?.setIndex(Number(e.target.value)));
  }

  setTool(tool) {
    this.tool = tool;
    for (const b of this.root.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
    for (const p of this.panes) p.setTool(tool);
  }

  applyPreset(preset) {
    const [center, width] = (preset || "").split(",").map(Number);
    const window = preset && preset !== "custom" ? { center, width } : null;
    if (preset === "custom") return;
    const targets = this.active?.role === "image" ? this.panes.filter((p) => p.role === "image") : [this.active];
    for (const p of targets) p?.setWindow(window);
    this.$("#preset").value = preset;
  }

  toggleInvert() {
    const on = !this.active?.invert;
    for (const p of this.panes) p.setInvert(on);
    this.$("#invert").setAttribute("aria-pressed", String(on));
  }

  reset() {
    for (const p of this.panes) {
      p.invert = false;
      p.resetView();
      p.setWindow(null);
    }
    this.$("#invert").setAttribute("aria-pressed", "false");
    this.$("#preset").value = "";
  }

  toggleCine() {
    if (this.active?.playing) this.stopCine();
    else this.startCine();
  }

  startCine() {
    const pane = this.active;
    if (!pane || pane.count < 2) return;
    const fps = Math.max(1, Math.min(60, Number(this.$("#fps").value) || 10));
    pane.playCine(fps);
    this.$("#cine").setAttribute("aria-pressed", "true");
    this.$("#cine").textContent = "❚❚ Pause";
  }

  stopCine() {
    for (const p of this.panes) p.stopCine();
    this.$("#cine").setAttribute("aria-pressed", "false");
    this.$("#cine").textContent = "▶ Cine";
  }

  setStripPosition(position, save = false) {
    const where = POSITIONS.includes(position) ? position : "bottom";
    for (const p of POSITIONS) this.root.classList.toggle(`strip-${p}`, p === where);
    this.$("#strip-position").value = where;
    if (save) savePosition(where);
  }

  togglePanel(name) {
    if (this.panel === name) this.closePanel();
    else this.openPanel(name);
  }

  openPanel(name) {
    if (this.root.querySelector(`[data-panel="${name}"]`)?.hidden) return; // the principal may not (data-can)
    this.panel = name;
    this.$("#side-panel").hidden = false;
    for (const el of this.root.querySelectorAll("[data-panel-body]")) el.hidden = el.dataset.panelBody !== name;
    for (const b of this.root.querySelectorAll("[data-panel]")) b.setAttribute("aria-pressed", String(b.dataset.panel === name));
    if (name === "tags" && this.active) this.onInstance(this.active);
  }

  closePanel() {
    this.panel = null;
    this.$("#side-panel").hidden = true;
    for (const b of this.root.querySelectorAll("[data-panel]")) b.setAttribute("aria-pressed", "false");
  }

  syncControls() {
    this.syncSlider();
    const pane = this.active;
    if (!pane) return;
    this.$("#invert").setAttribute("aria-pressed", String(pane.invert));
  }

  syncSlider() {
    const pane = this.active;
    const slider = this.$("#slice");
    slider.max = String(Math.max(0, (pane?.count ?? 1) - 1));
    slider.value = String(pane?.index ?? 0);
    this.$("#slice-label").textContent = pane?.count ? `${pane.index + 1} / ${pane.count}` : "";
  }

  // -- keyboard (see the help popover in index.html) --------------------------------------------------------------
  onKey(event) {
    const pane = this.active;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const steps = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };
    if (key in steps) pane?.step(steps[key]);
    else if (key === "Home") pane?.setIndex(0);
    else if (key === "End") pane?.setIndex(pane.count - 1);
    else if (key === " ") this.toggleCine();
    else if (key === "i") this.toggleInvert();
    else if (key === "r") this.reset();
    else if (key === "w") this.setTool("window");
    else if (key === "p") this.setTool("pan");
    else if (key === "z") this.setTool("zoom");
    else if (key in PRESET_KEYS) this.applyPreset(PRESET_KEYS[key]);
    else if (key === "[" || key === "]") {
      const next = this.strip.neighbour(key === "[" ? -1 : 1);
      if (next && next !== this.mainSeries) this.selectSeries(next).catch((e) => showError(e));
    } else if (key === "e") this.togglePanel("enhance");
    else if (key === "s") this.togglePanel("sr");
    else if (key === "t") this.togglePanel("tags");
    else if (key === "c") this.enhancePanel.cycleCompare();
    else if (key === "n" && this.panes.length > 1) {
      this.setActive(this.panes[(this.panes.indexOf(pane) + 1) % this.panes.length]);
    } else if (key === "/" && this.panel === "tags") this.tags.focusFilter();
    else if (key === "Escape" && this.panel) this.closePanel();
    else return false;
    return true;
  }
}
