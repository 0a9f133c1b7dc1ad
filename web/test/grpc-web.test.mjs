// The page's gRPC-Web module against bytes prost produced (fixtures.json, kept true by
// integration-tests/tests/system/grpc_web.rs). Run: node --test web/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import {
  FrameParser,
  decodeSubscribeResponse,
  encodeFrame,
  encodeSubscribeRequest,
  parseTrailers,
} from "../grpc-web.js";

const fixtures = JSON.parse(readFileSync(new URL("./fixtures.json", import.meta.url), "utf8"));
const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

test("SubscribeRequest encodes as prost does", () => {
  assert.ok(fixtures.subscribeRequests.length > 0);
  for (const { after, hex } of fixtures.subscribeRequests) {
    assert.equal(toHex(encodeSubscribeRequest({ after })), hex, `after=${after}`);
  }
});

test("SubscribeResponse decodes prost's bytes into the canonical proto3 JSON", () => {
  assert.ok(fixtures.subscribeResponses.length > 0);
  for (const { notification, hex } of fixtures.subscribeResponses) {
    assert.deepEqual(decodeSubscribeResponse(fromHex(hex)), { notification });
  }
});

test("unknown fields are skipped, truncated messages refused", () => {
  const { hex, notification } = fixtures.subscribeResponses[0];
  const known = fromHex(hex);
  // Field 9 varint, field 10 fixed64, field 11 bytes, field 12 fixed32: a newer server's.
  const extra = Uint8Array.from([0x48, 0x96, 0x01, 0x51, 1, 2, 3, 4, 5, 6, 7, 8, 0x5a, 2, 0xff, 0xfe, 0x65, 1, 2, 3, 4]);
  const joined = new Uint8Array(known.length + extra.length);
  joined.set(known);
  joined.set(extra, known.length);
  assert.deepEqual(decodeSubscribeResponse(joined), { notification });
  assert.throws(() => decodeSubscribeResponse(known.subarray(0, known.length - 1)), /truncated/);
  assert.throws(() => decodeSubscribeResponse(Uint8Array.from([0x0a, 0x80])), /truncated/);
});

test("frames: one data frame out; data and trailer frames in, split anywhere", () => {
  const message = fromHex(fixtures.subscribeResponses[1].hex);
  const frame = encodeFrame(message);
  assert.equal(frame[0], 0);
  assert.equal(new DataView(frame.buffer).getUint32(1), message.length);
  assert.deepEqual(frame.subarray(5), message);

  const trailer = new TextEncoder().encode("grpc-status:14\r\ngrpc-message:draining%3A%20come%20back\r\n");
  const trailerFrame = new Uint8Array(5 + trailer.length);
  trailerFrame[0] = 0x80;
  new DataView(trailerFrame.buffer).setUint32(1, trailer.length);
  trailerFrame.set(trailer, 5);
  const body = new Uint8Array([...frame, ...frame, ...trailerFrame]);

  for (const size of [1, 2, 5, 7, 64, body.length]) {
    const parser = new FrameParser();
    const frames = [];
    for (let i = 0; i < body.length; i += size) frames.push(...parser.push(body.subarray(i, i + size)));
    assert.equal(frames.length, 3, `chunks of ${size}`);
    assert.deepEqual(frames[0], { trailer: false, message });
    assert.deepEqual(frames[1], { trailer: false, message });
    assert.equal(frames[2].trailer, true);
    assert.equal(frames[2].trailers.get("grpc-status"), "14");
    assert.equal(frames[2].trailers.get("grpc-message"), "draining: come back");
    assert.equal(parser.pending(), false);
  }
});

test("a frame over the limit is refused before it is buffered", () => {
  const parser = new FrameParser(1024);
  assert.throws(() => parser.push(Uint8Array.from([0, 0, 0, 0x04, 0x01])), /over the limit/);
});

test("trailers: names lower-cased, a malformed percent-encoding kept as sent", () => {
  const trailers = parseTrailers(new TextEncoder().encode("Grpc-Status: 3\r\ngrpc-message:100%\r\nnot a header\r\n"));
  assert.equal(trailers.get("grpc-status"), "3");
  assert.equal(trailers.get("grpc-message"), "100%");
  assert.equal(trailers.size, 2);
});
