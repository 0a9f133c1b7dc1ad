// The Trellis tour in a browser: sign up, log in, the profile, the notifications list
// (HTTP/JSON, docs/http-json.md) and the live feed (Subscribe over gRPC-Web,
// ./grpc-web.js). No framework, no build step. Everything a server sends is shown with
// textContent, never parsed as HTML.

import { decodeSubscribeResponse, encodeSubscribeRequest, serverStream } from "./grpc-web.js";
import { LiveFeed } from "./feed.js";

const SESSION_KEY = "trellis.session";
const SUBSCRIBE_PATH = "/trellis.notification.v1.NotificationService/Subscribe";

const $ = (id) => document.getElementById(id);

/** Where each service answers, from config.json (`{ "services": { name: port } }`). */
let endpoints = {};

/** The signed-in session: `{ accessToken, refreshToken, userId }`, or null. */
let session = null;

/** The one refresh in flight: refresh tokens rotate, so two at once would revoke the family. */
let refreshing = null;

/** The live feed (./feed.js): Subscribe over gRPC-Web, resumed after the newest id seen. */
let feed = null;

class ApiError extends Error {
  /** `status` is a google.rpc.Status in JSON (AIP-193), or a stand-in for a network error. */
  constructor(status, httpStatus) {
    super(status.message || `HTTP ${httpStatus}`);
    this.httpStatus = httpStatus;
    this.violations = (status.details || [])
      .filter((d) => d["@type"] === "type.googleapis.com/google.rpc.BadRequest")
      .flatMap((d) => d.fieldViolations || []);
  }
}

function base(service) {
  return `${location.protocol}//${location.hostname}:${endpoints[service]}`;
}

