// Enhancement toggles: the node's enhance= extension of /rendered (imaging/enhance.py), one toggle per operator
// with its parameters, combined in the order listed here, plus the before/after comparison mode.

import { getJSON } from "./api.js";
import { showError } from "./toast.js";

// The operators, their stage and their parameters' names, defaults, limits and steps are the node's
// (GET api/enhance: imaging/enhance.py's table), fetched once. What only the panel decides is here: its order (the
// order toggles combine in), the labels, the part of a number's range its slider covers (the number box takes the
// whole range), and how many leading arguments it offers (zoom: the factor; Lanczos, as the label says). An
// operator the node has and this list lacks is shown last, under its own name.
const PANEL = [
  { op: "clahe", label: "Density enhancement (CLAHE)", sliders: { clip: [0.001, 0.1], tiles: [2, 32] } },
  { op: "density", label: "Density differentiation (multi-scale)" },
  { op: "zoom", label: "High resolution (×, Lanczos)", offers: 1 },
  { op: "contrast", label: "Contrast boost", sliders: { factor: [0.5, 4] } },
  { op: "edges", label: "Edges (Canny)", sliders: { sigma: [0.5, 8] } },
  { op: "segment", label: "Segmentation overlay", sliders: { min_size: [0, 4096] } },
  { op: "equalize", label: "Histogram equalisation" },
  { op: "gamma", label: "Gamma", sliders: { gamma: [0.2, 3] } },
  { op: "smooth", label: "Smooth (Gaussian, before the window)", sliders: { sigma: [0.1, 6] } },
  { op: "unsharp", label: "Unsharp mask", sliders: { radius: [0.3, 10], amount: [0, 4] } },
  { op: "denoise", label: "Denoise" },
];

/** The panel's operators: the node's table (`served`) in the panel's order, with its labels and sliders. */
export function panelOperators(served) {
  const rank = (name) => {
    const i = PANEL.findIndex((o) => o.op === name);
    return i < 0 ? PANEL.length : i;
  };
  return [...served]
    .sort((a, b) => rank(a.name) - rank(b.name))
    .map((operator) => {
      const ui = PANEL.find((o) => o.op === operator.name) ?? { label: operator.name };
      const params = operator.params.slice(0, ui.offers ?? operator.params.length);
      return { op: operator.name, label: ui.label, stage: operator.stage, params: params.map((p) => control(p, ui)) };
    });
}

function control(param, ui) {
  const name = param.name.replaceAll("_", " ");
  if (param.choices) return { name, options: param.choices, value: param.default };
  const slider = ui.sliders?.[param.name];
  const clamp = (x) => Math.max(param.min, Math.min(param.max, x));
  return {
    name,
    min: param.min,
    max: param.max,
    step: param.step,
    value: param.default,
    slider: slider && [clamp(slider[0]), clamp(slider[1])],
  };
}

const COMPARE_MODES = ["off", "split", "side"];

export class EnhancePanel {
  /** `onChange(enhance, compare)` gets the enhance= text ("" for none) and the comparison mode. */
  constructor(el, onChange) {
    this.el = el;
    this.onChange = onChange;
    this.operators = [];
    this.state = new Map();
    this.compare = "off";
    this.build();
    this.ready = this.load();
  }

  /** Ask the node for its operators once, and add a row for each. */
  async load() {
    try {
      this.operators = panelOperators(await getJSON("api/enhance"));
    } catch (err) {
      const note = Object.assign(document.createElement("p"), { className: "muted" });
      note.textContent = "The node did not list its enhancement operators.";
      this.el.append(note);
      showError(err, "Enhancement operators");
      return;
    }
    for (const spec of this.operators) {
      this.state.set(spec.op, { on: false, args: spec.params.map((p) => p.value) });
      this.el.append(this.operatorRow(spec));
    }
  }

