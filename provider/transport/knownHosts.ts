/**
 * A small OpenSSH known_hosts parser and matcher (format: sshd(8), "SSH_KNOWN_HOSTS FILE FORMAT").
 *
 * Hand-written because ssh2 does not parse known_hosts and no maintained npm package handles hashed
 * `|1|` entries (AGENT-FACTS.md, "OpenSSH and ssh2"). Pure: no I/O; the caller reads the file.
 *
 * Not supported, on purpose: host certificates (`@cert-authority` lines are parsed but never match a
 * plain key, as in OpenSSH when the server presents a plain key; ssh2 does not negotiate host certificates),
 * CheckHostIP (lookups are by the name given), and SSH protocol 1 keys (reported as warnings).
 */
import { createHash, createHmac } from "node:crypto";

/** A line marker: `@revoked` (never trust this key) or `@cert-authority` (a host CA key). */
export type KnownHostsMarker = "revoked" | "cert-authority";

/** The host field of a line: a hashed name (`|1|salt|hmac`) or a comma list of patterns. */
export type KnownHostsHosts =
  | { readonly kind: "hashed"; readonly salt: Buffer; readonly hmac: Buffer }
  | { readonly kind: "patterns"; readonly patterns: readonly string[] };

/** One usable known_hosts line. */
export interface KnownHostsEntry {
  /** 1-based line number in the source. */
  readonly line: number;
  readonly marker?: KnownHostsMarker;
  readonly hosts: KnownHostsHosts;
  /** Key type as written, e.g. `ssh-ed25519`; always equal to the type encoded inside {@link keyBlob}. */
  readonly keyType: string;
  /** The SSH wire-format public key blob (the decoded base64 field). */
  readonly keyBlob: Buffer;
}

/** A line that was skipped because it could not be used, with the reason. */
export interface KnownHostsWarning {
  /** 1-based line number in the source. */
  readonly line: number;
  readonly message: string;
}

/** A parsed known_hosts file. */
export interface KnownHostsFile {
  /** Where the text came from (a path or a label), for messages. */
  readonly source: string;
  readonly entries: readonly KnownHostsEntry[];
  readonly warnings: readonly KnownHostsWarning[];
}

/** Result of {@link lookupHostKey}. */
export interface HostKeyLookup {
  /**
   * - `revoked`: a `@revoked` line holds this key (whatever its host field; stricter than OpenSSH,
   *   which applies a revocation only to the hosts the line names).
   * - `match`: a line for this host holds this key.
   * - `mismatch`: lines for this host hold a different key of the *same* type (OpenSSH: "HOST KEY HAS CHANGED").
   * - `unknown`: no line for this host holds a key of this type. If other types are known (`knownTypes`),
   *   this is still `unknown`, like OpenSSH, which would have negotiated a known type instead.
   */
  readonly status: "match" | "mismatch" | "revoked" | "unknown";
  /** The line that decided a `match`, `revoked` or (first same-type line) `mismatch`. */
  readonly matchedLine?: number;
  /** Key types known for this host (`mismatch` and `unknown`; empty when the host is not listed). */
  readonly knownTypes?: string[];
  /** Fingerprints ({@link fingerprintSha256}) of the same-type keys known for this host (`mismatch`). */
  readonly expectedFingerprints?: string[];
}

/** The OpenSSH fingerprint of a key blob: `"SHA256:" + base64(sha256(blob))` without `=` padding. */
export function fingerprintSha256(blob: Buffer): string {
  return "SHA256:" + createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
}

/** The key type of an SSH wire-format key blob (its first length-prefixed string), or undefined if unreadable. */
export function sshKeyType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const length = blob.readUInt32BE(0);
  return length > 0 && length <= 64 && 4 + length <= blob.length ? blob.toString("latin1", 4, 4 + length) : undefined;
}

