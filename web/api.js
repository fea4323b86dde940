// HTTP helpers: every request of the viewer goes through here, so every failure becomes an HttpError that names
// the status and the server's reason (the node answers errors as JSON {"error": reason, "status": code}).

export const DICOMWEB = "dicom-web"; // relative to the page, so the viewer also works behind a path prefix

export class HttpError extends Error {
  constructor(status, reason, method, url) {
    super(`HTTP ${status}${reason ? `: ${reason}` : ""} (${method} ${shortUrl(url)})`);
    this.name = "HttpError";
    this.status = status;
    this.reason = reason;
  }
}

function shortUrl(url) {
  const text = String(url);
  return text.length > 120 ? `${text.slice(0, 117)}…` : text;
}

/** The server's reason for a failed response: the JSON error field, else the text, else the status text. */
export async function reasonOf(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    return response.statusText;
  }
  try {
    const body = JSON.parse(text);
    const reason = body.error ?? body.reason ?? body.detail;
    if (reason) return typeof reason === "string" ? reason : JSON.stringify(reason);
  } catch {
    // not JSON: use the text itself
  }
  return text.trim().slice(0, 300) || response.statusText;
}

/** fetch() that throws HttpError for any non-2xx answer and a readable Error when the node is unreachable. */
export async function request(url, { method = "GET", headers = {}, body, signal, cache } = {}) {
  let response;
  try {
    response = await fetch(url, { method, headers, body, signal, cache });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`cannot reach the node (${method} ${shortUrl(url)}): ${err.message}`);
  }
  if (response.status === 401) document.dispatchEvent(new CustomEvent("dcmnode:unauthorized"));
  if (!response.ok) throw new HttpError(response.status, await reasonOf(response), method, url);
  return response;
}

export async function getJSON(url, options = {}) {
  const response = await request(url, { ...options, headers: { Accept: "application/json", ...options.headers } });
  return response.status === 204 ? null : response.json();
}

export async function sendJSON(url, method, data) {
  const response = await request(url, {
    method,
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: data === undefined ? undefined : JSON.stringify(data),
  });
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** QIDO-RS: path under /dicom-web, params as an object (arrays become repeated parameters; empty ones dropped). */
export function qido(path, params = {}, options = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null && one !== "") query.append(key, String(one));
    }
  }
  const url = `${DICOMWEB}/${path}${query.size ? `?${query}` : ""}`;
  return getJSON(url, { ...options, headers: { Accept: "application/dicom+json" } });
}

export function seriesPath(study, series) {
  return `${DICOMWEB}/studies/${study}/series/${series}`;
}

export function instancePath(study, series, instance) {
  return `${seriesPath(study, series)}/instances/${instance}`;
}

let statusAnswer = null;

/** GET /api/status, asked once per page load (again with `fresh`, after a change of the counts). */
export function nodeStatus(fresh = false) {
  if (fresh || !statusAnswer) {
    statusAnswer = getJSON("api/status").catch((err) => {
      statusAnswer = null;
      throw err;
    });
  }
  return statusAnswer;
}

/** Whether the node lets this viewer's principal use `scope` (its `can` object: read, write, delete, sr, ...). */
export async function may(scope) {
  try {
    return (await nodeStatus()).can?.[scope] === true;
  } catch {
    return false; // a node that cannot say: offer nothing that needs a right
  }
}

/** Sign in with a local user's name and password (POST /api/session sets the session cookie): {name, scopes, groups}.
 * A wrong name or password throws HttpError 401 (its reason is for the page); no dcmnode:unauthorized event. */
export async function signIn(name, password) {
  let response;
  try {
    response = await fetch("api/session", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ name, password }),
    });
  } catch (err) {
    throw new Error(`cannot reach the node (POST api/session): ${err.message}`);
  }
  if (!response.ok) throw new HttpError(response.status, await reasonOf(response), "POST", "api/session");
  statusAnswer = null;
  return response.json();
}

/** Who is signed in ({name, kind, scopes, groups}; kind "anonymous" when the node has no sign-in). */
export function whoAmI() {
  return getJSON("api/session");
}

/** Sign out: the node forgets the session and clears the cookie. */
export async function signOut() {
  await request("api/session", { method: "DELETE" });
  statusAnswer = null;
}

/** DELETE a study, series or instance (`path` under /dicom-web); tells the page with a dcmnode:deleted event. */
export async function deleteResource(path) {
  await request(`${DICOMWEB}/${path}`, { method: "DELETE" });
  document.dispatchEvent(new CustomEvent("dcmnode:deleted", { detail: { path } }));
}
