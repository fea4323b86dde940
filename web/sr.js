// Super-resolution from the viewer: start a job for the series shown (POST /api/sr/jobs), follow it (progress,
// stage, cancel), list the series' earlier jobs, and open a finished job's derived series and uncertainty map
// beside the original (the viewer does the layout).

import { getJSON, sendJSON } from "./api.js";
import { showError, toast } from "./toast.js";
import { progressBar } from "./widgets.js";

const POLL_MS = 1000;
const ACTIVE = new Set(["queued", "running"]);

export class SrPanel {
  /** `openResult(job)` shows the job's derived series beside the original. */
  constructor(el, openResult) {
    this.el = el;
    this.openResult = openResult;
    this.jobs = [];
    this.watching = new Set(); // ids started here: their result opens by itself when they end
    this.el.innerHTML = `<h2>Super-resolution</h2>
      <p class="muted">A new series with 2× or 4× the rows and columns, and its uncertainty map, made by the
        node's worker. Not for primary diagnosis.</p>
      <div class="row">
        <label>Method <select data-method>
          <option value="learned">learned (CNN trained on this series)</option>
          <option value="classical">classical (Lanczos + back-projection)</option></select></label>
        <label>Factor <select data-factor><option>2</option><option>4</option></select></label>
      </div>
      <div class="row"><button type="button" class="primary" data-start>Super-resolve</button></div>
      <h2>Jobs for this series</h2>
      <div data-jobs><p class="muted">None yet.</p></div>`;
    this.list = this.el.querySelector("[data-jobs]");
    this.el.querySelector("[data-start]").addEventListener("click", () => this.start());
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const job = this.jobs.find((j) => String(j.id) === button.dataset.job);
      if (button.dataset.action === "cancel") this.cancel(job);
      else if (button.dataset.action === "open") this.openResult(job);
    });
  }

  /** The series the panel works on (the original series of the active pane). */
  setSeries(series) {
    if (series === this.series) return;
    this.series = series;
    this.jobs = [];
    this.render();
    this.refresh();
  }

  async start() {
    const method = this.el.querySelector("[data-method]").value;
    const factor = Number(this.el.querySelector("[data-factor]").value);
    const button = this.el.querySelector("[data-start]");
    button.disabled = true;
    try {
      const job = await sendJSON("api/sr/jobs", "POST", { series: this.series, factor, method, send_to: null });
      this.watching.add(job.id);
      toast(`Super-resolution job ${job.id} queued (${method}, ×${factor}).`, { kind: "ok" });
      await this.refresh();
    } catch (err) {
      showError(err, "Super-resolution");
    } finally {
      button.disabled = false;
    }
  }

  async cancel(job) {
    try {
      await sendJSON(`api/sr/jobs/${job.id}`, "DELETE");
      await this.refresh();
    } catch (err) {
      showError(err, `Cancelling job ${job.id}`);
    }
  }

  async refresh() {
    clearTimeout(this.timer);
    const series = this.series;
    if (!series) return;
    try {
      const jobs = await getJSON(`api/sr/jobs?series=${encodeURIComponent(series)}`);
      if (series !== this.series) return;
      const before = new Map(this.jobs.map((j) => [j.id, j.status]));
      this.jobs = jobs;
      this.render();
      for (const job of jobs) {
        if (!this.watching.has(job.id) || ACTIVE.has(job.status) || before.get(job.id) === job.status) continue;
        this.watching.delete(job.id);
        if (job.status === "done") this.openResult(job);
        else if (job.status === "failed") showError(new Error(job.error || "no reason given"), `SR job ${job.id} failed`);
      }
    } catch (err) {
      showError(err, "Super-resolution jobs");
    }
    if (this.jobs.some((j) => ACTIVE.has(j.status))) this.timer = setTimeout(() => this.refresh(), POLL_MS);
  }

  render() {
    if (!this.jobs.length) {
      this.list.innerHTML = `<p class="muted">None yet.</p>`;
      return;
    }
    this.list.replaceChildren(...this.jobs.map((job) => jobCard(job)));
  }
}

/** One job as a card: status, stage, progress bar, and Cancel / Open buttons. Shared with the Jobs page. */
export function jobCard(job) {
  const card = document.createElement("div");
  card.className = "job";
  card.dataset.job = job.id;
  card.dataset.status = job.status;
  const head = document.createElement("div");
  const status = document.createElement("span");
  status.className = `status status-${job.status}`;
  status.textContent = job.status;
  head.append(`#${job.id} ${job.method} ×${job.factor} · `, status);
  if (job.stage && ACTIVE.has(job.status)) head.append(` · ${job.stage}`);
  const bar = progressBar(job.status === "done" ? 1 : job.progress ?? 0, job.status === "done");
  card.append(head, bar);
  if (job.error) {
    const error = document.createElement("p");
    error.className = "status-failed";
    error.textContent = job.error;
    card.append(error);
  }
  const actions = document.createElement("div");
  actions.className = "row";
  if (ACTIVE.has(job.status)) actions.append(button("Cancel", "cancel", job.id, "danger"));
  if (job.status === "done" && job.result?.series?.sr) actions.append(button("Open result", "open", job.id, "primary"));
  if (actions.childElementCount) card.append(actions);
  return card;
}

function button(label, action, id, kind) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = kind;
  b.textContent = label;
  b.dataset.action = action;
  b.dataset.job = id;
  return b;
}
