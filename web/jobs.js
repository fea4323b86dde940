// The Jobs page: every super-resolution job of the node (GET /api/sr/jobs), refreshed while it is shown, with
// Cancel for running ones and Open for finished ones (the original beside its derived series).

import { getJSON, sendJSON } from "./api.js";
import { showError } from "./toast.js";
import { progressBar } from "./widgets.js";

const REFRESH_MS = 2000;

export class JobsView {
  constructor(root) {
    this.root = root;
    this.body = root.querySelector("#jobs-table tbody");
    this.body.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (button) this.act(button.dataset.action, button.dataset.job, button.dataset.study, button.dataset.series);
    });
  }

  enter() {
    this.active = true;
    return this.refresh();
  }

  leave() {
    this.active = false;
    clearTimeout(this.timer);
  }

  async refresh() {
    clearTimeout(this.timer);
    try {
      this.render(await getJSON("api/sr/jobs?limit=200"));
    } catch (err) {
      showError(err, "Jobs");
    }
    if (this.active) this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
  }

  render(jobs) {
    this.root.querySelector("#jobs-empty").hidden = jobs.length > 0;
    this.body.replaceChildren();
    for (const job of jobs) {
      const tr = this.body.insertRow();
      tr.dataset.job = job.id;
      tr.insertCell().textContent = `#${job.id}`;
      const series = tr.insertCell();
      series.textContent = `…${job.series.slice(-16)}`;
      series.title = job.series;
      tr.insertCell().textContent = `${job.method} ×${job.factor}`;
      const status = tr.insertCell();
      status.className = `status-${job.status}`;
      status.textContent = job.status + (job.error ? `: ${job.error}` : "");
      const progress = tr.insertCell();
      progress.append(progressBar(job.status === "done" ? 1 : job.progress ?? 0, job.status === "done"));
      if (job.stage && (job.status === "running" || job.status === "queued")) progress.append(job.stage);
      tr.insertCell().textContent = (job.created_at ?? "").replace("T", " ").slice(0, 19);
      const actions = tr.insertCell();
      if (job.status === "queued" || job.status === "running") actions.append(this.button("Cancel", "cancel", job));
      if (job.status === "done") actions.append(this.button("Open", "open", job));
    }
  }

  button(label, action, job) {
    const b = Object.assign(document.createElement("button"), { type: "button", textContent: label });
    Object.assign(b.dataset, { action, job: job.id, study: job.study, series: job.series });
    return b;
  }

  async act(action, id, study, series) {
    if (action === "open") {
      location.hash = `#/viewer/${study}/${series}?job=${id}`;
      return;
    }
    try {
      await sendJSON(`api/sr/jobs/${id}`, "DELETE");
    } catch (err) {
      showError(err, `Cancelling job ${id}`);
    }
    this.refresh();
  }
}
