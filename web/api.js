// REST calls to the reenact server.  Errors become ApiError with a message fit for people.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function failure(response) {
  let detail = response.statusText;
  let code = "http";
  try {
    const body = await response.json();
    code = body.error ?? code;
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    // not JSON: keep the status text
  }
  const retry = response.headers.get("Retry-After");
  return new ApiError(response.status, code, detail, retry === null ? null : Number(retry));
}

export async function listAvatars() {
  const response = await fetch("/v1/avatars");
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** Create a session from a built-in avatar name or an uploaded File; mode "keypoints" takes
 *  neither (the server sends back your own face, rebuilt from its keypoints). */
export async function createSession({ avatar = null, photo = null, size = 256, fps = 30,
                                      mode = "avatar", apiKey = null }) {
  const form = new FormData();
  if (mode === "avatar" && photo) form.append("photo", photo);
  else if (mode === "avatar" && avatar) form.append("avatar", avatar);
  form.append("size", String(size));
  form.append("fps", String(fps));
  form.append("mode", mode);
  // Servers with API keys need one here; in local/dev mode none is sent.
  const headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  const response = await fetch("/v1/sessions", { method: "POST", body: form, headers });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** Send a complete SDP offer WHIP-style; returns the answer SDP. */
export async function sendOffer(session, sdp) {
  const response = await fetch(session.links.offer, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${session.token}` },
    body: sdp,
  });
  if (!response.ok) throw await failure(response);
  return response.text();
}

export async function getSession(session) {
  const response = await fetch(session.links.session, {
    headers: { Authorization: `Bearer ${session.token}` },
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** End a session; keepalive lets it run while the page unloads. */
export function endSession(session) {
  return fetch(session.links.session, {
    method: "DELETE",
    headers: { Authorization: `Bearer ${session.token}` },
    keepalive: true,
  }).catch(() => undefined);
}