/** Calls an HTTP/JSON route; a 401 with a session refreshes once and retries. */
async function api(service, method, path, body, { auth = true, retry = true } = {}) {
  const headers = { "content-type": "application/json" };
  const sentToken = auth ? session?.accessToken : undefined;
  if (sentToken) headers.authorization = `Bearer ${sentToken}`;
  let response;
  try {
    response = await fetch(base(service) + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError({ message: `The ${service} service cannot be reached (${err.message}).` }, 0);
  }
  const text = await response.text();
  let json = {};
  try { json = text ? JSON.parse(text) : {}; } catch { json = { message: text }; }
  if (response.status === 401 && sentToken && retry && session) {
    // Another call may have refreshed meanwhile: then its token is tried, not a refresh.
    if (session.accessToken === sentToken) await refresh();
    return api(service, method, path, body, { auth, retry: false });
  }
  if (!response.ok) throw new ApiError(json, response.status);
  return json;
}

/**
 * Exchanges the refresh token for a new pair, one exchange at a time (refresh tokens
 * rotate: presenting a used one revokes the login). Signs out only when auth refuses the
 * token (400, 401); a network failure or an overloaded service leaves the session as it
 * is. A reply that arrives after the session ended is dropped.
 */
function refresh() {
  if (!refreshing) {
    const current = session;
    refreshing = (async () => {
      try {
        if (!current) throw new ApiError({ message: "You are not logged in." }, 401);
        const reply = await api("auth", "POST", "/v1/tokens:refresh",
          { refreshToken: current.refreshToken }, { auth: false });
        if (session === current) saveSession({ ...current, ...tokensOf(reply) });
      } catch (err) {
        if (session === current && (err.httpStatus === 400 || err.httpStatus === 401)) {
          signOut("Your session has ended: log in again.");
        }
        throw err;
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

function tokensOf(reply) {
  return { accessToken: reply.tokens.accessToken, refreshToken: reply.tokens.refreshToken };
}

function saveSession(value) {
  session = value;
  if (value) sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
  else sessionStorage.removeItem(SESSION_KEY);
}

function showError(err) {
  $("error-message").textContent = err.message;
  const list = $("error-fields");
  list.replaceChildren(...(err.violations || []).map((v) => {
    const item = document.createElement("li");
    item.textContent = `${fieldLabel(v.field)}: ${v.description}`;
    return item;
  }));
  $("error").hidden = false;
}

/** The label of the visible input a violation's field (`display_name`) names, else the field. */
function fieldLabel(field) {
  const name = field.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
  const input = [...document.querySelectorAll(`input[name="${CSS.escape(name)}"]`)]
    .find((element) => element.offsetParent !== null);
  const label = input?.labels?.[0]?.firstChild?.textContent?.trim();
  return label || field;
}

function clearMessages() {
  $("error").hidden = true;
  $("notice").textContent = "";
}

/** Runs a form's action with its errors shown and its button disabled meanwhile. */
function onSubmit(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearMessages();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await action(Object.fromEntries(new FormData(form)));
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  });
}

function formatTime(rfc3339) {
  return rfc3339 ? new Date(rfc3339).toLocaleString() : "";
}

function renderProfile(user) {
  $("profile-name").textContent = user.displayName || "";
  $("profile-email").textContent = user.email || "";
  $("profile-roles").textContent = (user.roles || []).join(", ") || "none";
  $("profile-created").textContent = formatTime(user.createTime);
  $("profile-id").textContent = user.id;
}

/** Shows `notification`, newest first or appended (the listing is newest first). */
function showNotification(notification, { atTop }) {
  const item = document.createElement("li");
  item.dataset.id = notification.id;
  const title = document.createElement("strong");
  title.textContent = notification.title || notification.kind || "Notification";
  const body = document.createElement("p");
  body.textContent = notification.body || "";
  const meta = document.createElement("p");
  meta.className = "meta";
  const time = document.createElement("time");
  time.dateTime = notification.createTime || "";
  time.textContent = formatTime(notification.createTime);
  meta.append(time, notification.readTime ? " · read" : " · unread");
  item.append(title, body, meta);
  const list = $("notifications");
  if (atTop) list.prepend(item);
  else list.append(item);
  $("no-notifications").hidden = true;
}

function setLive(state, text) {
  const status = $("live-status");
  status.dataset.state = state;
  status.textContent = text;
}

/** Opens one Subscribe stream for the feed, with the current access token. */
function openStream({ after, signal, onOpen, onMessage }) {
  return serverStream({
    url: base("notification") + SUBSCRIBE_PATH,
    request: encodeSubscribeRequest({ after }),
    headers: { authorization: `Bearer ${session.accessToken}` },
    signal,
    onOpen,
    onMessage: (bytes) => {
      let notification;
      try {
        ({ notification } = decodeSubscribeResponse(bytes));
      } catch (err) {
        // One message this page cannot read is skipped, not a reason to drop the stream
        // (resuming would replay it and fail again).
        console.warn("skipped a notification the page cannot decode:", err);
        return;
      }
      if (notification) onMessage(notification);
    },
  });
}

async function showSignedIn() {
  $("signed-out").hidden = true;
  $("signed-in").hidden = false;
  const [{ user }, list] = await Promise.all([
    api("user", "GET", `/v1/users/${encodeURIComponent(session.userId)}`),
    api("notification", "GET", "/v1/notifications?pageSize=50"),
  ]);
  renderProfile(user);
  feed = new LiveFeed({
    open: openStream,
    onNotification: (notification) => showNotification(notification, { atTop: true }),
    onState: setLive,
    refresh,
  });
  // Newest first; the feed continues after the newest.
  for (const notification of list.notifications || []) {
    if (feed.remember(notification)) showNotification(notification, { atTop: false });
  }
  feed.start();
}

function signOut(message) {
  feed?.stop();
  feed = null;
  saveSession(null);
  $("notifications").replaceChildren();
  $("no-notifications").hidden = false;
  $("signed-in").hidden = true;
  $("signed-out").hidden = false;
  if (message) $("notice").textContent = message;
}

async function logIn(email, password) {
  const reply = await api("auth", "POST", "/v1/tokens:login", { email, password }, { auth: false });
  saveSession({ ...tokensOf(reply), userId: reply.userId });
  $("login-form").reset();
  await showSignedIn();
}

async function main() {
  const config = await (await fetch("config.json", { cache: "no-store" })).json();
  endpoints = config.services;

  onSubmit($("signup-form"), async ({ email, displayName, password }) => {
    await api("user", "POST", "/v1/users", { email, displayName, password }, { auth: false });
    $("signup-form").reset();
    $("login-email").value = email;
    $("notice").textContent = `Account created for ${email}. Log in below.`;
    $("login-password").focus();
  });
  onSubmit($("login-form"), ({ email, password }) => logIn(email, password));
  $("logout").addEventListener("click", async () => {
    const refreshToken = session?.refreshToken;
    signOut("Logged out.");
    if (refreshToken) {
      try {
        await api("auth", "POST", "/v1/tokens:revoke", { refreshToken }, { auth: false });
      } catch (err) {
        showError(err);
      }
    }
  });

  const saved = sessionStorage.getItem(SESSION_KEY);
  if (saved) {
    session = JSON.parse(saved);
    try {
      await showSignedIn();
    } catch (err) {
      showError(err);
    }
  }
}

main().catch(showError);
