/**
 * The built `quiesce` CLI as a subprocess against the real lab (guest with write load, sshd): every
 * subcommand, the --json shapes, exit codes, and bad input.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { claimPath, endedPath } from "../fake/daemonFiles";
import { createWindow } from "../../provider/quiesce/lifecycle";
import { SshPool } from "../../provider/transport/ssh";
import { waitForFile } from "../fake/waitForFile";
import { inspectDataImage } from "./lab";
import { useLab } from "./shared";
import { quiesce } from "./quiesceCli";

const lab = useLab({ guest: { load: true } });

let leaseNo = 0;
function ssh(extra: string[] = []): string[] {
  const { sshd, guest } = lab();
  return [
    "--host", sshd.host, "--port", String(sshd.port), "--user", "root",
    "--identity", sshd.privateKeyPath, "--known-hosts", sshd.knownHostsPath,
    "--socket", guest.socketPath, "--lease-dir", path.join(guest.runDir, `cli-leases-${leaseNo}`),
    ...extra,
  ];
}
beforeEach(() => leaseNo++);

test("fsinfo --json lists the guest's filesystems", async () => {
  const r = await quiesce(["fsinfo", ...ssh(), "--json"]);
  expect(r.code).toBe(0);
  expect(r.json.ok).toBe(true);
  const mounts = (r.json.filesystems as { mountpoint: string }[]).map((f) => f.mountpoint);
  expect(mounts).toEqual(expect.arrayContaining(["/data", "/data2"]));
});

test("fsinfo prints a table: one line per filesystem, with each disk's serial, device, bus target and PCI address", async () => {
  const r = await quiesce(["fsinfo", ...ssh()]);
  expect(r.code).toBe(0);
  const lines = r.stdout.trimEnd().split("\n");
  expect(lines[0]).toMatch(/^MOUNTPOINT\s+TYPE\s+USED \/ TOTAL\s+DISKS/);
  const data = lines.filter((l) => l.startsWith("/data "));
  expect(data).toHaveLength(1);
  expect(data[0]).toMatch(/^\/data\s+ext4\s+[\d.]+ \w?i?B \/ [\d.]+ MiB\s+serial=qdata1 \/dev\/vda virtio:0:0:0 pci:0000:00:02\.0$/);
  expect(lines.filter((l) => l.startsWith("/data2 "))).toHaveLength(1);
});

test("--disk virtio:0:0:0 matches both virtio disks and is refused; pci:ADDRESS selects one", async () => {
  const ambiguous = await quiesce(["run", ...ssh(), "--disk", "virtio:0:0:0", "--json", "--", "true"]);
  expect(ambiguous.code).toBe(1);
  expect(ambiguous.json).toMatchObject({ ok: false, error: { code: "AMBIGUOUS_DISK" } });
  expect((ambiguous.json.error as { message: string }).message).toMatch(/matches 2 disks.*pci:0000:00:02\.0 \(\/data\).*pci:0000:00:03\.0 \(\/data2\)/s);
  const one = await quiesce(["run", ...ssh(), "--disk", "pci:0000:00:03.0", "--json", "--", "true"]);
  expect(one.code).toBe(0);
  expect(one.json).toMatchObject({ ok: true, frozenMountpoints: ["/data2"], outcome: "released" });
});

test("--version prints the package version and the host daemon protocol", async () => {
  const r = await quiesce(["--version"]);
  expect(r.code).toBe(0);
  expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+ \(host daemon protocol \d+\)$/);
});

test("freeze, status, thaw: the CLI's own window, with --json shapes", async () => {
  const frozen = await quiesce(["freeze", ...ssh(), "--mountpoint", "/data", "--ttl", "60", "--json"]);
  expect(frozen.code).toBe(0);
  expect(frozen.json).toMatchObject({ ok: true, frozenMountpoints: ["/data"], frozenCount: 1 });
  const windowId = frozen.json.windowId as string;
  expect(frozen.stderr).toContain(`--window ${windowId}`);

  const status = await quiesce(["status", ...ssh(), "--window", windowId, "--json"]);
  expect(status.json).toMatchObject({ ok: true, agentStatus: "frozen", state: "held", lease: { windowId } });
  expect((status.json.lease as { owner: string }).owner).toMatch(/^cli:/);

  const thawed = await quiesce(["thaw", ...ssh(), "--json"]);
  expect(thawed.code).toBe(0);
  expect(thawed.json).toMatchObject({ ok: true, windowId, outcome: "released", thawedCount: 1 });
  const after = await quiesce(["status", ...ssh(), "--json"]);
  expect(after.json).toMatchObject({ agentStatus: "thawed", state: "not-held", lease: null });
});

test("thaw refuses a window it does not own, naming the owner; --force thaws it", async () => {
  const frozen = await quiesce(["freeze", ...ssh(), "--mountpoint", "/data", "--json"]);
  const windowId = frozen.json.windowId as string;
  const wrong = await quiesce(["thaw", ...ssh(), "--window", "qw-not-this-one", "--json"]);
  expect(wrong.code).toBe(1);
  expect(wrong.json).toMatchObject({ ok: false, error: { code: "NOT_OWNER" } });
  expect((wrong.json.error as { message: string }).message).toContain(windowId);
  const forced = await quiesce(["thaw", ...ssh(), "--force", "--json"]);
  expect(forced.code).toBe(0);
  expect(forced.json).toMatchObject({ ok: true, outcome: "force-thawed", thawedCount: 1 });
});

test("thaw refuses a Pulumi stack's window even when named with --window; --force thaws it", async () => {
  const { sshd, guest } = lab();
  const pool = new SshPool();
  try {
    const w = await createWindow(
      {
        target: {
          connection: { host: sshd.host, port: sshd.port, user: "root", privateKey: sshd.privateKey, knownHostsPath: sshd.knownHostsPath },
          socketPath: guest.socketPath,
          leaseDir: path.join(guest.runDir, `cli-leases-${leaseNo}`),
        },
        mountpoints: ["/data"],
        owner: "pulumi:shop/prod/db-window",
        thawOnDisconnect: false,
      },
      { pool },
    );
    const refused = await quiesce(["thaw", ...ssh(), "--window", w.windowId, "--json"]);
    expect(refused.code).toBe(1);
    expect(refused.json).toMatchObject({ ok: false, error: { code: "NOT_OWNER" } });
    expect((refused.json.error as { message: string }).message).toMatch(/Pulumi stack shop\/prod\/db-window.*--force/s);
    const again = await quiesce(["freeze", ...ssh(), "--mountpoint", "/data2", "--json"]);
    expect((again.json.error as { message: string }).message).toContain(`quiesce thaw --window ${w.windowId}\` --force`);
    const forced = await quiesce(["thaw", ...ssh(), "--window", w.windowId, "--force", "--json"]);
    expect(forced.json).toMatchObject({ ok: true, outcome: "force-thawed", thawedCount: 1 });
  } finally {
    pool.closeAll();
  }
});

test("run freezes, runs the host command with its arguments quoted, releases, and the copy is consistent", async () => {
  const copy = path.join(lab().guest.runDir, "cli-copy.img");
  const r = await quiesce(["run", ...ssh(), "--mountpoint", "/data", "--json", "--", "cp", "--sparse=always", lab().guest.disk("/data").image, copy]);
  expect(r.code).toBe(0);
  expect(r.json).toMatchObject({ ok: true, outcome: "released", exitCode: 0, frozenMountpoints: ["/data"] });
  const report = await inspectDataImage(copy);
  expect(report.needsRecovery).toBe(false);
  expect(report.brokenFiles).toEqual([]);
  expect(report.loggedWrites.length).toBeGreaterThan(0);
  // An argument with shell syntax arrives as one literal argument.
  const echo = await quiesce(["run", ...ssh(), "--mountpoint", "/data", "--json", "--", "printf", "%s", "$(id) `id` ;x"]);
  expect(echo.json.stdout).toBe("$(id) `id` ;x");
});

test("run exits non-zero when the host command fails, and when the lease expired before it ended", async () => {
  const failed = await quiesce(["run", ...ssh(), "--mountpoint", "/data", "--json", "--", "sh", "-c", "exit 7"]);
  expect(failed.code).toBe(1);
  expect(failed.json).toMatchObject({ ok: false, exitCode: 7, outcome: "released" });
  const expired = await quiesce(["run", ...ssh(), "--mountpoint", "/data", "--ttl", "1", "--json", "--", "sleep", "3"]);
  expect(expired.code).toBe(1);
  expect(expired.json).toMatchObject({ ok: false, outcome: "expired" });
  expect(expired.stderr).toMatch(/may be inconsistent/);
});

test("killing `quiesce run` thaws the guest at once", async () => {
  const args = ssh(["--mountpoint", "/data", "--", "sleep", "60"]);
  const leaseDir = args[args.indexOf("--lease-dir") + 1];
  fs.mkdirSync(leaseDir, { recursive: true });
  let pid = 0;
  const running = quiesce(["run", ...args], { onSpawn: (p) => (pid = p) });
  // The window is held once its claim exists; then kill the CLI.
  const claim = JSON.parse(await waitForFile(claimPath(leaseDir, lab().guest.socketPath), 60_000)) as { windowId: string };
  const status = await quiesce(["status", ...ssh(), "--json"]);
  expect(status.json.agentStatus).toBe("frozen");
  process.kill(pid, "SIGKILL");
  await running;
  const ended = JSON.parse(await waitForFile(endedPath(leaseDir, claim.windowId), 10_000)) as { how: string };
  expect(ended.how).toBe("disconnected");
  const after = await quiesce(["status", ...ssh(), "--json"]);
  expect(after.json.agentStatus).toBe("thawed");
});

describe("bad input: a clear message and the right exit code", () => {
  test("a relative socket path is a usage error (2)", async () => {
    const r = await quiesce(["status", "--local", "--socket", "qga.sock", "--json"]);
    expect(r.code).toBe(2);
    expect((r.json.error as { message: string }).message).toMatch(/absolute/);
  });

  test("`--` without a command is a usage error (2)", async () => {
    const r = await quiesce(["run", ...ssh(), "--json", "--"]);
    expect(r.code).toBe(2);
    expect((r.json.error as { message: string }).message).toMatch(/host-command/);
  });

  test("an unknown mount point fails (1), lists the guest's filesystems, and freezes nothing", async () => {
    const r = await quiesce(["freeze", ...ssh(), "--mountpoint", "/nope", "--json"]);
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ ok: false, error: { code: "UNKNOWN_MOUNTPOINT" } });
    expect((r.json.error as { message: string }).message).toMatch(/\/data \(ext4/);
    const status = await quiesce(["status", ...ssh(), "--json"]);
    expect(status.json.agentStatus).toBe("thawed");
  });

  test("an unknown host key is refused (1) with the fingerprint and how to add it", async () => {
    const empty = path.join(lab().guest.runDir, "empty_known_hosts");
    fs.writeFileSync(empty, "");
    const args = ssh().map((a) => (a === lab().sshd.knownHostsPath ? empty : a));
    const r = await quiesce(["status", ...args, "--json"]);
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ ok: false, error: { code: "SSH_HOST_KEY_UNKNOWN" } });
    expect((r.json.error as { message: string }).message).toContain(lab().sshd.hostFingerprint);
  });

  test("a missing socket fails (1) and says so", async () => {
    const args = ssh().map((a) => (a === lab().guest.socketPath ? "/nonexistent/qga.sock" : a));
    const r = await quiesce(["status", ...args, "--json"]);
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ ok: false, error: { code: "SOCKET_MISSING" } });
  });

  test("neither --local nor --host is a usage error (2)", async () => {
    const r = await quiesce(["status", "--socket", "/x.sock"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--local .* or --host/);
  });
});
