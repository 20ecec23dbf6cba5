/**
 * Host key verification for the ssh transport: fingerprints, the `hostKey` pin, and a synchronous ssh2
 * `hostVerifier` backed by a pin, a known_hosts file, or the explicit insecure opt-in.
 *
 * Order of precedence (first that applies decides, nothing else is consulted):
 * 1. `insecureSkipHostKeyCheck === true`: every key is accepted (explicit opt-in only, never a default).
 * 2. `hostKey`: the pin wins over known_hosts; known_hosts is then not read at all.
 * 3. known_hosts (`knownHostsText`, else `knownHostsPath`, default `~/.ssh/known_hosts`). Only this one file is
 *    read: OpenSSH's other files (`~/.ssh/known_hosts2`, `/etc/ssh/ssh_known_hosts`) are not.
 */
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { QuiesceError } from "../errors";
import {
  fingerprintSha256,
  knownHostsForHost,
  knownHostsName,
  lookupHostKey,
  parseKnownHosts,
  sshKeyType,
  type KnownHostsFile,
  type KnownHostsWarning,
} from "./knownHosts";

export { fingerprintSha256 };

/** A parsed `hostKey` option: a full public key, or only its SHA256 fingerprint. */
export type HostKeyPin =
  | { readonly kind: "key"; readonly type: string; readonly blob: Buffer; readonly fingerprint: string }
  | { readonly kind: "fingerprint"; readonly fingerprint: string };

/**
 * Host key types ssh2 1.17 can verify, with the number of length-prefixed strings in their wire blob
 * (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4) and the ssh2 `serverHostKey` algorithms that yield them.
 */
const KEY_TYPES: ReadonlyMap<string, { readonly strings: number; readonly algorithms: readonly string[] }> = new Map([
  ["ssh-ed25519", { strings: 2, algorithms: ["ssh-ed25519"] }],
  ["ecdsa-sha2-nistp256", { strings: 3, algorithms: ["ecdsa-sha2-nistp256"] }],
  ["ecdsa-sha2-nistp384", { strings: 3, algorithms: ["ecdsa-sha2-nistp384"] }],
  ["ecdsa-sha2-nistp521", { strings: 3, algorithms: ["ecdsa-sha2-nistp521"] }],
  // An ssh-rsa key is signed with any of these (RFC 8332); the blob's type stays "ssh-rsa".
  ["ssh-rsa", { strings: 3, algorithms: ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] }],
  ["ssh-dss", { strings: 5, algorithms: ["ssh-dss"] }],
]);

/** ssh2 1.17's DEFAULT_SERVER_HOST_KEY (lib/protocol/constants.js, Node with Ed25519); a unit test guards the copy. */
export const SSH2_DEFAULT_SERVER_HOST_KEY: readonly string[] = [
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "rsa-sha2-512",
  "rsa-sha2-256",
  "ssh-rsa",
];

const EXAMPLE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHgQYwaY58sOFuUebTPgil3cg8SIYZeBrCTAkGPGRjRl root@hv1";
const EXAMPLE_FINGERPRINT = "SHA256:FelNNMG7F85YKaEpHcqA1+FtJAHcvCpk90NkQHzdzgQ";

/** True when `blob` is exactly `count` well-formed SSH strings (uint32 length + bytes), as a public key blob is. */
function isStringSequence(blob: Buffer, count: number): boolean {
  let offset = 0;
  for (let i = 0; i < count; i++) {
    if (offset + 4 > blob.length) return false;
    offset += 4 + blob.readUInt32BE(offset);
  }
  return offset === blob.length;
}

function howToObtain(host: string, port: number): string {
  return (
    `Get the host's keys with \`ssh-keyscan -p ${port} ${host}\` and their fingerprints with ` +
    `\`ssh-keyscan -p ${port} ${host} | ssh-keygen -lf -\`, and check the fingerprint against one obtained out of band ` +
    "(on the host: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)."
  );
}

/**
 * Parses the `hostKey` option: a public key line (`TYPE BASE64 [comment]`, type one of ssh-ed25519,
 * ecdsa-sha2-nistp256/384/521, ssh-rsa, ssh-dss) or an OpenSSH fingerprint `SHA256:<43 base64 chars>`.
 * `where` only improves the error message (default host `HOST`, port 22).
 *
 * @throws QuiesceError `INVALID_INPUT` saying what is wrong, with valid examples and how to obtain the value.
 */
