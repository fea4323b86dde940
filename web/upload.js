// Bulk upload: files, nested folders (input webkitdirectory or drag and drop) and ZIP / TAR / TAR.GZ archives
// (expanded by the node), through the node's import API:
//   POST /api/imports {name, expected_files} → job; PUT /api/imports/{id}/files/{path} per file (4 in flight);
//   POST /api/imports/{id}/finish; GET /api/imports/{id}/events (server-sent events, each the job's JSON);
//   DELETE /api/imports/{id} to cancel.

import { HttpError, getJSON, sendJSON } from "./api.js";
import { showError, toast } from "./toast.js";
import { progressBar } from "./widgets.js";

const IN_FLIGHT = 4;
const TERMINAL = new Set(["done", "cancelled", "failed"]);
const MB = 1e6;

export class UploadView {
  constructor(root) {
    this.root = root;
    this.status = root.querySelector("#upload-status");
    this.session = null;
    const zone = root.querySelector("#drop-zone");
    for (const id of ["#file-input", "#folder-input"]) {
      const input = root.querySelector(id);
      input.addEventListener("change", () => {
        const files = [...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
        input.value = ""; // choosing the same files again must fire change again
        this.start(files);
      });
    }
    zone.addEventListener("dragover", () => zone.classList.add("over"));
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", () => zone.classList.remove("over")); // app.js handles every drop on the page
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter") root.querySelector("#file-input").click();
    });
  }

  enter() {}

  /** Entries of a drop; called synchronously in the drop handler (the DataTransfer empties after it). */
  entriesOf(dataTransfer) {
    const items = [...(dataTransfer.items ?? [])].filter((i) => i.kind === "file");
    const entries = items.map((i) => i.webkitGetAsEntry?.() ?? i.getAsFile());
    return entries.length ? entries : [...dataTransfer.files];
  }

  async startFromEntries(entries) {
    try {
      const files = [];
      for (const entry of entries) await collect(entry, files);
      await this.start(files);
    } catch (err) {
      showError(err, "Reading the dropped files");
    }
  }

  async start(files) {
    if (!files.length) {
      toast("Nothing to upload: no file was chosen.", { kind: "error" });
      return;
    }
    if (this.session && !this.session.finished) {
      toast("An upload is running; cancel it or wait for it to end.", { kind: "error" });
      return;
    }
    this.session = new ImportSession(files, this.status, (summary) => this.remember(summary));
    await this.session.run();
  }

  remember(summary) {
    this.root.querySelector("#upload-history-title").hidden = false;
    const li = document.createElement("li");
    li.textContent = summary;
    this.root.querySelector("#upload-history").prepend(li);
  }
}

/** Files under a dropped entry (folders recursively), each with its path relative to what was dropped. */
async function collect(entry, out) {
  if (!entry) return;
  if (entry instanceof File) {
    out.push({ file: entry, path: entry.name });
  } else if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, path: entry.fullPath.replace(/^\/+/, "") });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      // readEntries answers in batches (100 in Chromium) until an empty one.
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await collect(child, out);
    }
  }
}

function encodePath(path) {
  return path.split("/").filter(Boolean).map(encodeURIComponent).join("/");
}

