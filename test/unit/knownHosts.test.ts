import { execFileSync } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  fingerprintSha256,
  hostsMatch,
  knownHostsForHost,
  knownHostsName,
  lookupHostKey,
  parseKnownHosts,
  sshKeyType,
  type KnownHostsFile,
} from "../../provider/transport/knownHosts";

// Real keys from the real ssh-keygen (openssh-client is a test prerequisite; a missing binary fails the suite loudly).
interface TestKey {
  readonly type: string;
  readonly base64: string;
  readonly blob: Buffer;
  /** `TYPE BASE64`, as in a known_hosts line after the host field. */
  readonly text: string;
}

let dir: string;
let ed1: TestKey;
let ed2: TestKey;
let ecdsa: TestKey;

function makeKey(name: string, type: "ed25519" | "ecdsa" | "rsa"): TestKey {
  const file = join(dir, name);
  execFileSync("ssh-keygen", ["-q", "-t", type, "-N", "", "-C", name, "-f", file]);
  const [keyType, base64] = readFileSync(`${file}.pub`, "utf8").trim().split(" ");
  return { type: keyType, base64, blob: Buffer.from(base64, "base64"), text: `${keyType} ${base64}` };
}

/** The hashed host field OpenSSH writes for `name` with `salt` (sshd(8): HMAC-SHA1 keyed by the salt). */
function hashedName(name: string, salt: Buffer = randomBytes(20)): string {
  return `|1|${salt.toString("base64")}|${createHmac("sha1", salt).update(name).digest("base64")}`;
}

const key = (k: TestKey): { type: string; blob: Buffer } => ({ type: k.type, blob: k.blob });

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "knownhosts-test-"));
  ed1 = makeKey("ed1", "ed25519");
  ed2 = makeKey("ed2", "ed25519");
  ecdsa = makeKey("ecdsa", "ecdsa");
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("helpers", () => {
  test("the known_hosts name is plain host for port 22 and [host]:port otherwise, lower-cased", () => {
    expect(knownHostsName("HV1.Example.com", 22)).toBe("hv1.example.com");
    expect(knownHostsName("hv1", 2222)).toBe("[hv1]:2222");
    expect(knownHostsName("::1", 2222)).toBe("[::1]:2222");
  });

  test("the key type is the first length-prefixed string of the blob", () => {
    expect(sshKeyType(ed1.blob)).toBe("ssh-ed25519");
    expect(sshKeyType(ecdsa.blob)).toBe("ecdsa-sha2-nistp256");
    expect(sshKeyType(Buffer.from([0, 0, 0, 9, 0x61]))).toBeUndefined();
    expect(sshKeyType(Buffer.alloc(2))).toBeUndefined();
  });
});