export function parseHostKeyPin(value: string, where: { host?: string; port?: number } = {}): HostKeyPin {
  const invalid = (problem: string): QuiesceError => {
    const shown = value.length > 60 ? `${value.slice(0, 57)}...` : value;
    return new QuiesceError(
      "INVALID_INPUT",
      `hostKey ${JSON.stringify(shown)} is not valid: ${problem}. Expected a public key line such as ` +
        `"${EXAMPLE_KEY}" or a SHA256 fingerprint such as "${EXAMPLE_FINGERPRINT}". ` +
        howToObtain(where.host ?? "HOST", where.port ?? 22),
      { field: "hostKey" },
    );
  };
  const text = value.trim();
  if (text === "") throw invalid("it is empty");
  if (text.includes("\n")) throw invalid("it has several lines; give exactly one key or fingerprint");
  const fingerprint = /^sha256:([A-Za-z0-9+/]+)=*$/i.exec(text);
  if (fingerprint) {
    // 32 bytes of SHA-256 are 43 unpadded base64 characters.
    if (fingerprint[1].length !== 43) throw invalid(`a SHA256 fingerprint has 43 characters after "SHA256:", this has ${fingerprint[1].length}`);
    return { kind: "fingerprint", fingerprint: `SHA256:${fingerprint[1]}` };
  }
  if (/^md5:/i.test(text) || /^([0-9a-f]{2}:){15}[0-9a-f]{2}$/i.test(text)) {
    throw invalid("MD5 fingerprints are not accepted; use the SHA256 form (`ssh-keygen -E sha256 -lf ...`)");
  }
  const fields = text.split(/\s+/);
  if (fields.length >= 3 && KEY_TYPES.has(fields[1])) {
    throw invalid(`it looks like a known_hosts or ssh-keyscan line; remove the leading host name "${fields[0]}"`);
  }
  const [type, base64 = ""] = fields;
  const shape = KEY_TYPES.get(type);
  if (shape === undefined) {
    throw invalid(`unsupported key type "${type}" (supported: ${[...KEY_TYPES.keys()].join(", ")}; or give a SHA256 fingerprint)`);
  }
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) throw invalid("the key after the type is missing or not base64");
  const blob = Buffer.from(base64, "base64");
  const encodedType = sshKeyType(blob);
  if (encodedType !== type) throw invalid(`the key encodes type "${encodedType ?? "(unreadable)"}" but is labelled "${type}"`);
  if (!isStringSequence(blob, shape.strings)) throw invalid("the key is truncated or corrupted (was it copied completely?)");
  return { kind: "key", type, blob, fingerprint: fingerprintSha256(blob) };
}

/** Options of {@link createHostVerifier}: the host-key subset of the DESIGN.md `Connection`. */
export interface HostVerifierOptions {
  /** The SSH server's host name or address, as dialled (matched case-insensitively, as OpenSSH does). */
  readonly host: string;
  /** The SSH server's TCP port (22 is stored in known_hosts as plain `host`, others as `[host]:port`). */
  readonly port: number;
  /** Pinned key or `SHA256:` fingerprint (see {@link parseHostKeyPin}). Wins over known_hosts. */
  readonly hostKey?: string;
  /** known_hosts file, read once, synchronously, at creation; a leading `~/` means the home directory. Default `~/.ssh/known_hosts`. */
  readonly knownHostsPath?: string;
  /** known_hosts content to use instead of reading a file; `knownHostsPath` then only names it in messages. */
  readonly knownHostsText?: string;
  /** `true` accepts every host key (explicit opt-in; anything else is false). Default false. */
  readonly insecureSkipHostKeyCheck?: boolean;
}

/** How a {@link HostKeyVerifier} decides. `unverifiable`: no usable source, every key is rejected (SSH_HOST_KEY_UNVERIFIED). */
export type HostKeyPolicy = "insecure" | "pinned-key" | "pinned-fingerprint" | "known-hosts" | "unverifiable";

