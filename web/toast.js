// Messages for the user: errors never stay in the console only. Every caught error ends up in showError().

const host = () => document.getElementById("toasts");
const recent = new Map(); // message -> time shown, so a failing loop does not pile up identical toasts

export function toast(message, { kind = "info", timeout = 5000 } = {}) {
  const now = performance.now();
  if (now - (recent.get(message) ?? -1e9) < 2000) return null;
  recent.set(message, now);
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.setAttribute("role", kind === "error" ? "alert" : "status");
  const text = document.createElement("p");
  text.textContent = message;
  const close = document.createElement("button");
  close.type = "button";
  close.textContent = "×";
  close.title = "Dismiss";
  close.addEventListener("click", () => el.remove());
  el.append(text, close);
  host().append(el);
  while (host().children.length > 5) host().firstElementChild.remove();
  if (timeout) setTimeout(() => el.remove(), timeout);
  return el;
}

/** An error as a toast; `context` says what was being done ("Search", "Opening series"...). */
export function showError(err, context = "") {
  if (err?.name === "AbortError") return;
  const message = err?.message ?? String(err);
  toast(context ? `${context}: ${message}` : message, { kind: "error", timeout: 15000 });
}

/** Last resort: uncaught errors and rejected promises also become toasts instead of a silent console line. */
export function installGlobalHandlers() {
  window.addEventListener("error", (event) => showError(event.error ?? event.message, "Unexpected error"));
  window.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    showError(event.reason, "Unexpected error");
  });
}