describe("parseKnownHosts", () => {
  test("plain, comma list, [host]:port, hashed, markers and a comment field", () => {
    const hashed = hashedName("hv3");
    const text = [
      `hv1 ${ed1.text} root@hv1`,
      `hv1,10.0.0.1,[hv1]:2222 ${ecdsa.text}`,
      `${hashed} ${ed2.text}`,
      `@revoked * ${ed2.text}`,
      `@cert-authority *.example.com ${ed1.text} my CA`,
    ].join("\n");
    const file = parseKnownHosts(text, "/x/known_hosts");
    expect(file.source).toBe("/x/known_hosts");
    expect(file.warnings).toEqual([]);
    expect(file.entries.map((e) => [e.line, e.marker, e.keyType])).toEqual([
      [1, undefined, "ssh-ed25519"],
      [2, undefined, "ecdsa-sha2-nistp256"],
      [3, undefined, "ssh-ed25519"],
      [4, "revoked", "ssh-ed25519"],
      [5, "cert-authority", "ssh-ed25519"],
    ]);
    expect(file.entries[0].keyBlob.equals(ed1.blob)).toBe(true);
    expect(file.entries[1].hosts).toEqual({ kind: "patterns", patterns: ["hv1", "10.0.0.1", "[hv1]:2222"] });
    expect(file.entries[2].hosts.kind).toBe("hashed");
  });

  test("comments, blank lines, indentation, tabs and CRLF line ends are handled", () => {
    const text = `# a comment\r\n\r\n   \r\n\t  hv1\t${ed1.text}\r\n  # indented comment\r\nhv2 ${ed2.text}\r\n`;
    const file = parseKnownHosts(text);
    expect(file.warnings).toEqual([]);
    expect(file.entries.map((e) => e.line)).toEqual([4, 6]);
    expect(lookupHostKey(file, "hv1", 22, key(ed1)).status).toBe("match");
    expect(file.entries[1].keyBlob.equals(ed2.blob)).toBe(true);
  });

  test.each([
    ["unknown marker", () => `@trusted hv1 ${ed1.text}`, /unknown marker @trusted/],
    ["missing key", () => "hv1 ssh-ed25519", /expected \[@marker\] hostnames keytype base64-key/],
    ["marker only", () => "@revoked", /expected/],
    ["key not base64", () => "hv1 ssh-ed25519 !!notbase64!!", /not a base64 SSH public key/],
    ["key too short to hold a type", () => "hv1 ssh-ed25519 AAAA", /not a base64 SSH public key/],
    ["written type differs from the key's", () => `hv1 ssh-rsa ${ed1.base64}`, /ssh-rsa does not match the key's own type ssh-ed25519/],
    ["hashed name with a bad salt", () => `|1|c2FsdA==|${"A".repeat(27)}= ${ed1.text}`, /malformed hashed host name/],
    ["hashed name of an unknown version", () => `|2|${hashedName("hv1").slice(3)} ${ed1.text}`, /malformed hashed host name/],
    ["empty pattern in a list", () => `hv1,,hv2 ${ed1.text}`, /empty host pattern/],
    ["a lone negation", () => `hv1,! ${ed1.text}`, /empty host pattern/],
    ["SSH protocol 1 key", () => "hv1 2048 35 12345678901234567890", /protocol 1/],
  ])("a malformed line is skipped and reported with its line number: %s", (_name, badLine, message) => {
    const file = parseKnownHosts(`# header\n${badLine()}\nhv9 ${ed2.text}\n`);
    expect(file.warnings).toHaveLength(1);
    expect(file.warnings[0].line).toBe(2);
    expect(file.warnings[0].message).toMatch(message);
    // The good line after it is still used.
    expect(file.entries.map((e) => e.line)).toEqual([3]);
  });

  test("never throws on garbage, and reports each unusable line", () => {
    for (let i = 0; i < 200; i++) {
      const garbage = randomBytes(64).toString("latin1");
      const file = parseKnownHosts(garbage);
      for (const w of file.warnings) expect(w.line).toBeGreaterThanOrEqual(1);
    }
    const file = parseKnownHosts("x\ny z\n@@ @@ @@ @@\n|1|| a b");
    expect(file.entries).toEqual([]);
    expect(file.warnings.map((w) => w.line)).toEqual([1, 2, 3, 4]);
  });
});

describe("host matching", () => {
  const matches = (field: string, host: string, port = 22): boolean => {
    const file = parseKnownHosts(`${field} ${ed1.text}`);
    expect(file.warnings).toEqual([]);
    return hostsMatch(file.entries[0].hosts, knownHostsName(host, port));
  };

  test.each([
    ["hv1", "hv1", 22, true],
    ["hv1", "HV1", 22, true],
    ["HV1.Example.COM", "hv1.example.com", 22, true],
    ["hv1", "hv2", 22, false],
    ["hv1", "hv1", 2222, false], // a plain entry is for port 22 only
    ["[hv1]:2222", "hv1", 2222, true],
    ["[hv1]:2222", "hv1", 22, false],
    ["[hv1]:2222", "hv1", 2223, false],
    ["[hv1]:22", "hv1", 22, false], // OpenSSH writes port 22 as plain host, and so looks it up
    ["a,b,hv1,c", "hv1", 22, true],
    ["*.example.com", "a.example.com", 22, true],
    ["*.example.com", "example.com", 22, false],
    ["*.example.com", "a.example.com", 2222, false],
    ["[*.example.com]:2222", "a.example.com", 2222, true],
    ["*", "anything", 2222, true],
    ["hv?", "hv1", 22, true],
    ["hv?", "hv10", 22, false],
    ["10.0.0.*", "10.0.0.7", 22, true],
    ["10.0.0.*", "10.0.1.7", 22, false],
    ["hv.", "hv1", 22, false], // a dot is literal, not a regex wildcard
    ["*.example.com,!bad.example.com", "good.example.com", 22, true],
    ["*.example.com,!bad.example.com", "bad.example.com", 22, false],
    ["!bad.example.com,*.example.com", "bad.example.com", 22, false], // order does not matter
    ["!hv1", "hv2", 22, false], // only negations never match
    ["!hv1", "hv1", 22, false],
  ])("%s vs %s port %d -> %s", (field, host, port, expected) => {
    expect(matches(field, host, port)).toBe(expected);
  });

  test("hashed entries made in-test: host for port 22, [host]:port otherwise", () => {
    const salt = randomBytes(20);
    const file = parseKnownHosts(`${hashedName("hv1", salt)} ${ed1.text}\n${hashedName("[hv2]:2222")} ${ed2.text}\n`);
    expect(file.warnings).toEqual([]);
    expect(lookupHostKey(file, "hv1", 22, key(ed1))).toEqual({ status: "match", matchedLine: 1 });
    expect(lookupHostKey(file, "HV1", 22, key(ed1)).status).toBe("match");
    expect(lookupHostKey(file, "hv1", 2222, key(ed1)).status).toBe("unknown");
    expect(lookupHostKey(file, "hv2", 2222, key(ed2))).toEqual({ status: "match", matchedLine: 2 });
    expect(lookupHostKey(file, "hv2", 22, key(ed2)).status).toBe("unknown");
    expect(lookupHostKey(file, "hv3", 22, key(ed1)).status).toBe("unknown");
  });

  test("hashed entries written by the real `ssh-keygen -H`", () => {
    const path = join(dir, "hash_me");
    writeFileSync(path, `hv1 ${ed1.text}\n[hv2]:2222 ${ed2.text}\n10.0.0.5 ${ecdsa.text}\n`);
    execFileSync("ssh-keygen", ["-q", "-H", "-f", path], { stdio: ["ignore", "ignore", "pipe"] });
    const file = parseKnownHosts(readFileSync(path, "utf8"), path);
    expect(file.warnings).toEqual([]);
    expect(file.entries.map((e) => e.hosts.kind)).toEqual(["hashed", "hashed", "hashed"]);
    expect(lookupHostKey(file, "hv1", 22, key(ed1)).status).toBe("match");
    expect(lookupHostKey(file, "hv2", 2222, key(ed2)).status).toBe("match");
    expect(lookupHostKey(file, "10.0.0.5", 22, key(ecdsa)).status).toBe("match");
    expect(lookupHostKey(file, "hv2", 22, key(ed2)).status).toBe("unknown");
    expect(lookupHostKey(file, "hv1", 22, key(ed2)).status).toBe("mismatch");
  });

  test("agrees with the real `ssh-keygen -F` on which lines name a host", () => {
    const lines = [
      `hv1,hv2 ${ed1.text}`,
      `[hv1]:2222 ${ed1.text}`,
      `*.example.com,!bad.example.com ${ed1.text}`,
      `hv? ${ed1.text}`,
      `${hashedName("hashed.example.com")} ${ed1.text}`,
      `${hashedName("[hv5]:2200")} ${ed1.text}`,
      `[*.lab]:2222 ${ed1.text}`,
      `10.0.0.* ${ed1.text}`,
      `Mixed.Case.Example.com ${ed1.text}`,
    ];
    const path = join(dir, "oracle");
    writeFileSync(path, lines.join("\n") + "\n");
    const file = parseKnownHosts(readFileSync(path, "utf8"), path);
    expect(file.warnings).toEqual([]);
    const names = ["hv1", "hv2", "hv10", "[hv1]:2222", "a.example.com", "bad.example.com", "hashed.example.com",
      "[hv5]:2200", "hv5", "[x.lab]:2222", "x.lab", "10.0.0.9", "mixed.case.example.com", "nothing"];
    for (const name of names) {
      let output = "";
      try {
        output = execFileSync("ssh-keygen", ["-F", name, "-f", path], { encoding: "utf8" });
      } catch (error) {
        // ssh-keygen -F exits 1 when no line names the host; anything else is a real failure.
        if ((error as { status?: number }).status !== 1) throw error;
      }
      const oracle = [...output.matchAll(/found: line (\d+)/g)].map((m) => Number(m[1]));
      const ours = file.entries.filter((e) => hostsMatch(e.hosts, name)).map((e) => e.line);
      expect({ name, lines: ours }).toEqual({ name, lines: oracle });
    }
  });
});

describe("lookupHostKey", () => {
  let file: KnownHostsFile;
  beforeAll(() => {
    file = parseKnownHosts(
      [
        `# fleet`,
        `hv1 ${ed1.text}`, // 2
        `hv1 ${ecdsa.text}`, // 3
        `hv2 ${ecdsa.text}`, // 4
        `@cert-authority * ${ed2.text}`, // 5
        `hv3,hv4 ${ed1.text}`, // 6
        `hv4 ${ed2.text}`, // 7
      ].join("\n"),
    );
  });

  test("same key for the host -> match, with the line", () => {
    expect(lookupHostKey(file, "hv1", 22, key(ed1))).toEqual({ status: "match", matchedLine: 2 });
    expect(lookupHostKey(file, "hv1", 22, key(ecdsa))).toEqual({ status: "match", matchedLine: 3 });
  });

  test("another key of the same type -> mismatch, with expected fingerprints and the line", () => {
    expect(lookupHostKey(file, "hv1", 22, key(ed2))).toEqual({
      status: "mismatch",
      matchedLine: 2,
      knownTypes: ["ssh-ed25519", "ecdsa-sha2-nistp256"],
      expectedFingerprints: [fingerprintSha256(ed1.blob)],
    });
  });

  test("only other key types known -> unknown, listing them (OpenSSH would negotiate a known type)", () => {
    expect(lookupHostKey(file, "hv2", 22, key(ed1))).toEqual({ status: "unknown", knownTypes: ["ecdsa-sha2-nistp256"] });
  });

  test("host not listed -> unknown with no known types", () => {
    expect(lookupHostKey(file, "hv9", 22, key(ed1))).toEqual({ status: "unknown", knownTypes: [] });
    expect(lookupHostKey(file, "hv1", 2222, key(ed1))).toEqual({ status: "unknown", knownTypes: [] });
  });

  test("any same-type line holding the key matches, even when another same-type line differs", () => {
    expect(lookupHostKey(file, "hv4", 22, key(ed2))).toEqual({ status: "match", matchedLine: 7 });
    expect(lookupHostKey(file, "hv4", 22, key(ed1))).toEqual({ status: "match", matchedLine: 6 });
  });

  test("@cert-authority lines never match a plain key, nor make it a mismatch", () => {
    // ed2 is the CA key of line 5 for every host; presented as a plain host key it is unknown for hv2.
    expect(lookupHostKey(file, "hv2", 22, key(ed2))).toEqual({ status: "unknown", knownTypes: ["ecdsa-sha2-nistp256"] });
    expect(lookupHostKey(file, "hv9", 22, key(ed2)).status).toBe("unknown");
  });

  test("@revoked wins over a matching line, whatever host the revoked line names", () => {
    const revoked = parseKnownHosts(`hv1 ${ed1.text}\n@revoked some-other-host ${ed1.text}\nhv2 ${ed2.text}\n`);
    expect(lookupHostKey(revoked, "hv1", 22, key(ed1))).toEqual({ status: "revoked", matchedLine: 2 });
    expect(lookupHostKey(revoked, "unlisted", 2222, key(ed1))).toEqual({ status: "revoked", matchedLine: 2 });
    expect(lookupHostKey(revoked, "hv2", 22, key(ed2)).status).toBe("match");
  });

  test("a negated pattern vetoes the line for that host", () => {
    const negated = parseKnownHosts(`*.example.com,!bad.example.com ${ed1.text}\n`);
    expect(lookupHostKey(negated, "good.example.com", 22, key(ed2)).status).toBe("mismatch");
    expect(lookupHostKey(negated, "bad.example.com", 22, key(ed2)).status).toBe("unknown");
    expect(lookupHostKey(negated, "bad.example.com", 22, key(ed1)).status).toBe("unknown");
  });

  test("knownHostsForHost keeps only what matters for the host and gives the same answers", () => {
    const withRevoked = parseKnownHosts(
      [`hv1 ${ed1.text}`, `hv2 ${ed2.text}`, `@cert-authority * ${ed2.text}`, `*,!hv1 ${ed2.text}`, `hv1 ${ecdsa.text}`,
        `@revoked elsewhere ${ecdsa.text}`].join("\n"),
    );
    const subset = knownHostsForHost(withRevoked, "hv1", 22);
    expect(subset.entries.map((e) => [e.line, e.marker])).toEqual([
      [1, undefined],
      [5, undefined],
      [6, "revoked"],
    ]);
    expect(lookupHostKey(subset, "hv1", 22, key(ecdsa)).status).toBe("revoked");
    for (const k of [ed1, ed2, ecdsa]) {
      expect(lookupHostKey(subset, "hv1", 22, key(k))).toEqual(lookupHostKey(withRevoked, "hv1", 22, key(k)));
    }
  });
});