/** A host key verifier for one ssh2 connection. */
export interface HostKeyVerifier {
  /**
   * Pass as ssh2's `hostVerifier` (and leave `hostHash` unset, so it receives the raw key blob).
   * Synchronous on purpose: ssh2 treats anything but `false`, including a Promise, as acceptance
   * (AGENT-FACTS.md). Called again on every re-key; it does no I/O and gives the same answer each time.
   */
  readonly hostVerifier: (key: Buffer) => boolean;
  /**
   * Why the last rejected key was rejected (SSH_HOST_KEY_MISMATCH, _UNKNOWN, _REVOKED or _UNVERIFIED), or undefined.
   * When ssh2 fails with "Host denied (verification failed)", throw this instead.
   */
  readonly failure: QuiesceError | undefined;
  readonly policy: HostKeyPolicy;
  /**
   * ssh2 `algorithms.serverHostKey` to use, so the server is asked first for a key type we can verify
   * (OpenSSH does the same with known_hosts types); undefined means keep ssh2's defaults.
   */
  readonly serverHostKeyAlgorithms: readonly string[] | undefined;
  /** known_hosts lines that were skipped as unusable (empty unless the policy is `known-hosts`); worth logging. */
  readonly knownHostsWarnings: readonly KnownHostsWarning[];
}

/** The known_hosts source: parsed text, or why it cannot be used (only for the default path; explicit paths throw). */
type KnownHostsSource = { file: KnownHostsFile; missing: boolean } | { path: string; error: unknown };

function loadKnownHosts(opts: HostVerifierOptions): KnownHostsSource {
  if (opts.knownHostsText !== undefined) {
    return { file: parseKnownHosts(opts.knownHostsText, opts.knownHostsPath ?? "knownHostsText"), missing: false };
  }
  const explicit = opts.knownHostsPath !== undefined;
  let path = opts.knownHostsPath ?? "~/.ssh/known_hosts";
  try {
    if (path === "~" || path.startsWith("~/")) path = join(homedir(), path.slice(1));
    return { file: parseKnownHosts(readFileSync(path, "utf8"), path), missing: false };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (explicit) {
      const why = code === "ENOENT" ? "does not exist" : `cannot be read (${code ?? String(error)})`;
      throw new QuiesceError(
        "INVALID_INPUT",
        `knownHostsPath ${path} ${why}. Give an existing known_hosts file, or pin the key with hostKey.`,
        { field: "knownHostsPath", path },
        { cause: error },
      );
    }
    // A missing default file is an empty one (as for ssh): the host is then unknown, and the message says how to add it.
    if (code === "ENOENT") return { file: parseKnownHosts("", path), missing: true };
    return { path, error };
  }
}

function algorithmsFor(types: Iterable<string>): readonly string[] | undefined {
  const preferred = [...types].flatMap((type) => KEY_TYPES.get(type)?.algorithms ?? []);
  if (preferred.length === 0) return undefined;
  const ordered = [...SSH2_DEFAULT_SERVER_HOST_KEY, "ssh-dss"].filter((a) => preferred.includes(a));
  return [...ordered, ...SSH2_DEFAULT_SERVER_HOST_KEY.filter((a) => !preferred.includes(a))];
}

/**
 * Builds the host key verifier for `host:port` (see the module doc for precedence). Everything is read and
 * precomputed here, so the returned `hostVerifier` is cheap and deterministic.
 *
 * @throws QuiesceError `INVALID_INPUT` for a bad `hostKey`, or an explicit `knownHostsPath` that cannot be read.
 */
