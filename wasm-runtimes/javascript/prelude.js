// codebox's guest-side prelude for JavaScript and TypeScript contexts (QuickJS-NG).
//
// Evaluated once per context as a module. It gives cells a Node-like console (inspect
// formatting, stdout/stderr), timers, `display()`, a small synchronous `fs` over /home/user
// (also through `require('fs')`), and `globalThis.__codebox`: `setup(seed, env)`, which the
// host calls once per context, and `fulfilled(outcome)` / `threw(error)`, which it calls after
// each cell to turn its outcome into a JSON report.
import * as std from "std";
import * as os from "os";

// --- inspect: values the way Node's REPL shows them ---------------------------------------

const MAX_DEPTH = 2;
const MAX_ITEMS = 100;
const LINE_WIDTH = 72;

function quote(s) {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  const escaped = s
    .replace(/\\/g, "\\\\")
    .replace(/\n/g, "\\n")
    .replace(/\t/g, "\\t")
    .replace(new RegExp(q, "g"), "\\" + q);
  return q + escaped + q;
}

function keyText(key) {
  if (typeof key === "symbol") return "[" + key.toString() + "]";
  return /^[A-Za-z_$][\w$]*$/.test(key) ? key : quote(key);
}

function join(open, items, close, indent) {
  if (items.length === 0) return open.trimEnd() + close.trimStart();
  const flat = open + items.join(", ") + close;
  if (flat.length <= LINE_WIDTH && !flat.includes("\n")) return flat;
  const pad = "  ".repeat(indent + 1);
  return open.trimEnd() + "\n" + items.map((i) => pad + i).join(",\n") + "\n" + "  ".repeat(indent) + close.trimStart();
}

function inspect(value, depth = 0, seen = []) {
  switch (typeof value) {
    case "string":
      return depth === 0 && seen === null ? value : quote(value);
    case "number":
      return Object.is(value, -0) ? "-0" : String(value);
    case "bigint":
      return value + "n";
    case "boolean":
    case "undefined":
      return String(value);
    case "symbol":
      return value.toString();
    case "function": {
      const source = Function.prototype.toString.call(value);
      const kind = source.startsWith("class") ? "class" : "Function";
      return value.name ? `[${kind}: ${value.name}]` : kind === "class" ? "[class (anonymous)]" : "[Function (anonymous)]";
    }
  }
  if (value === null) return "null";
  if (seen.includes(value)) return "[Circular *1]";
  if (value instanceof Error) return value.stack ? `${value.name}: ${value.message}\n${value.stack}`.trimEnd() : String(value);
  if (value instanceof Date) return isNaN(value) ? "Invalid Date" : value.toISOString();
  if (value instanceof RegExp) return String(value);
  if (value instanceof Promise) return "Promise { <pending> }";
  if (depth > MAX_DEPTH) {
    if (Array.isArray(value)) return "[Array]";
    const name = value.constructor && value.constructor.name;
    return `[${name || "Object"}]`;
  }
  const next = seen.concat([value]);
  const show = (v) => inspect(v, depth + 1, next);
  if (Array.isArray(value)) {
    const items = value.slice(0, MAX_ITEMS).map(show);
    if (value.length > MAX_ITEMS) items.push(`... ${value.length - MAX_ITEMS} more items`);
    return join("[ ", items, " ]", depth);
  }
  if (ArrayBuffer.isView(value) && !(value instanceof DataView)) {
    const items = Array.from(value.slice(0, MAX_ITEMS), (v) => show(v));
    return join(`${value.constructor.name}(${value.length}) [ `, items, " ]", depth);
  }
  if (value instanceof Map) {
    const items = [...value].slice(0, MAX_ITEMS).map(([k, v]) => `${show(k)} => ${show(v)}`);
    return join(`Map(${value.size}) { `, items, " }", depth);
  }
  if (value instanceof Set) {
    const items = [...value].slice(0, MAX_ITEMS).map(show);
    return join(`Set(${value.size}) { `, items, " }", depth);
  }
  const keys = Reflect.ownKeys(value).filter((k) => Object.getOwnPropertyDescriptor(value, k).enumerable);
  const items = keys.slice(0, MAX_ITEMS).map((k) => `${keyText(k)}: ${show(value[k])}`);
  const proto = Object.getPrototypeOf(value);
  const name = proto === null ? "[Object: null prototype]" : proto.constructor && proto.constructor !== Object ? proto.constructor.name : "";
  return join(name ? `${name} { ` : "{ ", items, " }", depth);
}

