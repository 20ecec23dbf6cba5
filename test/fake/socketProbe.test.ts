/**
 * The probe that explains a refused streamlocal channel must tell "does not exist" (the VM is gone, and its
 * window's lease may be removed) from "this user cannot see it" (issue 14, item 6: `[ -e ]` says "no" to both).
 * Run by the real sh and kernel, as an unprivileged user (setpriv), against real directory permissions.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { socketProbeCommand } from "../../provider/transport/ssh";

let root: string;
let server: net.Server;

/** The probe's answer for `p`, run as nobody (uid/gid 65534). */
function probeAsNobody(p: string): string {
  const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", socketProbeCommand(p)], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`probe failed (${r.status}): ${r.stderr}`);
  return r.stdout.trim();
}

beforeAll(async () => {
  expect(process.getuid?.()).toBe(0); // setpriv needs root, as CI is
  root = fs.mkdtempSync(path.join(os.tmpdir(), "probe-"));
  fs.chmodSync(root, 0o755);
  fs.mkdirSync(path.join(root, "open"), { mode: 0o755 });
  fs.mkdirSync(path.join(root, "closed"), { mode: 0o700 });
  fs.writeFileSync(path.join(root, "open", "file"), "");
  server = net.createServer();
  await new Promise<void>((resolve) => server.listen(path.join(root, "open", "qga.sock"), resolve));
  fs.symlinkSync(path.join(root, "nowhere", "qga.sock"), path.join(root, "open", "dangling.sock"));
  fs.symlinkSync(path.join(root, "closed", "qga.sock"), path.join(root, "open", "into-closed.sock"));
});
afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
  fs.rmSync(root, { recursive: true, force: true });
});

test.each([
  ["a socket", "open/qga.sock", "socket"],
  ["a regular file", "open/file", "not-socket"],
  ["absent from a searchable directory", "open/gone.sock", "missing"],
  ["in a directory that is itself gone (the VM's directory was removed)", "open/vm1/qga.sock", "missing"],
  ["in a directory this user cannot search", "closed/qga.sock", "no-access"],
  ["below a directory this user cannot search", "closed/vm1/qga.sock", "no-access"],
  ["a dangling symbolic link into a searchable place", "open/dangling.sock", "missing"],
  ["a symbolic link into a directory this user cannot search", "open/into-closed.sock", "no-access"],
])("%s (%s) → %s", (_what, rel, expected) => {
  expect(probeAsNobody(path.join(root, rel))).toBe(expected);
});

test("a relative path is never judged missing (and never loops)", () => {
  expect(probeAsNobody("relative/qga.sock")).toBe("no-access");
});

test("the path reaches the shell quoted, never as code", () => {
  expect(probeAsNobody(path.join(root, "open", "$(touch pwned) 'x'"))).toBe("missing");
  expect(fs.existsSync("pwned")).toBe(false);
});
