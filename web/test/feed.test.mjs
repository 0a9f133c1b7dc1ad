// The live feed's resumption logic (web/feed.js) with a scripted stream: what a dropped
// stream, a replay overlapping what was shown, and a refused token make it do.
// Run: node --test web/test/
import { test } from "node:test";
import assert from "node:assert/strict";

import { LiveFeed, RECONNECT_MAX_MS, RECONNECT_MIN_MS } from "../feed.js";
import { Code } from "../grpc-web.js";

const id = (n) => `019ae0c4-7f3a-7c41-9d2e-${String(n).padStart(12, "0")}`;
const note = (n) => ({ id: id(n), title: `#${n}` });

/**
 * A feed whose streams follow `script`: one entry per stream opened, each a list of
 * notification numbers to deliver and the final status (or "throw" for a network error).
 */
function scripted(script, { refresh = async () => {} } = {}) {
  const opened = [];
  const shown = [];
  const states = [];
  const timers = [];
  const feed = new LiveFeed({
    open: async ({ after, onOpen, onMessage }) => {
      const stream = script[opened.length];
      opened.push(after);
      if (!stream) return new Promise(() => {}); // stays open
      // A refusal with nothing delivered is a trailers-only answer: no stream opened.
      const refusedOutright = stream.deliver.length === 0 && stream.end?.code === Code.UNAUTHENTICATED;
      if (!refusedOutright) onOpen();
      for (const n of stream.deliver) onMessage(note(n));
      if (stream.end === "throw") throw new Error("network down");
      return stream.end;
    },
    onNotification: (n) => shown.push(n.title),
    onState: (state) => states.push(state),
    refresh,
    random: () => 1, // no jitter: waits are the backoff itself
    setTimer: (fn, ms) => timers.push({ fn, ms }),
    clearTimer: () => {},
  });
  return { feed, opened, shown, states, timers };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

test("a dropped stream resumes after the newest id seen; a replay shows nothing twice", async () => {
  const { feed, opened, shown, timers } = scripted([
    { deliver: [1, 2], end: { code: Code.UNAVAILABLE, message: "draining" } },
    { deliver: [2, 3], end: "throw" },
  ]);
  feed.remember(note(1)); // listed before the stream opened
  feed.start();
  await settle();
  assert.deepEqual(opened, [id(1)]);
  assert.deepEqual(shown, ["#2"]);
  assert.equal(timers.length, 1);
  assert.equal(timers[0].ms, RECONNECT_MIN_MS);

  timers[0].fn();
  await settle();
  assert.deepEqual(opened, [id(1), id(2)]);
  assert.deepEqual(shown, ["#2", "#3"]);
  // It delivered, so the backoff started over.
  assert.equal(timers[1].ms, RECONNECT_MIN_MS);

  timers[1].fn();
  await settle();
  assert.deepEqual(opened, [id(1), id(2), id(3)]);
});

test("streams that fail before delivering back off, doubling up to the cap", async () => {
  const failing = Array.from({ length: 8 }, () => ({ deliver: [], end: "throw" }));
  const { feed, timers } = scripted(failing);
  feed.start();
  for (let i = 0; i < 7; i++) {
    await settle();
    timers[i].fn();
  }
  await settle();
  const waits = timers.map((t) => t.ms);
  assert.deepEqual(waits.slice(0, 6), [1000, 2000, 4000, 8000, 16000, 30000]);
  assert.ok(waits.every((ms) => ms <= RECONNECT_MAX_MS), `${waits}`);
});

test("a refused token is refreshed once, then the stream resumes at once", async () => {
  let refreshed = 0;
  const { feed, opened, timers } = scripted(
    [
      { deliver: [1], end: { code: Code.UNAUTHENTICATED, message: "expired" } },
      { deliver: [2], end: { code: Code.UNAVAILABLE, message: "" } },
    ],
    { refresh: async () => { refreshed += 1; } },
  );
  feed.start();
  await settle();
  await settle();
  assert.equal(refreshed, 1);
  assert.deepEqual(opened, ["", id(1)]);
  assert.equal(timers.length, 1, "no wait between the refresh and the resumption");
});

test("refused again after a refresh, the feed backs off instead of refreshing in a loop", async () => {
  let refreshed = 0;
  const refused = { deliver: [], end: { code: Code.UNAUTHENTICATED, message: "expired" } };
  const { feed, opened, timers } = scripted([refused, refused, refused], {
    refresh: async () => { refreshed += 1; },
  });
  feed.start();
  for (let i = 0; i < 4; i++) await settle();
  assert.equal(refreshed, 1);
  assert.equal(opened.length, 2);
  assert.equal(timers.length, 1, "the second refusal waits");
  timers[0].fn();
  for (let i = 0; i < 4; i++) await settle();
  assert.equal(refreshed, 1, "no stream opened in between, so no second refresh");
  assert.equal(opened.length, 3);
});

test("a failed refresh ends the feed when the session is over, else backs off", async () => {
  const refused = { deliver: [], end: { code: Code.UNAUTHENTICATED, message: "expired" } };
  const over = scripted([refused], {
    refresh: async () => {
      over.feed.stop(); // the page signs out when auth refuses the refresh token
      throw new Error("session over");
    },
  });
  over.feed.start();
  for (let i = 0; i < 3; i++) await settle();
  assert.equal(over.opened.length, 1);
  assert.equal(over.timers.length, 0);

  const unreachable = scripted([refused], {
    refresh: async () => { throw new Error("auth cannot be reached"); },
  });
  unreachable.feed.start();
  for (let i = 0; i < 3; i++) await settle();
  assert.equal(unreachable.timers.length, 1, "tries again later");
});

test("stop aborts the open stream and schedules nothing", async () => {
  let aborted = false;
  const timers = [];
  const feed = new LiveFeed({
    open: ({ signal }) => new Promise((_, reject) => {
      signal.addEventListener("abort", () => { aborted = true; reject(new Error("aborted")); });
    }),
    onNotification: () => {},
    onState: () => {},
    refresh: async () => {},
    setTimer: (fn, ms) => timers.push(ms),
    clearTimer: () => {},
  });
  feed.start();
  feed.stop();
  await settle();
  assert.equal(aborted, true);
  assert.deepEqual(timers, []);
});
