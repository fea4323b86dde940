// Enhancement toggles: the node's enhance= extension of /rendered (imaging/enhance.py), one toggle per operator
// with its parameters, combined in the order listed here, plus the before/after comparison mode.

// Parameter limits mirror the server's (it answers 400 with the reason outside them); slider ranges are the useful
// part of each, the number box accepts the whole range.
export const OPERATORS = [
  { op: "clahe", label: "Density enhancement (CLAHE)", params: [
    { name: "clip", min: 0, max: 1, slider: [0.001, 0.1], step: 0.001, value: 0.01 },
    { name: "tiles", min: 2, max: 64, slider: [2, 32], step: 1, value: 8 },
  ] },
  { op: "density", label: "Density differentiation (multi-scale)", params: [
    { name: "strength", min: 0, max: 5, step: 0.1, value: 1 },
  ] },
  { op: "zoom", label: "High resolution (×, Lanczos)", params: [
    { name: "factor", min: 1, max: 4, step: 0.5, value: 2 },
  ] },
  { op: "contrast", label: "Contrast boost", params: [
    { name: "factor", min: 0.1, max: 10, slider: [0.5, 4], step: 0.1, value: 1.5 },
  ] },
  { op: "edges", label: "Edges (Canny)", params: [
    { name: "sigma", min: 0.1, max: 20, slider: [0.5, 8], step: 0.1, value: 1.5 },
    { name: "mode", options: ["overlay", "alone"], value: "overlay" },
  ] },
  { op: "segment", label: "Segmentation overlay", params: [
    { name: "min size", min: 0, max: 1e6, slider: [0, 4096], step: 16, value: 64 },
  ] },
  { op: "equalize", label: "Histogram equalisation", params: [] },
  { op: "gamma", label: "Gamma", params: [{ name: "gamma", min: 0.1, max: 10, slider: [0.2, 3], step: 0.05, value: 0.8 }] },
  { op: "smooth", label: "Smooth (Gaussian, before the window)", params: [
    { name: "sigma", min: 0.1, max: 20, slider: [0.1, 6], step: 0.1, value: 1 },
  ] },
  { op: "unsharp", label: "Unsharp mask", params: [
    { name: "radius", min: 0.1, max: 50, slider: [0.3, 10], step: 0.1, value: 1 },
    { name: "amount", min: 0, max: 10, slider: [0, 4], step: 0.1, value: 0.5 },
  ] },
  { op: "denoise", label: "Denoise", params: [
    { name: "method", options: ["bilateral", "nlm"], value: "bilateral" },
    { name: "strength", min: 0, max: 1, step: 0.01, value: 0.05 },
  ] },
];

const COMPARE_MODES = ["off", "split", "side"];

export class EnhancePanel {
  /** `onChange(enhance, compare)` gets the enhance= text ("" for none) and the comparison mode. */
  constructor(el, onChange) {
    this.el = el;
    this.onChange = onChange;
    this.state = new Map(OPERATORS.map((o) => [o.op, { on: false, args: o.params.map((p) => p.value) }]));
    this.compare = "off";
    this.build();
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
    for (const spec of OPERATORS) this.el.append(this.operatorRow(spec));
  }

  operatorRow(spec) {
    const state = this.state.get(spec.op);
    const row = document.createElement("div");
    row.className = "op off";
    row.dataset.op = spec.op;
    const toggle = document.createElement("label");
    toggle.innerHTML = `<input type="checkbox" data-toggle="${spec.op}"> <span></span>`;
    toggle.querySelector("span").textContent = spec.label;
    const checkbox = toggle.querySelector("input");
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
    for (const spec of OPERATORS) {
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
