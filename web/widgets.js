// Small page elements shared by the views: the progress bar (SR jobs, the jobs list, uploads).

/** A progress bar at `fraction` (0-1) with its percentage for assistive technology; `done` colours it finished. */
export function progressBar(fraction, done = false) {
  const bar = document.createElement("div");
  bar.className = `progress${done ? " done" : ""}`;
  bar.role = "progressbar";
  const percent = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.title = `${percent} %`;
  const fill = document.createElement("div");
  fill.style.width = `${percent}%`;
  bar.append(fill);
  return bar;
}
