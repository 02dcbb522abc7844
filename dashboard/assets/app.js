// hull dashboard: polls /api/containers every 2 s and renders the table; "terminal" opens
// xterm.js over a websocket to a shell in the container (binary frames both ways, a JSON
// text frame for the window size). Data reaches the DOM as text only, never as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (url) =>
  token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;

function fmtDuration(s) {
  if (s == null) return "";
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + (s % 60) + "s";
  return s + "s";
}

function fmtBytes(b) {
  if (b == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + units[i];
}

function guestText(vm) {
  if (!vm) return "—";
  const kernel = vm.kernel_release || (vm.kernel ? vm.kernel.split("/").pop() : "?");
  const parts = ["kernel " + kernel];
  if (vm.vcpus != null) parts.push(vm.vcpus + " vCPU");
  if (vm.memory_mib != null) parts.push(vm.memory_mib + " MiB");
  let t = parts.join(" · ");
  if (vm.source === "config") t += " (config)";
  return t;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function render(snap) {
  document.getElementById("meta").textContent =
    snap.host + " · " + snap.containers.length + " container(s) in " + snap.roots.length +
    " state root(s) · updated " + new Date(snap.taken).toLocaleTimeString();
  const errors = document.getElementById("errors");
  errors.textContent = snap.roots.filter((r) => r.error).map((r) => r.path + ": " + r.error).join("\n");
  const body = document.querySelector("#containers tbody");
  const rows = [];
  for (const c of snap.containers) {
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    tr.dataset.root = c.root;
    tr.dataset.isolation = c.isolation;
    cell(tr, c.id);
    cell(tr, c.pod);
    cell(tr, c.isolation, "iso-" + c.isolation);
    cell(tr, c.status);
    cell(tr, guestText(c.vm), "guest");
    cell(tr, fmtDuration(c.uptime_s), "num");
    cell(tr, c.cpu_percent == null ? "" : c.cpu_percent.toFixed(1) + " %", "num");
    cell(tr, c.memory_bytes == null ? "" :
      fmtBytes(c.memory_bytes) + (c.memory_limit ? " / " + fmtBytes(c.memory_limit) : ""), "num");
    const root = cell(tr, c.root, "root");
    if (c.note) {
      const n = document.createElement("div");
      n.className = "note";
      n.textContent = c.note;
      root.appendChild(n);
    }
    const act = cell(tr, "");
    if (c.terminal) {
      const b = document.createElement("button");
      b.textContent = "terminal";
      b.dataset.terminal = c.id;
      b.onclick = () => openTerminal(c.root, c.id, c.isolation);
      act.appendChild(b);
    }
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

async function poll() {
  try {
    const r = await fetch(withToken("/api/containers"));
    if (!r.ok) throw new Error(r.status + " " + (await r.text()));
    render(await r.json());
  } catch (e) {
    document.getElementById("meta").textContent = "cannot load: " + e.message;
  }
}

let session = null;

function closeTerminal() {
  if (!session) return;
  session.ws.close();
  session.term.dispose();
  window.removeEventListener("resize", session.onWindowResize);
  session = null;
  document.getElementById("terminal-panel").classList.remove("open");
}

function openTerminal(root, id, isolation) {
  closeTerminal();
  const panel = document.getElementById("terminal-panel");
  panel.classList.add("open");
  document.getElementById("terminal-title").textContent =
    (isolation === "vm" ? "vm container " : "container ") + id;
  const status = document.getElementById("terminal-status");
  status.textContent = "connecting…";
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 2000 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const url = proto + "//" + location.host +
    withToken("/ws/terminal?root=" + encodeURIComponent(root) + "&id=" + encodeURIComponent(id));
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const enc = new TextEncoder();
  const sendSize = () => {
    if (ws.readyState === WebSocket.OPEN)
      ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  };
  ws.onopen = () => { status.textContent = "connected"; sendSize(); term.focus(); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const m = JSON.parse(ev.data);
      if (m.type === "exit") status.textContent = "exited " + m.code;
      if (m.type === "error") status.textContent = "error: " + m.message;
    } else {
      term.write(new Uint8Array(ev.data));
    }
  };
  ws.onclose = () => { if (status.textContent === "connected") status.textContent = "closed"; };
  term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
  term.onResize(sendSize);
  const onWindowResize = () => fit.fit();
  window.addEventListener("resize", onWindowResize);
  session = { ws, term, onWindowResize };
}

document.getElementById("terminal-close").onclick = closeTerminal;
poll();
setInterval(poll, 2000);
