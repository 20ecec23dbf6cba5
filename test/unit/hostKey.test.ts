import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import os, { tmpdir } from "node:os";
import { join } from "node:path";
import type { ConnectConfig } from "ssh2";
import { isQuiesceError, QuiesceError, type QuiesceErrorCode } from "../../provider/errors";
import {
  createHostVerifier,
  fingerprintSha256,
  parseHostKeyPin,
  SSH2_DEFAULT_SERVER_HOST_KEY,
  type HostKeyVerifier,
  type HostVerifierOptions,
} from "../../provider/transport/hostKey";

// Real keys from the real ssh-keygen (openssh-client is a test prerequisite; a missing binary fails the suite loudly).
interface TestKey {
  readonly type: string;
  readonly blob: Buffer;
  /** The .pub line: `TYPE BASE64 COMMENT`. */
  readonly line: string;
  /** `TYPE BASE64`, as in a known_hosts line after the host field. */
  readonly text: string;
  readonly pubPath: string;
}

let dir: string;
let ed1: TestKey;
let ed2: TestKey;
let rsa: TestKey;
let ecdsa: TestKey;

function makeKey(name: string, args: string[]): TestKey {
  const file = join(dir, name);
  execFileSync("ssh-keygen", ["-q", ...args, "-N", "", "-C", `root@${name}`, "-f", file]);
  const line = readFileSync(`${file}.pub`, "utf8").trim();
  const [type, base64] = line.split(" ");
  return { type, blob: Buffer.from(base64, "base64"), line, text: `${type} ${base64}`, pubPath: `${file}.pub` };
}

/** What `ssh-keygen -lf` prints as the fingerprint of a key file. */
function sshKeygenFingerprint(pubPath: string): string {
  return execFileSync("ssh-keygen", ["-E", "sha256", "-lf", pubPath], { encoding: "utf8" }).split(" ")[1];
}

/** Runs `fn`, which must throw a QuiesceError, and returns it. */
function thrown(fn: () => unknown): QuiesceError {
  try {
    fn();
  } catch (error) {
    if (error instanceof QuiesceError) return error;
    throw error;
  }
  throw new Error("expected a QuiesceError, nothing was thrown");
}

/** Calls the verifier like ssh2 does and checks the answer is a plain boolean, never a Promise (AGENT-FACTS.md). */
function verify(verifier: HostKeyVerifier, key: TestKey): boolean {
  const answer: unknown = verifier.hostVerifier(key.blob);
  expect(typeof answer).toBe("boolean");
  return answer === true;
}

function expectRejected(verifier: HostKeyVerifier, key: TestKey, code: QuiesceErrorCode): QuiesceError {
  expect(verify(verifier, key)).toBe(false);
  const failure = verifier.failure;
  expect(isQuiesceError(failure, code)).toBe(true);
  return failure as QuiesceError;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "hostkey-test-"));
  ed1 = makeKey("ed1", ["-t", "ed25519"]);
  ed2 = makeKey("ed2", ["-t", "ed25519"]);
  rsa = makeKey("rsa", ["-t", "rsa", "-b", "2048"]);
  ecdsa = makeKey("ecdsa", ["-t", "ecdsa", "-b", "384"]);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("fingerprintSha256", () => {
  test("equals `ssh-keygen -lf` for ed25519, rsa and ecdsa keys, without padding", () => {
    for (const k of [ed1, rsa, ecdsa]) {
      const ours = fingerprintSha256(k.blob);
      expect(ours).toBe(sshKeygenFingerprint(k.pubPath));
      expect(ours).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    }
  });
});