  build() {
    this.el.innerHTML = `<h2>Enhancement</h2>
      <div class="row">
        <label>Compare
          <select data-compare title="Before/after comparison (C)">
            <option value="off">off</option><option value="split">split (drag the divider)</option>
            <option value="side">side by side</option>
          </select></label>
        <button type="button" data-clear>Clear all</button>
      </div>
      <p class="muted">Rendered by the node; toggles combine in this order.</p>`;
    this.el.querySelector("[data-compare]").addEventListener("change", (e) => this.setCompare(e.target.value));
    this.el.querySelector("[data-clear]").addEventListener("click", () => this.clear());
  }

  operatorRow(spec) {
    const state = this.state.get(spec.op);
    const row = document.createElement("div");
    row.className = "op off";
    row.dataset.op = spec.op;
    row.title = `Runs ${spec.stage} the window`;
    const toggle = document.createElement("label");
    const checkbox = Object.assign(document.createElement("input"), { type: "checkbox" });
    checkbox.dataset.toggle = spec.op;
    toggle.append(checkbox, " ", Object.assign(document.createElement("span"), { textContent: spec.label }));
    checkbox.addEventListener("change", () => {
      state.on = checkbox.checked;
      row.classList.toggle("off", !state.on);
      this.changed(0);
    });
    row.append(toggle);
    if (!spec.params.length) return row;
    const params = document.createElement("div");
    params.className = "params";
    spec.params.forEach((p, i) => {
      const label = document.createElement("label");
      label.textContent = p.name;
      params.append(label);
      if (p.options) {
        const select = document.createElement("select");
        select.dataset.param = `${spec.op}.${i}`;
        for (const o of p.options) select.append(new Option(o, o, o === p.value, o === p.value));
        select.addEventListener("change", () => {
          state.args[i] = select.value;
          if (state.on) this.changed(0);
        });
        params.append(select);
        return;
      }
      const [lo, hi] = p.slider ?? [p.min, p.max];
      const range = Object.assign(document.createElement("input"), { type: "range", min: lo, max: hi, step: p.step });
      const box = Object.assign(document.createElement("input"), { type: "number", min: p.min, max: p.max, step: p.step });
      range.value = box.value = p.value;
      range.dataset.param = box.dataset.param = `${spec.op}.${i}`;
      range.setAttribute("aria-label", `${spec.label}: ${p.name}`);
      box.setAttribute("aria-label", `${spec.label}: ${p.name}`);
      const set = (v, from) => {
        const x = Number(v);
        if (!Number.isFinite(x) || x < p.min || x > p.max) return; // the number box shows the browser's hint
        state.args[i] = x;
        if (from !== range) range.value = x;
        if (from !== box) box.value = x;
        if (state.on) this.changed(200); // sliders move continuously: ask the server once they pause
      };
      range.addEventListener("input", () => set(range.value, range));
      box.addEventListener("change", () => set(box.value, box));
      params.append(range, box);
    });
    row.append(params);
    return row;
  }

  /** The enhance= text: "clahe:0.01:8,edges:1.5:overlay". */
  value() {
    const parts = [];
    for (const spec of this.operators) {
      const state = this.state.get(spec.op);
      if (state.on) parts.push([spec.op, ...state.args.map(String)].join(":"));
    }
    return parts.join(",");
  }

  changed(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.onChange(this.value(), this.compare), delay);
  }

  setCompare(mode) {
    this.compare = COMPARE_MODES.includes(mode) ? mode : "off";
    this.el.querySelector("[data-compare]").value = this.compare;
    this.changed(0);
  }

  cycleCompare() {
    this.setCompare(COMPARE_MODES[(COMPARE_MODES.indexOf(this.compare) + 1) % COMPARE_MODES.length]);
  }

  clear() {
    for (const [op, state] of this.state) {
      state.on = false;
      this.el.querySelector(`[data-toggle="${op}"]`).checked = false;
      this.el.querySelector(`[data-op="${op}"]`).classList.add("off");
    }
    this.changed(0);
  }
}
