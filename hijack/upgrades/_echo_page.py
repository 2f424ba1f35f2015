"""The echo server's page: it opens a WebSocket to the server that sent it
(same host, path ``/``) and shows what comes back. Text is inserted with
``textContent`` only, so nothing echoed is ever parsed as HTML."""

ECHO_PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hijack WebSocket echo</title>
<style>
  body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }
  #log { border: 1px solid #ccc; height: 20em; overflow-y: auto; padding: .5em; }
  .sent { color: #06c; } .got { color: #080; } .info { color: #888; }
</style>
</head>
<body>
<h1>WebSocket echo</h1>
<form id="form">
  <input id="text" autocomplete="off" autofocus placeholder="Type, press Enter">
  <button>Send</button>
</form>
<div id="log"></div>
<script>
"use strict";
const log = document.getElementById("log");
function show(cls, text) {
  const line = document.createElement("div");
  line.className = cls;
  line.textContent = text;
  log.append(line);
  log.scrollTop = log.scrollHeight;
}
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/");
ws.onopen = () => show("info", "connected");
ws.onmessage = (event) => show("got", "< " + event.data);
ws.onclose = (event) => show("info", "closed: " + event.code + " " + event.reason);
document.getElementById("form").onsubmit = (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (ws.readyState === WebSocket.OPEN && input.value) {
    ws.send(input.value);
    show("sent", "> " + input.value);
    input.value = "";
  }
};
</script>
</body>
</html>
"""