describe("parseHostKeyPin", () => {
  test.each([
    ["ed25519 with comment", () => ed1.line, () => ed1],
    ["ed25519 without comment", () => ed1.text, () => ed1],
    ["rsa", () => rsa.line, () => rsa],
    ["ecdsa (nistp384)", () => `  ${ecdsa.line}  `, () => ecdsa],
  ])("a public key line: %s", (_name, value, expected) => {
    const pin = parseHostKeyPin(value());
    expect(pin).toEqual({ kind: "key", type: expected().type, blob: expected().blob, fingerprint: fingerprintSha256(expected().blob) });
  });

  test("a SHA256 fingerprint, as ssh-keygen prints it (a stray = padding is tolerated)", () => {
    const fingerprint = sshKeygenFingerprint(ed1.pubPath);
    expect(parseHostKeyPin(fingerprint)).toEqual({ kind: "fingerprint", fingerprint });
    expect(parseHostKeyPin(`${fingerprint}=`)).toEqual({ kind: "fingerprint", fingerprint });
  });

  test.each([
    ["empty", () => "   ", /is empty/],
    ["several lines", () => `${ed1.line}\n${rsa.line}`, /several lines/],
    ["short fingerprint", () => "SHA256:abc", /43 characters.*this has 3/],
    ["MD5 fingerprint", () => "MD5:12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0", /MD5 fingerprints are not accepted/],
    ["bare MD5 hex", () => "12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0", /MD5/],
    ["ssh-keyscan line", () => `hv1 ${ed1.text}`, /remove the leading host name "hv1"/],
    ["unsupported type", () => `ssh-ed448 ${ed1.text.split(" ")[1]}`, /unsupported key type "ssh-ed448"/],
    ["certificate type", () => `ssh-ed25519-cert-v01@openssh.com ${ed1.text.split(" ")[1]}`, /unsupported key type/],
    ["missing key", () => "ssh-ed25519", /missing or not base64/],
    ["not base64", () => "ssh-ed25519 not*base64", /missing or not base64/],
    ["label differs from the key", () => `ssh-rsa ${ed1.text.split(" ")[1]}`, /encodes type "ssh-ed25519" but is labelled "ssh-rsa"/],
    ["truncated key", () => `ssh-ed25519 ${ed1.text.split(" ")[1].slice(0, 40)}`, /truncated or corrupted/],
    ["extra bytes", () => `ssh-ed25519 ${Buffer.concat([ed1.blob, Buffer.alloc(3)]).toString("base64")}`, /truncated or corrupted/],
  ])("invalid: %s -> INVALID_INPUT explaining what is wrong and how to get a valid value", (_name, value, problem) => {
    const error = thrown(() => parseHostKeyPin(value(), { host: "hv1", port: 2222 }));
    expect(error.code).toBe("INVALID_INPUT");
    expect(error.fields.field).toBe("hostKey");
    expect(error.message).toMatch(problem);
    expect(error.message).toContain("`ssh-keyscan -p 2222 hv1 | ssh-keygen -lf -`");
    expect(error.message).toMatch(/such as "ssh-ed25519 AAAA[^"]+"/);
  });

  test("the examples in the error message are themselves valid and consistent", () => {
    const message = thrown(() => parseHostKeyPin("nonsense")).message;
    const exampleKey = /a public key line such as "([^"]+)"/.exec(message)?.[1] ?? "";
    const exampleFingerprint = /a SHA256 fingerprint such as "([^"]+)"/.exec(message)?.[1] ?? "";
    const pin = parseHostKeyPin(exampleKey);
    expect(pin.kind).toBe("key");
    expect(parseHostKeyPin(exampleFingerprint)).toEqual({ kind: "fingerprint", fingerprint: pin.fingerprint });
    expect(message).toContain("ssh-keyscan -p 22 HOST");
  });
});

