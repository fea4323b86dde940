// Entry point: the header, the hash router (#/studies, #/viewer/{study}[/{series}][?job=N], #/upload, #/jobs),
// global keyboard shortcuts, and "drop files anywhere" for uploads. Each view is a module with enter()/leave().

import { nodeStatus } from "./api.js";
import { JobsView } from "./jobs.js";
import { StudiesView } from "./studies.js";
import { installGlobalHandlers, showError } from "./toast.js";
import { UploadView } from "./upload.js";
import { ViewerView } from "./viewer.js";

installGlobalHandlers();

const views = {
  studies: new StudiesView(document.getElementById("view-studies")),
  viewer: new ViewerView(document.getElementById("view-viewer")),
  upload: new UploadView(document.getElementById("view-upload")),
  jobs: new JobsView(document.getElementById("view-jobs")),
};
let current = null;

/** "#/viewer/1.2.3/4.5.6?job=7" → {name: "viewer", args: ["1.2.3", "4.5.6"], query: URLSearchParams} */
function parseHash() {
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...args] = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: views[name] ? name : "studies", args, query: new URLSearchParams(search) };
}

async function route() {
  const { name, args, query } = parseHash();
  const view = views[name];
  if (current && current !== view) current.leave?.();
  for (const [key, v] of Object.entries(views)) v.root.hidden = key !== name;
  for (const link of document.querySelectorAll("[data-nav]")) {
    const here = link.dataset.nav === name || (name === "viewer" && link.dataset.nav === "studies");
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = view;
  // Keys go to the view shown: focus left in a hidden view (the study row just clicked) would keep them.
  if (document.activeElement instanceof HTMLElement && !view.root.contains(document.activeElement)) {
    document.activeElement.blur();
  }
  try {
    await view.enter(args, query);
  } catch (err) {
    showError(err, `Opening ${name}`);
  }
}

async function showNodeStatus() {
  try {
    const status = await nodeStatus(true);
    document.getElementById("node-name").textContent = status.ae_title;
    document.title = `dcmnode · ${status.ae_title}`;
    const c = status.counts ?? {};
    document.getElementById("node-counts").textContent =
      `${c.patients ?? 0} patients · ${c.studies ?? 0} studies · ${c.series ?? 0} series · ${c.instances ?? 0} instances`;
  } catch (err) {
    showError(err, "Node status");
  }
}

// -- keyboard: "?" opens the help, "/" focuses a search box; the rest goes to the current view --------------------
function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const help = document.getElementById("help");
  if (event.key === "?" && !typing(event.target)) {
    help.togglePopover();
    event.preventDefault();
    return;
  }
  if (typing(event.target) && event.key !== "Escape") return;
  // Space and Enter on a focused button or link press it; they must not also toggle cine.
  if ((event.key === " " || event.key === "Enter") && event.target.closest?.("button, a, [role=option]")) return;
  if (current?.onKey?.(event)) event.preventDefault();
});

// -- drop files anywhere: the overlay shows while files are dragged over the page; the upload view takes them ------
const overlay = document.getElementById("drop-overlay");
let dragDepth = 0;
const carriesFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
document.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  overlay.hidden = false;
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) overlay.hidden = true;
});
document.addEventListener("dragover", (event) => {
  if (carriesFiles(event)) event.preventDefault(); // allows the drop
});
document.addEventListener("drop", (event) => {
  dragDepth = 0;
  overlay.hidden = true;
  if (!carriesFiles(event)) return;
  event.preventDefault();
  const entries = views.upload.entriesOf(event.dataTransfer); // must be read before any await
  location.hash = "#/upload";
  views.upload.startFromEntries(entries);
});

for (const change of ["dcmnode:stored", "dcmnode:deleted"]) {
  document.addEventListener(change, () => {
    views.studies.loaded = false; // searched again when shown
    showNodeStatus();
  });
}
window.addEventListener("hashchange", route);
window.dcmnodeViews = views; // for debugging from the console and for tests
showNodeStatus();
route();
