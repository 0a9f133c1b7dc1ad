// gRPC-Web by hand, for the few messages the page needs: no generated client, no
// build step (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md).
//
// - Protocol Buffers wire format (https://protobuf.dev/programming-guides/encoding/):
//   varints, length-delimited fields, unknown fields skipped.
// - Frames: a 1-byte flag (0x00 data, 0x80 trailers), a 4-byte big-endian length, then
//   the payload; the trailer frame's payload is HTTP/1-style header lines.
// - Messages: trellis.notification.v1.SubscribeRequest (encoded) and SubscribeResponse
//   (decoded into the canonical proto3 JSON shape the HTTP/JSON API returns, so the page
//   treats a notification the same whichever way it came).
//
// Tested with `node --test web/test/` against bytes produced by prost
// (web/test/fixtures.json, checked by the Rust system tests).

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** The flag byte of a data frame. */
export const DATA_FRAME = 0x00;
/** The flag bit of the trailer frame. */
export const TRAILER_FRAME = 0x80;

/**
 * Appends `value` (a non-negative Number up to 2^53 or a BigInt up to 2^64) as a
 * base-128 varint.
 */
function pushVarint(out, value) {
  let v = BigInt(value);
  if (v < 0n) {
    v = BigInt.asUintN(64, v); // two's complement, as int32/int64 are on the wire
  }
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
}

/** Appends a length-delimited field (wire type 2) of `bytes`. */
function pushBytesField(out, field, bytes) {
  pushVarint(out, (field << 3) | 2);
  pushVarint(out, bytes.length);
  for (const b of bytes) out.push(b);
}

/** A reader over a message's bytes; every read checks its bounds. */
class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.pos = 0;
  }

  done() {
    return this.pos >= this.bytes.length;
  }

  /** A varint as a BigInt (up to 64 bits). */
  varint() {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.bytes.length) throw new Error("truncated varint");
      const b = this.bytes[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return BigInt.asUintN(64, result);
    }
    throw new Error("varint longer than 10 bytes");
  }

  take(length) {
    if (length > this.bytes.length - this.pos) throw new Error("truncated field");
    const slice = this.bytes.subarray(this.pos, this.pos + length);
    this.pos += length;
    return slice;
  }

  /** The next field's number and wire type. */
  tag() {
    const key = Number(this.varint());
    return { field: key >>> 3, wireType: key & 7 };
  }

  /** A length-delimited value. */
  lengthDelimited() {
    return this.take(Number(this.varint()));
  }

  /** Skips a value of `wireType` (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32). */
  skip(wireType) {
    switch (wireType) {
      case 0: this.varint(); break;
      case 1: this.take(8); break;
      case 2: this.lengthDelimited(); break;
      case 5: this.take(4); break;
      default: throw new Error(`unsupported wire type ${wireType}`);
    }
  }
}

/**
 * Encodes a SubscribeRequest `{ after }` (field 1, string: the id of the last
 * notification received; empty replays everything).
 */
export function encodeSubscribeRequest({ after = "" } = {}) {
  const out = [];
  if (after) pushBytesField(out, 1, encoder.encode(after));
  return Uint8Array.from(out);
}

/**
 * A google.protobuf.Timestamp as RFC 3339 in UTC, with 0, 3, 6 or 9 fractional digits
 * (the proto3 JSON mapping).
 */
function timestampToJson(bytes) {
  const reader = new Reader(bytes);
  let seconds = 0n;
  let nanos = 0;
  while (!reader.done()) {
    const { field, wireType } = reader.tag();
    if (field === 1 && wireType === 0) seconds = BigInt.asIntN(64, reader.varint());
    else if (field === 2 && wireType === 0) nanos = Number(BigInt.asIntN(32, reader.varint()));
    else reader.skip(wireType);
  }
  const iso = new Date(Number(seconds) * 1000).toISOString(); // YYYY-MM-DDTHH:MM:SS.000Z
  let fraction = "";
  if (nanos !== 0) {
    const digits = String(nanos).padStart(9, "0");
    fraction = "." + (nanos % 1e6 === 0 ? digits.slice(0, 3) : nanos % 1e3 === 0 ? digits.slice(0, 6) : digits);
  }
  return iso.slice(0, 19) + fraction + "Z";
}

const NOTIFICATION_STRINGS = { 1: "id", 2: "userId", 3: "kind", 4: "title", 5: "body" };
const NOTIFICATION_TIMES = { 6: "createTime", 7: "readTime" };

/** Decodes a trellis.notification.v1.Notification into its proto3 JSON shape. */
export function decodeNotification(bytes) {
  const reader = new Reader(bytes);
  const notification = {};
  while (!reader.done()) {
    const { field, wireType } = reader.tag();
    if (wireType === 2 && field in NOTIFICATION_STRINGS) {
      notification[NOTIFICATION_STRINGS[field]] = decoder.decode(reader.lengthDelimited());
    } else if (wireType === 2 && field in NOTIFICATION_TIMES) {
      notification[NOTIFICATION_TIMES[field]] = timestampToJson(reader.lengthDelimited());
    } else {
      reader.skip(wireType);
    }
  }
  return notification;
}

