// The labels of the study on screen (per-study access): chips, and for a principal with `write` a small form to add
// one and a × on each chip to remove it. The node checks the names; its reason (400) or a 404 is shown as text here.

import { HttpError, getJSON, may, request } from "./api.js";

const path = (study, label) =>
  `api/studies/${encodeURIComponent(study)}/labels${label === undefined ? "" : `/${encodeURIComponent(label)}`}`;

export class StudyLabels {
  /** `root`: the element holding .label-chips, the form.label-add (data-can="write") and .label-error. */
  constructor(root) {
    this.root = root;
    this.chips = root.querySelector(".label-chips");
    this.form = root.querySelector("form.label-add");
    this.error = root.querySelector(".label-error");
    this.study = null;
    this.canWrite = false;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = this.form.elements.label;
      const label = input.value.trim();
      if (label) this.change("PUT", label).then((ok) => ok && (input.value = ""));
    });
    this.chips.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action=remove-label]");
      if (button) this.change("DELETE", button.dataset.label);
    });
  }

  /** Show the labels of `study` (a new study clears the error and the input). */
  async show(study) {
    this.study = study;
    this.form.elements.label.value = "";
    this.say("");
    this.chips.replaceChildren();
    this.canWrite = await may("write");
    try {
      const answer = await getJSON(path(study));
      if (this.study === study) this.draw(answer.labels);
    } catch (err) {
      if (this.study === study) this.fail(err);
    }
  }

  /** PUT or DELETE one label; the node answers the labels the study then carries. True when it did. */
  async change(method, label) {
    const study = this.study;
    this.say("");
    try {
      const response = await request(path(study, label), { method, headers: { Accept: "application/json" } });
      const answer = await response.json();
      if (this.study === study) this.draw(answer.labels);
      return true;
    } catch (err) {
      if (this.study === study) this.fail(err);
      return false;
    }
  }

  draw(labels) {
    this.chips.replaceChildren(
      ...labels.map((label) => {
        const chip = document.createElement("span");
        chip.className = "label-chip";
        chip.dataset.label = label;
        const name = document.createElement("span");
        name.textContent = label;
        chip.append(name);
        if (this.canWrite) {
          const remove = document.createElement("button");
          remove.type = "button";
          remove.dataset.action = "remove-label";
          remove.dataset.can = "write";
          remove.dataset.label = label;
          remove.textContent = "×";
          remove.title = `Remove the label ${label}`;
          remove.setAttribute("aria-label", `Remove the label ${label}`);
          chip.append(remove);
        }
        return chip;
      }),
    );
    this.root.classList.toggle("empty", labels.length === 0);
  }

  fail(err) {
    if (err?.name === "AbortError") return;
    if (err instanceof HttpError) this.say(`${err.status === 404 ? "Not found" : "Refused"}: ${err.reason}`);
    else this.say(err?.message ?? String(err));
  }

  say(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }
}
