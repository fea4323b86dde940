// The De-identify action of a study (PS3.15 Basic Profile and its options): a dialog with the options as check
// boxes, the project, an optional replacement Patient ID / Name and the output (a new study here, or a ZIP), then
// the job's progress (POST /api/deidentify, GET /api/deidentify/{id}) and a link to the result. Values are set with
// textContent and properties only (tests/test_web_lint.py).
import { getJSON, sendJSON } from "./api.js";
import { showError } from "./toast.js";

const OPTIONS = [
  ["retain-safe-private", "Retain safe private attributes"],
  ["retain-uids", "Retain UIDs"],
  ["retain-device-identity", "Retain device identity"],
  ["retain-institution-identity", "Retain institution identity"],
  ["retain-patient-characteristics", "Retain patient characteristics"],
  ["retain-longitudinal-full-dates", "Retain full dates"],
  ["retain-longitudinal-modified-dates", "Retain modified dates (shifted per patient)"],
  ["clean-descriptors", "Clean descriptors"],
  ["clean-structured-content", "Clean structured content"],
  ["clean-graphics", "Clean graphics"],
  ["clean-pixel-data", "Clean pixel data (mask burned-in text)"],
];
const POLL_MS = 500;

let dialog = null;

function element(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  Object.assign(el, props);
  el.append(...children);
  return el;
}

function field(labelText, input) {
  return element("label", { className: "deid-field" }, element("span", { textContent: labelText }), input);
}

function build() {
  const form = element("form", { method: "dialog", className: "deid-form" });
  const options = element("fieldset", {}, element("legend", { textContent: "Options" }));
  for (const [name, label] of OPTIONS) {
    const box = element("input", { type: "checkbox", name: "option", value: name });
    options.append(element("label", { className: "deid-option" }, box, element("span", { textContent: label })));
  }
  const output = element("select", { name: "output" });
  output.append(
    element("option", { value: "store", textContent: "A new study in this node" }),
    element("option", { value: "zip", textContent: "A ZIP archive to download" }),
  );
  const status = element("p", { className: "deid-status", role: "status" });
  const progress = element("progress", { max: 1, value: 0, hidden: true });
  const result = element("a", { className: "deid-result", hidden: true });
  const start = element("button", { type: "submit", textContent: "De-identify", value: "start" });
  const close = element("button", { type: "button", textContent: "Close" });
  form.append(
    element("h2", { textContent: "De-identify study" }),
    element("p", { className: "deid-study" }),
    options,
    field("Project", element("input", { name: "project", required: true, pattern: "[A-Za-z0-9_\\-][A-Za-z0-9_.\\-]{0,63}", value: "default" })),
    field("Patient ID (optional)", element("input", { name: "patient_id", maxLength: 64 })),
    field("Patient name (optional)", element("input", { name: "patient_name", maxLength: 64 })),
    field("Output", output),
    progress,
    status,
    result,
    element("div", { className: "deid-buttons" }, start, close),
  );
  const d = element("dialog", { id: "deid-dialog" }, form);
  close.addEventListener("click", () => d.close());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(d).catch((err) => {
      status.textContent = `Failed: ${err.message}`;
      start.disabled = false;
      showError(err, "De-identify");
    });
  });
  document.body.append(d);
  return d;
}

/** Open the dialog for a study (its row of the study list). */
export function openDeidentify(study) {
  dialog ??= build();
  dialog.dataset.study = study.uid;
  const form = dialog.querySelector("form");
  form.querySelector(".deid-study").textContent = `${study.name || "(no name)"} ${study.description || ""}`.trim();
  form.querySelector(".deid-status").textContent = "";
  form.querySelector(".deid-result").hidden = true;
  form.querySelector("progress").hidden = true;
  form.querySelector("button[type=submit]").disabled = false;
  dialog.showModal();
}

async function run(d) {
  const form = d.querySelector("form");
  const f = form.elements;
  const status = form.querySelector(".deid-status");
  const progress = form.querySelector("progress");
  const result = form.querySelector(".deid-result");
  form.querySelector("button[type=submit]").disabled = true;
  const body = {
    studies: [d.dataset.study],
    options: [...form.querySelectorAll("input[name=option]:checked")].map((box) => box.value),
    project: f.project.value,
    output: f.output.value,
  };
  if (f.patient_id.value.trim()) body.patient_id = f.patient_id.value.trim();
  if (f.patient_name.value.trim()) body.patient_name = f.patient_name.value.trim();
  let job = await sendJSON("/api/deidentify", "POST", body);
  progress.hidden = false;
  while (!["done", "failed", "cancelled"].includes(job.status)) {
    progress.value = job.progress;
    status.textContent = `${job.status}: ${job.counts.done} of ${job.counts.total} images`;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    job = await getJSON(`/api/deidentify/${job.id}`);
  }
  progress.value = job.progress;
  const failed = job.counts.failed ? `, ${job.counts.failed} refused (${job.failures[0]?.reason ?? ""})` : "";
  status.textContent = `${job.status}: ${job.counts.done} of ${job.counts.total} images${failed}`;
  if (job.status !== "done") return;
  if (job.archive) {
    result.href = job.archive;
    result.download = `deidentified-${job.id}.zip`;
    result.textContent = "Download the archive";
  } else {
    const study = job.studies[d.dataset.study];
    result.href = `#/viewer/${encodeURIComponent(study)}`;
    result.textContent = "Open the de-identified study";
    result.addEventListener("click", () => d.close(), { once: true });
  }
  result.hidden = false;
}