export function createHostVerifier(opts: HostVerifierOptions): HostKeyVerifier {
  const name = knownHostsName(opts.host, opts.port);
  const hint = howToObtain(opts.host, opts.port);
  const fields = { host: opts.host, port: opts.port };
  let failure: QuiesceError | undefined;
  let policy: HostKeyPolicy;
  let algorithms: readonly string[] | undefined;
  let warnings: readonly KnownHostsWarning[] = [];
  let check: (key: Buffer, type: string) => QuiesceError | undefined;
  const got = (key: Buffer, type: string): string => `${type} ${fingerprintSha256(key)}`;

  if (opts.insecureSkipHostKeyCheck === true) {
    policy = "insecure";
    check = () => undefined;
  } else if (opts.hostKey !== undefined) {
    const pin = parseHostKeyPin(opts.hostKey, opts);
    policy = pin.kind === "key" ? "pinned-key" : "pinned-fingerprint";
    algorithms = pin.kind === "key" ? algorithmsFor([pin.type]) : undefined;
    check = (key, type) => {
      if (pin.kind === "key" ? key.equals(pin.blob) : fingerprintSha256(key) === pin.fingerprint) return undefined;
      const expected = pin.kind === "key" ? `${pin.type} ${pin.fingerprint}` : pin.fingerprint;
      const typeNote =
        pin.kind === "fingerprint"
          ? ` If you pinned the fingerprint of another key type of this host, pin its ${type} fingerprint or the full key line instead.`
          : "";
      return new QuiesceError(
        "SSH_HOST_KEY_MISMATCH",
        `SSH host key of ${name} does not match the pinned hostKey: expected ${expected}, the server presented ${got(key, type)}. ` +
          `The host may have been reinstalled, or someone may be intercepting the connection. Verify the new key out of band, ` +
          `then update hostKey.${typeNote} ${hint}`,
        { ...fields, expectedFingerprints: [pin.fingerprint], gotFingerprint: fingerprintSha256(key), keyType: type },
      );
    };
  } else {
    const source = loadKnownHosts(opts);
    if ("error" in source) {
      policy = "unverifiable";
      check = (key, type) =>
        new QuiesceError(
          "SSH_HOST_KEY_UNVERIFIED",
          `Cannot verify the SSH host key of ${name}: no hostKey is set and the known_hosts file ${source.path} cannot be read ` +
            `(${String(source.error)}). The server presented ${got(key, type)}. Pin it with hostKey (the key line or its ` +
            `SHA256 fingerprint) after checking it out of band, or set knownHostsPath to a readable file. ${hint}`,
          { ...fields, path: source.path, gotFingerprint: fingerprintSha256(key), keyType: type },
          { cause: source.error },
        );
    } else {
      const { file, missing } = source;
      const forHost = knownHostsForHost(file, opts.host, opts.port);
      policy = "known-hosts";
      warnings = file.warnings;
      algorithms = algorithmsFor(forHost.entries.filter((e) => e.marker === undefined).map((e) => e.keyType));
      // Mentioned in UNKNOWN: a malformed line may be the entry the user meant for this host.
      const firstWarnings = warnings.slice(0, 3).map((w) => `line ${w.line}: ${w.message}`).join("; ");
      const skipped = warnings.length === 0 ? "" : ` Note: ${file.source} has unusable lines (${firstWarnings}).`;
      check = (key, type) => {
        const found = lookupHostKey(forHost, opts.host, opts.port, { type, blob: key });
        const at = `${file.source} line ${found.matchedLine}`;
        const more = { ...fields, path: file.source, line: found.matchedLine, gotFingerprint: fingerprintSha256(key), keyType: type };
        switch (found.status) {
          case "match":
            return undefined;
          case "revoked":
            return new QuiesceError(
              "SSH_HOST_KEY_REVOKED",
              `SSH host key of ${name} (${got(key, type)}) is marked @revoked in ${at}; refusing to connect. ` +
                "Do not trust this key: ask the host's administrator to replace it, then verify the new key out of band.",
              more,
            );
          case "mismatch":
            return new QuiesceError(
              "SSH_HOST_KEY_MISMATCH",
              `SSH host key of ${name} has changed: ${at} expects ${type} ${found.expectedFingerprints?.join(" or ")}, the server ` +
                `presented ${got(key, type)}. The host may have been reinstalled, or someone may be intercepting the connection. ` +
                `Verify the new key out of band, then remove the old entry with \`ssh-keygen -R '${name}' -f ${file.source}\` and add ` +
                `the new one (\`ssh-keyscan -p ${opts.port} ${opts.host} >> ${file.source}\`), or pin it with hostKey. ${hint}`,
              { ...more, expectedFingerprints: found.expectedFingerprints },
            );
          case "unknown": {
            const where = missing ? `${file.source}, which does not exist` : file.source;
            const others = found.knownTypes?.length ? ` (it lists only other key types for this host: ${found.knownTypes.join(", ")})` : "";
            return new QuiesceError(
              "SSH_HOST_KEY_UNKNOWN",
              `SSH host ${name} is not in known_hosts ${where}${others}; the server presented ${got(key, type)}. ` +
                `After verifying that fingerprint out of band, add the host with ` +
                `\`ssh-keyscan -p ${opts.port} ${opts.host} >> ${file.source}\`, or set hostKey to the key or its fingerprint. ` +
                `${hint}${skipped}`,
              { ...more, knownTypes: found.knownTypes },
            );
          }
        }
      };
    }
  }

  return {
    hostVerifier: (key: Buffer): boolean => {
      const rejection = check(key, sshKeyType(key) ?? "(unreadable key type)");
      if (rejection !== undefined) failure = rejection;
      return rejection === undefined;
    },
    get failure() {
      return failure;
    },
    policy,
    serverHostKeyAlgorithms: algorithms,
    knownHostsWarnings: warnings,
  };
}
