// The live feed's logic, apart from the page and the network so it can be tested
// (web/test/feed.test.mjs): one stream open at a time, resumed after the newest id seen
// when it drops, with backoff; a refused token refreshed once before resuming (refused
// again before a stream opens, it backs off like any failure); each
// notification handed on once (set semantics: a replay after a resume adds nothing).

import { Code } from "./grpc-web.js";

/** Backoff of reconnections: doubling from 1 s to 30 s, with jitter. */
export const RECONNECT_MIN_MS = 1000;
export const RECONNECT_MAX_MS = 30000;

export class LiveFeed {
  /**
   * - `open({ after, signal, onOpen, onMessage })`: starts a stream after the id
   *   `after` ("" for everything) and resolves to its final status `{ code, message }`
   *   (rejects on a network failure); `onMessage` takes a notification.
   * - `onNotification(notification)`: a notification not seen before.
   * - `onState(state, text)`: "connecting", "live", "reconnecting" or "off".
   * - `refresh()`: renews the access token; rejects when the session is over.
   * - `random`, `setTimer`, `clearTimer`: injectable for tests.
   */
  constructor({
    open,
    onNotification,
    onState,
    refresh,
    random = Math.random,
    // Wrapped: the timer functions need the global object as `this`.
    setTimer = (fn, ms) => setTimeout(fn, ms),
    clearTimer = (timer) => clearTimeout(timer),
  }) {
    Object.assign(this, { open, onNotification, onState, refresh, random, setTimer, clearTimer });
    this.lastId = "";
    this.seen = new Set();
    this.delay = RECONNECT_MIN_MS;
    this.controller = null;
    this.timer = null;
    this.running = false;
    // A refused token is refreshed once; refused again before a stream opened, the
    // feed backs off instead of rotating refresh tokens in a loop.
    this.refreshed = false;
  }

  /** Records `notification` as seen (e.g. listed before the stream opened). */
  remember(notification) {
    if (!notification.id || this.seen.has(notification.id)) return false;
    this.seen.add(notification.id);
    // Ids are UUIDv7: their text orders as their creation does.
    if (notification.id > this.lastId) this.lastId = notification.id;
    return true;
  }

  start() {
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    this.controller?.abort();
    this.clearTimer(this.timer);
    this.onState("off", "off");
  }

  async connect() {
    this.clearTimer(this.timer);
    if (!this.running) return;
    const controller = new AbortController();
    this.controller = controller;
    this.onState("connecting", "connecting…");
    let status;
    try {
      status = await this.open({
        after: this.lastId,
        signal: controller.signal,
        onOpen: () => {
          this.refreshed = false;
          this.onState("live", "live");
        },
        onMessage: (notification) => {
          if (this.remember(notification)) this.onNotification(notification);
          // A stream that delivers is healthy: the next drop retries soon again.
          this.delay = RECONNECT_MIN_MS;
        },
      });
    } catch (err) {
      status = { code: Code.UNAVAILABLE, message: err.message };
    }
    const stopped = controller.signal.aborted;
    controller.abort(); // whatever is left of this stream
    if (stopped || !this.running) return;
    if (status.code === Code.UNAUTHENTICATED && !this.refreshed) {
      this.refreshed = true;
      try {
        await this.refresh();
      } catch (err) {
        // The session is over (whoever refreshed has signed out), or auth could not be
        // reached: then the backoff below tries again.
        if (!this.running) return;
        status = { code: Code.UNAVAILABLE, message: err.message };
      }
      if (status.code === Code.UNAUTHENTICATED) {
        this.delay = RECONNECT_MIN_MS;
        return this.connect();
      }
    }
    // OK (the server ended the stream, e.g. draining), UNAVAILABLE, a shed call: resume.
    const wait = Math.min(this.delay, RECONNECT_MAX_MS) * (0.5 + this.random() / 2);
    this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
    this.onState("reconnecting", `reconnecting in ${Math.ceil(wait / 1000)} s (${status.message || "stream ended"})`);
    this.timer = this.setTimer(() => this.connect(), wait);
  }
}