/** Decodes a SubscribeResponse: `{ notification }` (absent when the message lacks it). */
export function decodeSubscribeResponse(bytes) {
  const reader = new Reader(bytes);
  const response = {};
  while (!reader.done()) {
    const { field, wireType } = reader.tag();
    if (field === 1 && wireType === 2) response.notification = decodeNotification(reader.lengthDelimited());
    else reader.skip(wireType);
  }
  return response;
}

/** One message in a data frame, as a request body. */
export function encodeFrame(message) {
  const frame = new Uint8Array(5 + message.length);
  new DataView(frame.buffer).setUint32(1, message.length);
  frame.set(message, 5);
  return frame;
}

/**
 * Parses the trailer frame's payload (`name:value\r\n` lines) into a Map with lower-case
 * names; `grpc-message` is percent-decoded (gRPC over HTTP/2, "Responses").
 */
export function parseTrailers(bytes) {
  const trailers = new Map();
  for (const line of decoder.decode(bytes).split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    let value = line.slice(colon + 1).trim();
    if (name === "grpc-message") {
      try { value = decodeURIComponent(value); } catch { /* kept as sent */ }
    }
    trailers.set(name, value);
  }
  return trailers;
}

/**
 * Splits a response body, arriving in chunks of any size, into frames. `push(chunk)`
 * returns the frames completed so far: `{ trailer: false, message }` or
 * `{ trailer: true, trailers }`. A frame over `maxFrameBytes` is an error (a broken or
 * hostile server cannot make the page buffer without bound).
 */
export class FrameParser {
  constructor(maxFrameBytes = 4 * 1024 * 1024) {
    this.buffer = new Uint8Array(0);
    this.maxFrameBytes = maxFrameBytes;
  }

  push(chunk) {
    // Copied only when a partial frame is waiting (usually a chunk holds whole frames).
    let joined = chunk;
    if (this.buffer.length > 0) {
      joined = new Uint8Array(this.buffer.length + chunk.length);
      joined.set(this.buffer, 0);
      joined.set(chunk, this.buffer.length);
    }
    const frames = [];
    let pos = 0;
    while (joined.length - pos >= 5) {
      const flag = joined[pos];
      const length = new DataView(joined.buffer, joined.byteOffset + pos + 1, 4).getUint32(0);
      if (length > this.maxFrameBytes) throw new Error(`a gRPC-Web frame of ${length} bytes is over the limit`);
      if (joined.length - pos - 5 < length) break;
      const payload = joined.slice(pos + 5, pos + 5 + length);
      pos += 5 + length;
      if (flag & TRAILER_FRAME) frames.push({ trailer: true, trailers: parseTrailers(payload) });
      else frames.push({ trailer: false, message: payload });
    }
    this.buffer = joined.slice(pos);
    return frames;
  }

  /** True when a partial frame is left over (the body ended mid-frame). */
  pending() {
    return this.buffer.length > 0;
  }
}

/** gRPC status codes the page treats specially (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
export const Code = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  RESOURCE_EXHAUSTED: 8,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
});

/** A call's final status: `{ code, message }` (code 0 is OK). */
export class GrpcStatus extends Error {
  constructor(code, message) {
    super(message || `gRPC status ${code}`);
    this.code = code;
  }
}

/**
 * Calls a server-streaming method over gRPC-Web with fetch: POSTs one framed `request`
 * (already encoded) to `url` (`https://host:port/package.Service/Method`) with
 * `headers` added, calls `onOpen()` once the server has answered with a stream and
 * `onMessage(bytes)` for each response message as it arrives,
 * and resolves to the final status from the trailer frame or, for a trailers-only
 * answer, the response headers. Rejects on a network failure, an abort (`signal`), a
 * frame over the limit or an exception of `onMessage`; the body is cancelled whenever
 * the call ends.
 */
export async function serverStream({ url, request, headers = {}, signal, onOpen = () => {}, onMessage }) {
  const response = await fetch(url, {
    method: "POST",
    headers: {
      "content-type": "application/grpc-web+proto",
      "x-grpc-web": "1",
      accept: "application/grpc-web+proto",
      ...headers,
    },
    body: encodeFrame(request),
    signal,
    cache: "no-store",
  });
  const headerStatus = response.headers.get("grpc-status");
  if (headerStatus !== null) {
    return new GrpcStatus(Number(headerStatus), safeDecode(response.headers.get("grpc-message") || ""));
  }
  if (!response.ok || !response.body) {
    return new GrpcStatus(Code.UNAVAILABLE, `HTTP ${response.status} from ${url}`);
  }
  onOpen();
  const parser = new FrameParser();
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const frame of parser.push(value)) {
        if (frame.trailer) {
          const code = Number(frame.trailers.get("grpc-status") ?? Code.INTERNAL);
          return new GrpcStatus(code, frame.trailers.get("grpc-message") || "");
        }
        onMessage(frame.message);
      }
    }
    return new GrpcStatus(Code.UNAVAILABLE, "the stream ended without a status");
  } finally {
    // However the stream ends (a status, a frame over the limit, a throwing onMessage),
    // its connection is released: a browser has six per origin over HTTP/1.1.
    reader.cancel().catch(() => {});
  }
}

function safeDecode(value) {
  try { return decodeURIComponent(value); } catch { return value; }
}