// Top-level strings print raw in console.log, quoted as results.
const format = (args) => args.map((a) => (typeof a === "string" ? a : inspect(a))).join(" ");

function writer(stream) {
  return (...args) => {
    stream.puts(format(args) + "\n");
    stream.flush();
  };
}

const out = writer(std.out);
const err = writer(std.err);
globalThis.console = {
  log: out,
  info: out,
  debug: out,
  trace: err,
  warn: err,
  error: err,
  dir: (v) => out(inspect(v)),
  table: (v) => out(inspect(v)),
};

// --- timers -----------------------------------------------------------------------------

globalThis.setTimeout = (fn, ms = 0, ...args) => os.setTimeout(() => fn(...args), ms);
globalThis.clearTimeout = (id) => id && os.clearTimeout(id);
const intervals = new Map();
let nextInterval = 1;
globalThis.setInterval = (fn, ms = 0, ...args) => {
  const id = nextInterval++;
  const tick = () => {
    intervals.set(id, os.setTimeout(tick, ms));
    fn(...args);
  };
  intervals.set(id, os.setTimeout(tick, ms));
  return id;
};
globalThis.clearInterval = (id) => {
  if (intervals.has(id)) os.clearTimeout(intervals.get(id));
  intervals.delete(id);
};
globalThis.queueMicrotask = (fn) => Promise.resolve().then(fn);

// --- fs over the sandbox's files ----------------------------------------------------------

function fsError(code, syscall, path) {
  const e = new Error(`${code}: ${syscall} '${path}'`);
  e.code = code;
  return e;
}

function checked(result, syscall, path) {
  const errno = Array.isArray(result) ? result[1] : result;
  if (errno) throw fsError(errno === -std.Error.ENOENT || errno === std.Error.ENOENT ? "ENOENT" : "EIO", syscall, path);
  return Array.isArray(result) ? result[0] : result;
}

const fs = {
  readFileSync(path, options) {
    const encoding = typeof options === "string" ? options : options && options.encoding;
    const f = std.open(String(path), "rb");
    if (!f) throw fsError("ENOENT", "open", path);
    try {
      if (encoding) return f.readAsString();
      const chunks = [];
      let total = 0;
      for (;;) {
        const buf = new ArrayBuffer(65536);
        const n = f.read(buf, 0, buf.byteLength);
        if (n <= 0) break;
        chunks.push(new Uint8Array(buf, 0, n));
        total += n;
      }
      const bytes = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        bytes.set(c, at);
        at += c.length;
      }
      return bytes;
    } finally {
      f.close();
    }
  },
  writeFileSync(path, data) {
    const f = std.open(String(path), "wb");
    if (!f) throw fsError("ENOENT", "open", path);
    try {
      if (typeof data === "string") f.puts(data);
      else {
        const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
        f.write(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      }
      f.flush();
      if (f.error()) throw fsError("ENOSPC", "write", path);
    } finally {
      f.close();
    }
  },
  appendFileSync(path, data) {
    const f = std.open(String(path), "ab");
    if (!f) throw fsError("ENOENT", "open", path);
    try {
      f.puts(String(data));
    } finally {
      f.close();
    }
  },
  existsSync(path) {
    return os.stat(String(path))[1] === 0;
  },
  readdirSync(path = ".") {
    return checked(os.readdir(String(path)), "scandir", path).filter((n) => n !== "." && n !== "..").sort();
  },
  mkdirSync(path, options) {
    const parts = String(path).split("/");
    const targets = options && options.recursive ? parts.map((_, i) => parts.slice(0, i + 1).join("/")).filter((p) => p && p !== ".") : [String(path)];
    for (const p of targets) {
      if (options && options.recursive && os.stat(p)[1] === 0) continue;
      checked(os.mkdir(p, 0o777), "mkdir", p);
    }
  },
  unlinkSync(path) {
    checked(os.remove(String(path)), "unlink", path);
  },
  statSync(path) {
    const st = checked(os.stat(String(path)), "stat", path);
    return { size: st.size, mtimeMs: st.mtime, isFile: () => (st.mode & os.S_IFMT) === os.S_IFREG, isDirectory: () => (st.mode & os.S_IFMT) === os.S_IFDIR };
  },
};
fs.promises = Object.fromEntries(
  Object.entries(fs)
    .filter(([, f]) => typeof f === "function")
    .map(([name, f]) => [name.replace(/Sync$/, ""), async (...args) => f(...args)]),
);
globalThis.fs = fs;
const modules = { fs, "node:fs": fs, "fs/promises": fs.promises, "node:fs/promises": fs.promises };
globalThis.require = (name) => {
  if (name in modules) return modules[name];
  throw new Error(`Cannot find module '${name}' (available: fs, fs/promises)`);
};
globalThis.process = { env: {}, argv: ["codebox"], platform: "wasi", cwd: () => os.getcwd()[0] };