/** The name known_hosts stores for a host: lower-cased `host` for port 22, `[host]:port` otherwise (as OpenSSH writes it). */
export function knownHostsName(host: string, port: number): string {
  const name = host.toLowerCase();
  return port === 22 ? name : `[${name}]:${port}`;
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

function parseHosts(field: string): KnownHostsHosts | string {
  if (field.startsWith("|")) {
    // OpenSSH's hashed form: |1|base64(salt)|base64(HMAC-SHA1(salt, name)), salt and HMAC both 20 bytes.
    const parts = /^\|1\|([^|]+)\|([^|]+)$/.exec(field);
    const salt = parts && BASE64.test(parts[1]) ? Buffer.from(parts[1], "base64") : undefined;
    const hmac = parts && BASE64.test(parts[2]) ? Buffer.from(parts[2], "base64") : undefined;
    if (salt?.length !== 20 || hmac?.length !== 20) return "malformed hashed host name (expected |1|salt|hmac)";
    return { kind: "hashed", salt, hmac };
  }
  const patterns = field.toLowerCase().split(",");
  return patterns.some((p) => p === "" || p === "!") ? "empty host pattern" : { kind: "patterns", patterns };
}

/** Parses known_hosts text. Never throws: unusable lines are skipped and reported in `warnings`. */
export function parseKnownHosts(text: string, source = "known_hosts"): KnownHostsFile {
  const entries: KnownHostsEntry[] = [];
  const warnings: KnownHostsWarning[] = [];
  text.split("\n").forEach((raw, index) => {
    const line = index + 1;
    const warn = (message: string): void => void warnings.push({ line, message });
    const fields = raw.trim().split(/[ \t]+/);
    if (fields[0] === "" || fields[0].startsWith("#")) return;
    let marker: KnownHostsMarker | undefined;
    if (fields[0].startsWith("@")) {
      if (fields[0] !== "@revoked" && fields[0] !== "@cert-authority") return warn(`unknown marker ${fields[0]}`);
      marker = fields.shift() === "@revoked" ? "revoked" : "cert-authority";
    }
    if (fields.length < 3) return warn("expected [@marker] hostnames keytype base64-key [comment]");
    const [hostsField, keyType, keyText] = fields;
    if (/^\d+$/.test(keyType)) return warn("SSH protocol 1 key (not supported)");
    const hosts = parseHosts(hostsField);
    if (typeof hosts === "string") return warn(hosts);
    const keyBlob = BASE64.test(keyText) ? Buffer.from(keyText, "base64") : undefined;
    const encodedType = keyBlob && sshKeyType(keyBlob);
    if (keyBlob === undefined || encodedType === undefined) return warn("key is not a base64 SSH public key");
    // OpenSSH also refuses a line whose written type differs from the type inside the key.
    if (encodedType !== keyType) return warn(`key type ${keyType} does not match the key's own type ${encodedType}`);
    entries.push({ line, marker, hosts, keyType, keyBlob });
  });
  return { source, entries, warnings };
}

/** OpenSSH wildcard match (match.c): `*` is any run of characters, `?` exactly one; everything else literal. */
function wildcardMatch(pattern: string, name: string): boolean {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${body}$`, "s").test(name);
}

/** Whether a line's host field matches `name` (from {@link knownHostsName}). A matching `!pattern` vetoes the line. */
export function hostsMatch(hosts: KnownHostsHosts, name: string): boolean {
  if (hosts.kind === "hashed") return createHmac("sha1", hosts.salt).update(name).digest().equals(hosts.hmac);
  let matched = false;
  for (const pattern of hosts.patterns) {
    if (pattern.startsWith("!")) {
      if (wildcardMatch(pattern.slice(1), name)) return false;
    } else if (wildcardMatch(pattern, name)) matched = true;
  }
  return matched;
}

/**
 * The subset of `file` that can affect `host:port`: every `@revoked` line and the unmarked lines naming the host.
 * {@link lookupHostKey} gives the same answers on it, without re-hashing every line (for verifiers called per re-key).
 */
export function knownHostsForHost(file: KnownHostsFile, host: string, port: number): KnownHostsFile {
  const name = knownHostsName(host, port);
  const entries = file.entries.filter((e) => e.marker === "revoked" || (e.marker === undefined && hostsMatch(e.hosts, name)));
  return { source: file.source, entries, warnings: file.warnings };
}

/** Looks up the key a server presented for `host` on TCP `port` (22 is the default SSH port). See {@link HostKeyLookup}. */
export function lookupHostKey(file: KnownHostsFile, host: string, port: number, key: { type: string; blob: Buffer }): HostKeyLookup {
  const revoked = file.entries.find((e) => e.marker === "revoked" && e.keyBlob.equals(key.blob));
  if (revoked) return { status: "revoked", matchedLine: revoked.line };
  const name = knownHostsName(host, port);
  const forHost = file.entries.filter((e) => e.marker === undefined && hostsMatch(e.hosts, name));
  const same = forHost.find((e) => e.keyBlob.equals(key.blob));
  if (same) return { status: "match", matchedLine: same.line };
  const knownTypes = [...new Set(forHost.map((e) => e.keyType))];
  const sameType = forHost.filter((e) => e.keyType === key.type);
  if (sameType.length === 0) return { status: "unknown", knownTypes };
  const expectedFingerprints = sameType.map((e) => fingerprintSha256(e.keyBlob));
  return { status: "mismatch", matchedLine: sameType[0].line, knownTypes, expectedFingerprints };
}
