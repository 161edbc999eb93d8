// Test helper: Eclipse Tahu's JavaScript Sparkplug B codec (npm sparkplug-payload) as a filter.
//
// stdin: one JSON request per line, stdout: one JSON answer per line, in order.
//   {"decode": "<base64 payload>"}  -> {"tahu": decodePayload(...), "raw": the protobuf fields as decoded}
//   {"encode": {<Tahu payload object>}} -> {"b64": "<base64 of encodePayload(...)>"}
//   {"encode_raw": {<protobuf fields>}} -> {"b64": ...}: protobufjs's own encoding of the fields as given
//     (camelCase names, e.g. {"metrics": [{"name": "x", "datatype": 7, "intValue": 5}]}), for the wire
//     forms other hosts send that Tahu's encodePayload does not (UInt32 in int_value, per the spec)
//   a request that throws -> {"error": "<message>"}
// 64-bit integers (Long) are written as decimal strings, bytes as base64. In "encode" input, a 64-bit
// value may be given as a decimal string.
"use strict";

const readline = require("readline");
const Long = require("long");
const sparkplug = require("sparkplug-payload");
const proto = require("sparkplug-payload/lib/sparkplugPayloadProto");

const codec = sparkplug.get("spBv1.0");
const Payload = proto.org.eclipse.tahu.protobuf.Payload;

function replacer(key, value) {
  const original = this[key];
  if (Long.isLong(original)) return original.toString();
  if (original instanceof Uint8Array) return Buffer.from(original).toString("base64");
  return value;
}

function answer(request) {
  if (request.decode !== undefined) {
    const buf = Buffer.from(request.decode, "base64");
    const raw = Payload.toObject(Payload.decode(buf), { longs: String, bytes: String, enums: Number });
    return { tahu: codec.decodePayload(buf), raw };
  }
  if (request.encode !== undefined) {
    return { b64: Buffer.from(codec.encodePayload(request.encode)).toString("base64") };
  }
  if (request.encode_raw !== undefined) {
    const message = Payload.fromObject(request.encode_raw);
    return { b64: Buffer.from(Payload.encode(message).finish()).toString("base64") };
  }
  throw new Error("unknown request");
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let out;
  try {
    out = answer(JSON.parse(line));
  } catch (e) {
    out = { error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(out, replacer) + "\n");
});