// --- results ------------------------------------------------------------------------------

let displays = [];

function jsonOf(value) {
  if (value === undefined || typeof value === "function" || typeof value === "symbol" || typeof value === "bigint") return undefined;
  try {
    const text = JSON.stringify(value);
    return text === undefined ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}

function bundle(value) {
  const data = { "text/plain": inspect(value) };
  const json = jsonOf(value);
  if (json !== undefined && typeof value === "object") data["application/json"] = json;
  return data;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

function base64(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] || 0) << 8) | (bytes[i + 2] || 0);
    out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : "=";
    out += i + 2 < bytes.length ? B64[n & 63] : "=";
  }
  return out;
}

// display(value) shows a value as a result; display(data, mime) shows raw data of that type
// (a string, or bytes for images).
globalThis.display = (value, mime) => {
  if (typeof mime === "string") {
    const data = value instanceof Uint8Array ? base64(value) : String(value);
    displays.push({ data: { [mime]: data, "text/plain": `<${mime}>` }, main: false });
  } else {
    displays.push({ data: bundle(value), main: false });
  }
};

function errorReport(e) {
  if (e instanceof Error) {
    const stack = (e.stack || "").trimEnd();
    return { name: e.name || "Error", value: e.message || "", traceback: `${e.name}: ${e.message}${stack ? "\n" + stack : ""}` };
  }
  return { name: "Uncaught", value: inspect(e), traceback: `Uncaught ${inspect(e)}` };
}

async function report(outcome, threw) {
  const report = { results: [], error: null };
  try {
    if (threw) throw outcome;
    // An async script's promise resolves to { value: <completion value> }.
    const settled = await outcome;
    const value = settled && typeof settled === "object" && "value" in settled ? settled.value : settled;
    report.results = displays;
    if (value !== undefined) report.results.push({ data: bundle(value), main: true });
  } catch (e) {
    report.results = displays;
    report.error = errorReport(e);
  }
  displays = [];
  return JSON.stringify(report);
}

// The host calls one of these after each cell: with what evaluating the cell returned (a
// promise, with top-level await), or with what it threw.
globalThis.__codebox = {
  fulfilled: (outcome) => report(outcome, false),
  threw: (error) => report(error, true),
  inspect,
  setup,
};

// --- per context --------------------------------------------------------------------------
//
// Everything above is the same in every context, so the host may snapshot the runtime right
// after this prelude ran and start contexts from that image. What must differ per context is
// done here, once, by the host before the first cell: environment (given by the host, so it
// never depends on how the C library caches it), working directory, a random seed
// (QuickJS seeds Math.random from the clock when the runtime starts, which a snapshot would
// freeze) and the origin of performance.now().

function rotl(x, k) {
  return (x << k) | (x >>> (32 - k));
}

// xoshiro128**, seeded with four 32-bit words from the host's entropy.
function seededRandom(seed) {
  let [a, b, c, d] = seed.map((x) => x >>> 0);
  if ((a | b | c | d) === 0) a = 1;
  const next = () => {
    const out = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return out;
  };
  return function random() {
    return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
  };
}

function setup(seed, env) {
  process.env = env;
  os.chdir(env.PWD || env.HOME || "/home/user");
  Object.defineProperty(Math, "random", { value: seededRandom(seed), writable: true, configurable: true });
  // QuickJS's performance.now is read-only; the object itself can be replaced.
  const clock = performance.now.bind(performance);
  const origin = clock();
  globalThis.performance = {
    now: function now() {
      return clock() - origin;
    },
    timeOrigin: Date.now(),
  };
}
