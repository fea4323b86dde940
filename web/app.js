// Entry point: the header, the hash router (#/studies, #/viewer/{study}[/{series}][?job=N], #/upload, #/jobs),
// global keyboard shortcuts, and "drop files anywhere" for uploads. Each view is a module with enter()/leave().
// With http.auth = "on" and no session, /api/status answers 401: the sign-in page shows instead of any view, and
// the views start once signed in; what the principal may not do (/api/status's can) is hidden ([data-can]).

import { HttpError, nodeStatus, signIn, signOut, whoAmI } from "./api.js";
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
let signedIn = false; // the views run only once /api/status answered (a session, or a node without sign-in)
let can = null; // /api/status's can; null when the node could not say (then nothing is hidden, as before)
const allowed = (scope) => can === null || can[scope] === true;

/** "#/viewer/1.2.3/4.5.6?job=7" → {name: "viewer", args: ["1.2.3", "4.5.6"], query: URLSearchParams} */
function parseHash() {
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...args] = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: views[name] ? name : "studies", args, query: new URLSearchParams(search) };
}

async function route() {
  if (!signedIn) return;
  const { name, args, query } = parseHash();
  if (name === "upload" && !allowed("write")) {
    location.hash = "#/studies"; // the principal may not upload
    return;
  }
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

function writeStatus(status) {
  document.getElementById("node-name").textContent = status.ae_title;
  document.title = `dcmnode · ${status.ae_title}`;
  const c = status.counts ?? {};
  document.getElementById("node-counts").textContent =
    `${c.patients ?? 0} patients · ${c.studies ?? 0} studies · ${c.series ?? 0} series · ${c.instances ?? 0} instances`;
}

async function showNodeStatus() {
  try {
    writeStatus(await nodeStatus(true));
  } catch (err) {
    showError(err, "Node status");
  }
}

/** Hide what the principal may not use: every element marked data-can="scope" (Upload, Delete, Super-res...). */
function applyCan(flags) {
  can = flags;
  for (const el of document.querySelectorAll("[data-can]")) el.hidden = !allowed(el.dataset.can);
}

/** The signed-in user's name and the Sign out button in the header (nothing for a node without sign-in). */
async function showWho() {
  const who = document.getElementById("who");
  try {
    const me = await whoAmI();
    document.getElementById("who-name").textContent = me.name;
    who.hidden = me.kind === "anonymous";
  } catch {
    who.hidden = true;
  }
}

function showSignIn() {
  signedIn = false;
  for (const v of Object.values(views)) v.root.hidden = true;
  document.getElementById("main-nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("view-signin").hidden = false;
  document.querySelector("#signin-form input[name=name]").focus();
}

/** Ask the node who we are; then the views, or the sign-in page when nobody is signed in. */
async function start() {
  let status = null;
  try {
    status = await nodeStatus(true);
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) {
      showSignIn();
      return;
    }
    showError(err, "Node status"); // the views show their own errors, as before
  }
  signedIn = true;
  document.getElementById("view-signin").hidden = true;
  document.getElementById("main-nav").hidden = false;
  applyCan(status?.can ?? null);
  if (status) writeStatus(status);
  await showWho();
  route();
}

document.getElementById("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const error = document.getElementById("signin-error");
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await signIn(form.elements.name.value, form.elements.password.value);
    error.hidden = true;
    form.reset();
    await start();
  } catch (err) {
    error.textContent = err instanceof HttpError ? err.reason : err.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await signOut();
  } catch (err) {
    showError(err, "Sign out");
    return;
  }
  location.reload(); // the views forget what the user saw; the node answers 401, the sign-in page shows
});

// A session that ended meanwhile (expired, signed out elsewhere, user removed): back to the sign-in page.
document.addEventListener("dcmnode:unauthorized", () => {
  if (signedIn) location.reload();
});

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
  if (!signedIn || !allowed("write")) {
    showError(new Error("this user may not upload (no write scope)"), "Upload");
    return;
  }
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
start();
