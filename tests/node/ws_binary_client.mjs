// A websockify-style client (what noVNC does): Node's `ws`, subprotocol
// "binary", bytes in binary messages. Sends SIZE random bytes in CHUNK-byte
// messages to an echoing upstream behind the bridge, checks every byte came
// back in order, closes, and prints one JSON line with what it saw.
import { randomBytes } from "node:crypto";
import WebSocket from "ws";

const [url, size = "1000000", chunk = "16384"] = process.argv.slice(2);
const total = Number(size);
const step = Number(chunk);
const sent = randomBytes(total);
const received = [];
let receivedBytes = 0;

const ws = new WebSocket(url, ["binary"]);
ws.binaryType = "nodebuffer";
const result = { protocol: null, bytes: 0, same: false, closeCode: null, error: null };

ws.on("open", () => {
  result.protocol = ws.protocol;
  for (let at = 0; at < total; at += step) ws.send(sent.subarray(at, at + step));
});
ws.on("message", (data, isBinary) => {
  if (!isBinary) { result.error = "text message"; ws.terminate(); return; }
  received.push(data);
  receivedBytes += data.length;
  if (receivedBytes >= total) {
    result.bytes = receivedBytes;
    result.same = Buffer.concat(received).equals(sent);
    ws.close(1000, "done");
  }
});
ws.on("unexpected-response", (req, res) => {
  result.error = `HTTP ${res.statusCode}`;
  console.log(JSON.stringify(result));
  process.exit(1);
});
ws.on("error", (err) => { result.error = String(err); });
ws.on("close", (code) => {
  result.closeCode = code;
  console.log(JSON.stringify(result));
  process.exit(result.same ? 0 : 1);
});