function folderName(files) {
  const first = files[0].path.split("/");
  if (first.length > 1 && files.every((f) => f.path.startsWith(`${first[0]}/`))) return first[0];
  return files.length === 1 ? files[0].file.name : `${files.length} files`;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

class ImportSession {
  constructor(files, el, onEnd) {
    this.files = files;
    this.el = el;
    this.onEnd = onEnd;
    this.name = folderName(files);
    this.totalBytes = files.reduce((n, f) => n + f.file.size, 0);
    this.sentBytes = new Float64Array(files.length); // per file, from XHR upload progress
    this.client = { stored: 0, duplicate: 0, failed: 0, skipped: 0, queued: 0, sent: 0 };
    this.clientFailures = []; // files the server never answered for (network, HTTP errors)
    this.job = null;
    this.requests = new Set();
    this.cancelled = false;
    this.finished = false;
    this.startedAt = performance.now();
    this.ended = new Promise((resolve) => {
      this.resolveEnded = resolve;
    });
  }

  async run() {
    this.el.hidden = false;
    this.render();
    try {
      try {
        this.job = await sendJSON("api/imports", "POST", { name: this.name, expected_files: this.files.length });
      } catch (err) {
        if (err instanceof HttpError && (err.status === 404 || err.status === 405)) {
          throw new Error(
            `this node has no upload API yet (POST /api/imports answered HTTP ${err.status}: ${err.reason}). ` +
              "Use `dcmnode import FOLDER` or STOW-RS meanwhile.",
          );
        }
        throw err;
      }
      this.listen();
      await this.sendAll();
      if (this.cancelled) return;
      this.update(await sendJSON(`api/imports/${this.job.id}/finish`, "POST"));
      this.uploadedAll = true;
      await this.ended;
    } catch (err) {
      this.error = err.message;
      showError(err, "Upload");
      this.finish();
    }
  }

  // -- sending -------------------------------------------------------------------------------------------------
  async sendAll() {
    let next = 0;
    const worker = async () => {
      while (!this.cancelled && next < this.files.length) {
        const n = next++;
        await this.sendOne(n);
      }
    };
    await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, this.files.length) }, worker));
  }

  sendOne(n) {
    const { file, path } = this.files[n];
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      this.requests.add(xhr);
      xhr.open("PUT", `api/imports/${this.job.id}/files/${encodePath(path)}`);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.onprogress = (event) => {
        this.sentBytes[n] = event.loaded;
        this.scheduleRender();
      };
      const done = (failure) => {
        this.requests.delete(xhr);
        this.sentBytes[n] = file.size;
        this.client.sent += 1;
        if (failure && !this.cancelled) {
          this.client.failed += 1;
          this.clientFailures.push({ path, reason: failure });
        }
        this.scheduleRender();
        resolve();
      };
      xhr.onload = () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // not JSON: reported below by status
        }
        if (xhr.status >= 200 && xhr.status < 300) {
          const status = body?.status ?? "stored";
          if (status in this.client) this.client[status] += 1;
          done(null);
        } else {
          done(`HTTP ${xhr.status}: ${body?.error ?? body?.reason ?? (xhr.responseText.slice(0, 200) || xhr.statusText)}`);
        }
      };
      xhr.onerror = () => done("the connection failed while sending");
      xhr.onabort = () => done("cancelled");
      xhr.send(file);
    });
  }

  async cancel() {
    this.cancelled = true;
    for (const xhr of this.requests) xhr.abort();
    try {
      if (this.job) this.update(await sendJSON(`api/imports/${this.job.id}`, "DELETE"));
    } catch (err) {
      showError(err, "Cancelling the upload");
    }
    if (this.job) this.job.state = "cancelled";
    this.finish();
  }

  // -- progress from the node --------------------------------------------------------------------------------------
  listen() {
    this.events = new EventSource(`api/imports/${this.job.id}/events`);
    this.events.onmessage = (event) => {
      try {
        this.update(JSON.parse(event.data));
      } catch (err) {
        showError(err, "Upload progress");
      }
    };
    this.events.onerror = () => {
      // EventSource reconnects by itself; once it gives up, ask for the job's state instead.
      if (this.events.readyState === EventSource.CLOSED && !this.finished) this.poll();
    };
  }

  async poll() {
    while (!this.finished) {
      try {
        this.update(await getJSON(`api/imports/${this.job.id}`));
      } catch (err) {
        showError(err, "Upload progress");
        if (this.uploadedAll) this.finish();
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  update(job) {
    if (!job) return;
    this.job = { ...this.job, ...job };
    if (TERMINAL.has(this.job.state)) this.finish();
    else this.scheduleRender();
  }

  finish() {
    if (this.finished) return;
    this.finished = true;
    this.events?.close();
    this.render();
    const j = this.job ?? {};
    if (this.job) {
      this.onEnd(
        `${this.name}: ${j.state} — ${j.stored ?? 0} stored, ${j.duplicate ?? 0} duplicate, ` +
          `${(j.failed_count ?? 0) + this.clientFailures.length} failed, ${j.skipped_count ?? 0} skipped`,
      );
    }
    this.resolveEnded();
    document.dispatchEvent(new CustomEvent("dcmnode:stored")); // counts and the study list are out of date
  }

  // -- display -----------------------------------------------------------------------------------------------------
  scheduleRender() {
    if (this.renderTimer) return;
    this.renderTimer = setTimeout(() => {
      this.renderTimer = 0;
      this.render();
    }, 100);
  }

  render() {
    const j = this.job ?? {};
    const sent = this.sentBytes.reduce((a, b) => a + b, 0);
    const elapsed = (performance.now() - this.startedAt) / 1000;
    const state = this.error ? "failed" : j.state ?? "starting";
    const done = state === "done";
    // The node counts the files it has received (and archive members once expanded); until it has them all, the
    // files chosen here are the better total.
    const total = Math.max(j.files_total ?? 0, done ? 0 : this.files.length);
    const processed = j.processed ?? 0;
    // The import is done when the node says so; until then, what it has processed of what it knows of.
    const fraction = done ? 1 : Math.min(0.99, total ? processed / total : 0);
    const speed = j.mb_per_s ?? (elapsed > 0 ? sent / MB / elapsed : 0);
    const eta = j.eta_seconds ?? (speed > 0 ? (this.totalBytes - sent) / MB / speed : null);
    const failedCount = (j.failed_count ?? 0) + this.clientFailures.length;
    const stats = [
      ["Uploaded", `${(sent / MB).toFixed(1)} of ${(this.totalBytes / MB).toFixed(1)} MB`],
      ["Files sent", `${this.client.sent} of ${this.files.length}`],
      ["Files total", total],
      ["Processed", processed],
      ["Stored", j.stored ?? this.client.stored],
      ["Duplicate", j.duplicate ?? this.client.duplicate],
      ["Failed", failedCount],
      ["Skipped", j.skipped_count ?? this.client.skipped],
      ["Studies created", j.studies_created ?? 0],
      ["Series created", j.series_created ?? 0],
      ["Speed", `${speed.toFixed(1)} MB/s`],
      ["Time left", this.finished ? "–" : duration(eta)],
      ["Current folder", j.current_folder || "–"],
    ];
    this.el.replaceChildren();
    const title = document.createElement("h2");
    title.textContent = `${this.name} — ${state}`;
    title.dataset.state = state;
    const bar = progressBar(fraction, done);
    bar.classList.add("big");
    bar.dataset.testid = "import-progress";
    const percent = document.createElement("p");
    percent.className = "percent";
    percent.textContent = `${Math.round(fraction * 100)} % · ${processed} of ${total} files processed`;
    const uploadBar = progressBar(this.totalBytes ? sent / this.totalBytes : 1);
    uploadBar.title = "bytes sent";
    const dl = document.createElement("dl");
    dl.className = "stats";
    for (const [name, v] of stats) {
      const div = document.createElement("div");
      div.dataset.stat = name.toLowerCase().replaceAll(" ", "-");
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      div.append(dt, dd);
      dl.append(div);
    }
    this.el.append(title, bar, percent, uploadBar, dl);
    if (this.error) {
      const p = document.createElement("p");
      p.className = "status-failed";
      p.role = "alert";
      p.textContent = `Upload failed: ${this.error}`;
      this.el.append(p);
    }
    if (!this.finished) {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.className = "danger";
      cancel.textContent = "Cancel";
      cancel.addEventListener("click", () => this.cancel());
      this.el.append(cancel);
    } else if (this.job) {
      this.el.append(this.report());
    }
  }

  /** The final report: every failed and skipped file with its reason. */
  report() {
    const j = this.job;
    const div = document.createElement("div");
    div.className = "report";
    const seen = new Set();
    const failed = [...(j.failed ?? []), ...this.clientFailures].filter((f) => !seen.has(f.path) && seen.add(f.path));
    const summary = document.createElement("p");
    summary.textContent =
      `${j.stored ?? 0} stored, ${j.duplicate ?? 0} duplicate, ${failed.length} failed, ` +
      `${(j.skipped ?? []).length} skipped; ${plural(j.studies_created ?? 0, "study", "studies")} and ` +
      `${plural(j.series_created ?? 0, "series", "series")} created.`;
    div.append(summary);
    for (const [label, list, key] of [["Failed", failed, "failed"], ["Skipped", j.skipped ?? [], "skipped"]]) {
      if (!list.length) continue;
      const h = document.createElement("h3");
      h.textContent = `${label} (${list.length})`;
      const table = document.createElement("table");
      table.className = "list";
      table.dataset.report = key;
      const head = table.createTHead().insertRow();
      for (const t of ["File", "Reason"]) head.append(Object.assign(document.createElement("th"), { textContent: t }));
      const body = table.createTBody();
      for (const f of list) {
        const tr = body.insertRow();
        tr.insertCell().textContent = f.path;
        tr.insertCell().textContent = f.reason ?? "";
      }
      div.append(h, table);
    }
    if ((j.stored ?? 0) > 0) {
      div.append(Object.assign(document.createElement("a"), { href: "#/studies", textContent: "Show the studies" }));
    }
    return div;
  }
}