describe("createHostVerifier", () => {
  const base: HostVerifierOptions = { host: "hv1", port: 22 };

  describe("insecure opt-in", () => {
    test("insecureSkipHostKeyCheck: true accepts every key, and only true does", () => {
      const verifier = createHostVerifier({ ...base, insecureSkipHostKeyCheck: true, knownHostsText: `hv1 ${ed2.text}\n` });
      expect(verifier.policy).toBe("insecure");
      expect(verify(verifier, ed1)).toBe(true);
      expect(verify(verifier, rsa)).toBe(true);
      expect(verifier.failure).toBeUndefined();

      const strict = createHostVerifier({ ...base, insecureSkipHostKeyCheck: false, knownHostsText: `hv1 ${ed2.text}\n` });
      expect(strict.policy).toBe("known-hosts");
      expectRejected(strict, ed1, "SSH_HOST_KEY_MISMATCH");
    });
  });

  describe("pinned hostKey", () => {
    test("a pinned key accepts that key, rejects another with expected vs got fingerprints", () => {
      const verifier = createHostVerifier({ ...base, port: 2222, hostKey: ed1.line });
      expect(verifier.policy).toBe("pinned-key");
      expect(verify(verifier, ed1)).toBe(true);
      expect(verifier.failure).toBeUndefined();
      const failure = expectRejected(verifier, ed2, "SSH_HOST_KEY_MISMATCH");
      expect(failure.message).toContain(`expected ssh-ed25519 ${fingerprintSha256(ed1.blob)}`);
      expect(failure.message).toContain(`presented ssh-ed25519 ${fingerprintSha256(ed2.blob)}`);
      expect(failure.message).toContain("[hv1]:2222");
      expect(failure.message).toMatch(/out of band.*update hostKey/);
      expect(failure.fields).toMatchObject({ host: "hv1", port: 2222, gotFingerprint: fingerprintSha256(ed2.blob) });
    });

    test("a pinned fingerprint accepts the key with that fingerprint only", () => {
      const verifier = createHostVerifier({ ...base, hostKey: sshKeygenFingerprint(rsa.pubPath) });
      expect(verifier.policy).toBe("pinned-fingerprint");
      expect(verifier.serverHostKeyAlgorithms).toBeUndefined();
      expect(verify(verifier, rsa)).toBe(true);
      const failure = expectRejected(verifier, ed1, "SSH_HOST_KEY_MISMATCH");
      expect(failure.message).toContain("pin its ssh-ed25519 fingerprint or the full key line");
    });

    test("the pin wins over known_hosts, which is then not even read", () => {
      const verifier = createHostVerifier({
        ...base,
        hostKey: ed1.line,
        knownHostsText: `hv1 ${ed2.text}\n`,
      });
      expect(verify(verifier, ed1)).toBe(true);
      expect(verify(verifier, ed2)).toBe(false);
      // A knownHostsPath that does not exist is no error when a pin is given.
      const withMissingFile = createHostVerifier({ ...base, hostKey: ed1.line, knownHostsPath: join(dir, "nope") });
      expect(verify(withMissingFile, ed1)).toBe(true);
    });

    test("a bad pin fails at creation with INVALID_INPUT naming the host and port to scan", () => {
      const error = thrown(() => createHostVerifier({ ...base, port: 2200, hostKey: "ssh-ed25519" }));
      expect(error.code).toBe("INVALID_INPUT");
      expect(error.message).toContain("ssh-keyscan -p 2200 hv1 | ssh-keygen -lf -");
    });

    test("a pinned key makes ssh2 ask for its type first; the rest of ssh2's defaults follow", () => {
      expect(createHostVerifier({ ...base, hostKey: rsa.line }).serverHostKeyAlgorithms).toEqual([
        "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
      ]);
      expect(createHostVerifier({ ...base, hostKey: ecdsa.line }).serverHostKeyAlgorithms?.[0]).toBe("ecdsa-sha2-nistp384");
    });
  });

  describe("known_hosts", () => {
    const text = (): string =>
      [`# fleet`, `hv1 ${ed1.text}`, `[hv1]:2222 ${rsa.text}`, `@revoked * ${ecdsa.text}`, `hv9,hv8 ${ecdsa.text}`, "broken line"].join("\n");

    test("the known key is accepted, with no failure recorded", () => {
      const verifier = createHostVerifier({ ...base, knownHostsText: text() });
      expect(verifier.policy).toBe("known-hosts");
      expect(verify(verifier, ed1)).toBe(true);
      expect(verifier.failure).toBeUndefined();
      expect(verifier.knownHostsWarnings).toEqual([{ line: 6, message: expect.stringMatching(/expected/) }]);
    });

    test("a changed key -> SSH_HOST_KEY_MISMATCH with expected vs got, the line, and what to do", () => {
      const verifier = createHostVerifier({ ...base, knownHostsPath: "/etc/fleet_hosts", knownHostsText: text() });
      const failure = expectRejected(verifier, ed2, "SSH_HOST_KEY_MISMATCH");
      expect(failure.message).toContain(`/etc/fleet_hosts line 2 expects ssh-ed25519 ${fingerprintSha256(ed1.blob)}`);
      expect(failure.message).toContain(`presented ssh-ed25519 ${fingerprintSha256(ed2.blob)}`);
      expect(failure.message).toContain("ssh-keygen -R 'hv1' -f /etc/fleet_hosts");
      expect(failure.message).toMatch(/out of band/);
      expect(failure.fields).toMatchObject({ line: 2, path: "/etc/fleet_hosts", expectedFingerprints: [fingerprintSha256(ed1.blob)] });
    });

    test("an unlisted host -> SSH_HOST_KEY_UNKNOWN naming the file, the fingerprint, and how to add it", () => {
      const verifier = createHostVerifier({ host: "hv2", port: 2200, knownHostsPath: "/k/known_hosts", knownHostsText: text() });
      expect(verifier.serverHostKeyAlgorithms).toBeUndefined();
      const failure = expectRejected(verifier, ed1, "SSH_HOST_KEY_UNKNOWN");
      expect(failure.message).toContain("[hv2]:2200 is not in known_hosts /k/known_hosts");
      expect(failure.message).toContain(fingerprintSha256(ed1.blob));
      expect(failure.message).toContain("`ssh-keyscan -p 2200 hv2 >> /k/known_hosts`");
      expect(failure.message).toContain("set hostKey");
      // The unusable line is mentioned, in case it was meant to be this host's entry.
      expect(failure.message).toContain("line 6");
    });

    test("only another key type known -> UNKNOWN listing it, and ssh2 is told to ask for that type first", () => {
      const verifier = createHostVerifier({ ...base, port: 2222, knownHostsText: text() });
      expect(verifier.serverHostKeyAlgorithms?.slice(0, 3)).toEqual(["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]);
      const failure = expectRejected(verifier, ed1, "SSH_HOST_KEY_UNKNOWN");
      expect(failure.message).toContain("only other key types for this host: ssh-rsa");
      expect(verify(verifier, rsa)).toBe(true);
    });

    test("a revoked key -> SSH_HOST_KEY_REVOKED with the line, even for a host that lists it", () => {
      const verifier = createHostVerifier({ ...base, host: "hv9", knownHostsText: text() });
      const failure = expectRejected(verifier, ecdsa, "SSH_HOST_KEY_REVOKED");
      expect(failure.message).toContain("@revoked in knownHostsText line 4");
      expect(failure.fields.line).toBe(4);
    });

    test("the file is read once at creation: later changes or deletion do not change answers (re-keys)", () => {
      const path = join(dir, "read_once");
      writeFileSync(path, `hv1 ${ed1.text}\n`);
      const verifier = createHostVerifier({ ...base, knownHostsPath: path });
      unlinkSync(path);
      for (let i = 0; i < 3; i++) expect(verify(verifier, ed1)).toBe(true);
      expect(verify(verifier, ed2)).toBe(false);
      expect(verifier.failure?.code).toBe("SSH_HOST_KEY_MISMATCH");
    });

    test("hashed entries from the real `ssh-keygen -H` verify", () => {
      const path = join(dir, "hashed_hosts");
      writeFileSync(path, `hv1 ${ed1.text}\n[hv1]:2222 ${rsa.text}\n`);
      execFileSync("ssh-keygen", ["-q", "-H", "-f", path], { stdio: ["ignore", "ignore", "pipe"] });
      expect(readFileSync(path, "utf8")).not.toContain("hv1");
      expect(verify(createHostVerifier({ ...base, knownHostsPath: path }), ed1)).toBe(true);
      expect(verify(createHostVerifier({ ...base, port: 2222, knownHostsPath: path }), rsa)).toBe(true);
      expectRejected(createHostVerifier({ ...base, knownHostsPath: path }), ed2, "SSH_HOST_KEY_MISMATCH");
    });

    test("an explicit knownHostsPath that does not exist -> INVALID_INPUT naming the path, at creation", () => {
      const missing = join(dir, "no_such_known_hosts");
      const error = thrown(() => createHostVerifier({ ...base, knownHostsPath: missing }));
      expect(error.code).toBe("INVALID_INPUT");
      expect(error.message).toContain(`${missing} does not exist`);
      expect(error.fields).toMatchObject({ field: "knownHostsPath", path: missing });
      expect((error.cause as NodeJS.ErrnoException).code).toBe("ENOENT");
    });

    test("an explicit knownHostsPath that cannot be read -> INVALID_INPUT with the reason", () => {
      const error = thrown(() => createHostVerifier({ ...base, knownHostsPath: dir }));
      expect(error.code).toBe("INVALID_INPUT");
      expect(error.message).toContain(`${dir} cannot be read (EISDIR)`);
    });

    test("a leading ~/ in knownHostsPath is the home directory", () => {
      const home = mkdtempSync(join(dir, "home-"));
      writeFileSync(join(home, "hosts"), `hv1 ${ed1.text}\n`);
      withHome(home, () => {
        expect(verify(createHostVerifier({ ...base, knownHostsPath: "~/hosts" }), ed1)).toBe(true);
      });
    });
  });

  describe("default ~/.ssh/known_hosts", () => {
    test("is used when nothing else is given", () => {
      const home = mkdtempSync(join(dir, "home-"));
      mkdirSync(join(home, ".ssh"));
      writeFileSync(join(home, ".ssh", "known_hosts"), `hv1 ${ed1.text}\n`);
      withHome(home, () => {
        const verifier = createHostVerifier(base);
        expect(verify(verifier, ed1)).toBe(true);
        expectRejected(verifier, ed2, "SSH_HOST_KEY_MISMATCH");
      });
    });

    test("missing -> treated as empty: SSH_HOST_KEY_UNKNOWN that says the file does not exist", () => {
      const home = mkdtempSync(join(dir, "home-"));
      withHome(home, () => {
        const verifier = createHostVerifier(base);
        expect(verifier.policy).toBe("known-hosts");
        const failure = expectRejected(verifier, ed1, "SSH_HOST_KEY_UNKNOWN");
        expect(failure.message).toContain(`${join(home, ".ssh", "known_hosts")}, which does not exist`);
        expect(failure.message).toContain(`ssh-keyscan -p 22 hv1 >> ${join(home, ".ssh", "known_hosts")}`);
      });
    });

    test("unreadable -> every key rejected with SSH_HOST_KEY_UNVERIFIED saying how to pin", () => {
      const home = mkdtempSync(join(dir, "home-"));
      mkdirSync(join(home, ".ssh", "known_hosts"), { recursive: true }); // a directory: EISDIR, even as root
      withHome(home, () => {
        const verifier = createHostVerifier(base);
        expect(verifier.policy).toBe("unverifiable");
        const failure = expectRejected(verifier, ed1, "SSH_HOST_KEY_UNVERIFIED");
        expect(failure.message).toContain("Pin it with hostKey");
        expect(failure.message).toContain(fingerprintSha256(ed1.blob));
        expect(failure.message).toContain("ssh-keyscan -p 22 hv1 | ssh-keygen -lf -");
        expect((failure.cause as NodeJS.ErrnoException).code).toBe("EISDIR");
      });
    });
  });

  test("the verifier is the synchronous one-argument form (ssh2 treats a Promise or undefined as async/accept)", () => {
    const verifiers = [
      createHostVerifier({ ...base, insecureSkipHostKeyCheck: true }),
      createHostVerifier({ ...base, hostKey: ed1.line }),
      createHostVerifier({ ...base, knownHostsText: `hv1 ${ed1.text}\n@revoked * ${ed2.text}\n` }),
    ];
    for (const verifier of verifiers) {
      // Type-checks against @types/ssh2 as its SyncHostVerifier, the form ssh2 runs synchronously.
      const config: ConnectConfig = { hostVerifier: verifier.hostVerifier };
      expect(config.hostVerifier).toBe(verifier.hostVerifier);
      expect(verifier.hostVerifier.length).toBe(1);
      expect(verifier.hostVerifier.constructor.name).toBe("Function");
      for (const k of [ed1, ed2, rsa]) {
        const answer: unknown = verifier.hostVerifier(k.blob);
        expect(answer === true || answer === false).toBe(true);
      }
    }
  });

  test("the verifier never throws, even on a key blob it cannot read", () => {
    const verifier = createHostVerifier({ ...base, knownHostsText: `hv1 ${ed1.text}\n` });
    expect(verifier.hostVerifier(Buffer.from([1, 2, 3]))).toBe(false);
    expect(verifier.failure?.code).toBe("SSH_HOST_KEY_UNKNOWN");
  });

  test("our copy of ssh2's default host key algorithms matches the installed ssh2", () => {
    // Guards SSH2_DEFAULT_SERVER_HOST_KEY against an ssh2 upgrade (internal module, no public export).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const constants = require("ssh2/lib/protocol/constants") as { DEFAULT_SERVER_HOST_KEY: string[] };
    expect([...SSH2_DEFAULT_SERVER_HOST_KEY]).toEqual(constants.DEFAULT_SERVER_HOST_KEY);
  });
});

/**
 * Runs `fn` with os.homedir() returning `home`. (Setting $HOME would not do: jest gives the test a copy of
 * process.env, which libuv's homedir lookup never sees.)
 */
function withHome(home: string, fn: () => void): void {
  const spy = jest.spyOn(os, "homedir").mockReturnValue(home);
  try {
    fn();
    expect(spy).toHaveBeenCalled();
  } finally {
    spy.mockRestore();
  }
}
