/**
 * What the guest really did, on agents whose freeze is not Linux's (issue 13): Windows VSS (10 s, status that
 * lies, all-or-none), freeze hooks (qemu-ga -F), FreeBSD (UFS only), and the crash-consistent fallback.
 * These agents cannot run here, so the fake models each from qemu's qga/ sources (see fakeAgent.ts).
 */
import { readClaim, removeLeaseDir } from "./daemonFiles";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import { promisify } from "node:util";
import * as os from "node:os";
import * as path from "node:path";
import { createWindow, releaseWindow, windowStatus, type SocketTarget } from "../../provider/quiesce/lifecycle";
import { createRelease } from "../../provider/dynamic/release";
import { createHostSnapshot } from "../../provider/dynamic/hostSnapshot";
import { deleteWindow, readWindow, createWindowResource } from "../../provider/dynamic/window";
import { validateWindowInputs } from "../../provider/quiesce/validate";
import { failure } from "./failure";
import { FakeAgent, type FakeAgentOptions } from "./fakeAgent";

let agent: FakeAgent;
let leaseDir: string;
let target: SocketTarget;
const agents: FakeAgent[] = [];

async function start(options: FakeAgentOptions): Promise<void> {
  agent = await FakeAgent.start(options);
  agents.push(agent);
  target = { socketPath: agent.socketPath, leaseDir };
}
beforeEach(() => {
  leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
});
afterEach(async () => {
  for (const a of agents.splice(0)) await a.stop();
  await removeLeaseDir(leaseDir);
});
const freezeCommands = (): string[] => agent.log.filter((c) => c.startsWith("guest-fsfreeze-freeze"));
const lease = async (): Promise<unknown> => readClaim(leaseDir, target.socketPath);
/** Waits (100 ms polls, at most `timeoutMs`) until `done` holds; the test's assertions then say whether it did. */
async function until(done: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await done()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
}

describe("Windows (VSS)", () => {
  test("the default lease is VSS's 10 s; a longer one asked for is refused before anything is frozen", async () => {
    await start({ os: "windows" });
    const w = await createWindow({ target, mountpoints: ["C:\\"] });
    expect(w).toMatchObject({ guestOs: "windows", frozenMountpoints: ["C:\\"], consistency: "filesystem" });
    expect(Date.parse(w.expiresAt) - Date.parse(w.frozenAt)).toBe(10_000);
    await releaseWindow({ target, windowId: w.windowId });

    const err = await failure(createWindow({ target, mountpoints: ["C:\\"], maxDurationSeconds: 60 }));
    expect(err.code).toBe("VSS_LEASE_TOO_LONG");
    expect(err.message).toMatch(/VSS holds writes for at most 10 s.*Nothing was frozen.*10 or less/s);
    expect(freezeCommands()).toHaveLength(1);
    const short = await createWindow({ target, mountpoints: ["D:\\"], maxDurationSeconds: 5 });
    expect(Date.parse(short.expiresAt) - Date.parse(short.frozenAt)).toBe(5_000);
    await releaseWindow({ target, windowId: short.windowId });
  });

  test("everything: a volume VSS cannot add (FAT32) is left out, and the rest frozen by name, since freeze-all would fail whole", async () => {
    await start({ os: "windows" });
    const w = await createWindow({ target });
    expect(w.frozenMountpoints).toEqual(["C:\\", "D:\\"]);
    expect(freezeCommands()).toEqual(["guest-fsfreeze-freeze-list"]);
    await releaseWindow({ target, windowId: w.windowId });
  });

  test("selecting a FAT32 volume fails before freezing; drive letters match in any case and without the backslash", async () => {
    await start({ os: "windows" });
    const err = await failure(createWindow({ target, mountpoints: ["E:\\"] }));
    expect(err.code).toBe("NOT_FREEZABLE");
    expect(err.message).toMatch(/VSS snapshots only NTFS and ReFS/);
    expect(freezeCommands()).toEqual([]);
    const w = await createWindow({ target, mountpoints: ["d:"] });
    expect(w.frozenMountpoints).toEqual(["D:\\"]);
    await releaseWindow({ target, windowId: w.windowId });
  });

  test("check accepts Windows mount points", () => {
    const failures = validateWindowInputs({ socketPath: "/run/win.sock", mountpoints: ["C:\\", "d:", "E:\\mnt\\db", "\\\\?\\Volume{0a1b2c3d-0000-1111-2222-333344445555}\\"] });
    expect(failures).toEqual([]);
    expect(validateWindowInputs({ socketPath: "/run/win.sock", mountpoints: ["C:data"] }).map((f) => f.property)).toEqual(["mountpoints[0]"]);
  });

  test("writes resumed before the release: the thaw fails with its own code, WindowRelease fails unless allowExpired", async () => {
    await start({ os: "windows", vssHoldLimitMs: 200 });
    const w = await createWindow({ target, mountpoints: ["C:\\"] });
    await new Promise((r) => setTimeout(r, 400));
    // The agent's own flag still says frozen: only the thaw tells.
    expect(agent.status).toBe("frozen");
    const err = await failure(createRelease({ windowId: w.windowId, socketPath: target.socketPath, leaseDir }));
    expect(err.code).toBe("VSS_WRITES_RESUMED");
    expect(err.message).toMatch(/writes had resumed before the release.*MAY BE INCONSISTENT/s);
    expect(agent.status).toBe("thawed");
    expect(await lease()).toBeUndefined();

    const again = await createWindow({ target, mountpoints: ["C:\\"] });
    await new Promise((r) => setTimeout(r, 400));
    const allowed = await createRelease({ windowId: again.windowId, socketPath: target.socketPath, leaseDir, allowExpired: true });
    expect(allowed.outs.outcome).toBe("expired");
  });

  test("held-throughout is judged by time against VSS's budget, since the status keeps saying frozen", async () => {
    await start({ os: "windows" });
    const w = await createWindow({ target, mountpoints: ["C:\\"] });
    // The lease is VSS's budget, and the host daemon ends the window there: past it, the agent would still say
    // frozen while the writes had resumed, so the deadline is the only truth.
    expect(Date.parse(w.expiresAt) - Date.parse(w.frozenAt)).toBe(10_000);
    expect(agent.status).toBe("frozen");
    // HostSnapshot's check after its command is that same judgement: a command outlasting a 1 s lease fails.
    await releaseWindow({ target, windowId: w.windowId });
    const short = await createWindow({ target, mountpoints: ["C:\\"], maxDurationSeconds: 1 });
    const err = await failure(createHostSnapshot({ windowId: short.windowId, socketPath: target.socketPath, leaseDir, create: "sleep 1.5" }));
    expect(err.code).toBe("NOT_HELD");
    expect(err.message).toMatch(/not held after the snapshot command \(state: expired\)/);
  });
});

describe("freeze hooks (qemu-ga -F)", () => {
  test.each([
    ["fail", /fsfreeze hook \(qemu-ga -F; by default \/etc\/qemu\/fsfreeze-hook.*failed with status 1/s],
    ["abnormal", /fsfreeze hook .* was killed by a signal/s],
    ["missing", /fsfreeze hook '\/etc\/qemu\/fsfreeze-hook' cannot be run/],
  ] as const)("a hook that %s fails with FREEZE_HOOK_FAILED, names the hook and its log, and leaves the guest thawed", async (hook, pattern) => {
    await start({ hook });
    const err = await failure(createWindow({ target, mountpoints: ["/data"] }));
    expect(err.code).toBe("FREEZE_HOOK_FAILED");
    expect(err.message).toMatch(pattern);
    expect(err.message).toContain("/var/log/qga-fsfreeze-hook.log");
    expect(agent.status).toBe("thawed");
    expect(await lease()).toBeUndefined();
  });

  test("a hook that fails on thaw fails the reply of a thaw that happened: release, and the host daemon, still end the window", async () => {
    await start({ hook: "fail-on-thaw" });
    const w = await createWindow({ target, mountpoints: ["/data"] });
    expect(agent.status).toBe("frozen");
    const r = await releaseWindow({ target, windowId: w.windowId });
    expect(r.outcome).toBe("released");
    expect(agent.status).toBe("thawed");
    expect(await lease()).toBeUndefined();
    // The daemon's thaw at the deadline meets the same error reply, and still removes the record.
    const short = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
    await until(async () => (await lease()) === undefined);
    expect(await lease()).toBeUndefined();
    expect(agent.status).toBe("thawed");
    expect((await windowStatus(target, { windowId: short.windowId })).state).toBe("expired");
  }, 30_000);

  test("a hook failing on thaw does not hide a thaw made outside pulumi-quiesce: the release says thawed-outside, not released", async () => {
    await start({ hook: "fail-on-thaw" });
    const w = await createWindow({ target, mountpoints: ["/data"] });
    agent.frozen.clear(); // thawed behind pulumi-quiesce's back (a reboot, an operator)
    const r = await releaseWindow({ target, windowId: w.windowId });
    expect(r.outcome).toBe("thawed-outside");
    expect(agent.status).toBe("thawed");
  });

  test("a missing hook fails the freeze and the thaw after it, yet crash-consistent falls back: the guest is verified thawed", async () => {
    await start({ hook: "missing" });
    const w = await createWindow({ target, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent" });
    expect(w.consistency).toBe("crash");
    expect(w.consistencyReason).toMatch(/^FREEZE_HOOK_FAILED/);
  });

  test("a hanging hook: the freeze times out saying a hook may hang, and the guest is thawed once the agent answers", async () => {
    await start({ hook: "hang" });
    const err = await failure(createWindow({ target, mountpoints: ["/data"], timeouts: { agentSeconds: 1, freezeSeconds: 1, thawSeconds: 1 } }));
    expect(err.code).toBe("AGENT_TIMEOUT");
    expect(err.message).toMatch(/fsfreeze hook \(qemu-ga -F\), it may be hanging/);
    expect(err.message).toMatch(/MAY BE FROZEN.*host daemon/s);
    // The hook returns at last and the agent freezes: the window's record stays, so the daemon thaws the guest.
    agent.finishHook();
    await until(async () => agent.status === "thawed" && (await lease()) === undefined);
    expect(agent.status).toBe("thawed");
    expect(await lease()).toBeUndefined();
  }, 30_000);
});

describe("FreeBSD (UFS only)", () => {
  test("the real agent cannot list filesystems: everything is refused before freezing; named UFS mounts freeze", async () => {
    await start({ os: "freebsd" });
    const all = await failure(createWindow({ target }));
    expect(all.code).toBe("FSINFO_UNAVAILABLE");
    expect(all.message).toMatch(/guest-get-fsinfo is unsupported.*freezes UFS only.*Nothing was frozen/s);
    expect(freezeCommands()).toEqual([]);
    const w = await createWindow({ target, mountpoints: ["/"] });
    expect(w).toMatchObject({ guestOs: "freebsd", frozenMountpoints: ["/"], frozenCount: 1, filesystems: [] });
    await releaseWindow({ target, windowId: w.windowId });
  });

  test("a ZFS mount named without fsinfo comes up short in the count: the freeze is thawed and the error says why", async () => {
    await start({ os: "freebsd" });
    for (const mountpoints of [["/data"], ["/nope"]]) {
      const err = await failure(createWindow({ target, mountpoints }));
      expect(err.code).toBe("FREEZE_MISMATCH");
      expect(err.message).toMatch(/FreeBSD freezes UFS only/);
      expect(agent.status).toBe("thawed");
      expect(await lease()).toBeUndefined();
    }
  });

  test("one UFS per freeze: two mount points are refused before freezing; qemu-ga 9.1 without guest-get-fsinfo works too", async () => {
    await start({ os: "freebsd", blockedCommands: ["guest-get-fsinfo"] });
    const err = await failure(createWindow({ target, mountpoints: ["/", "/var"] }));
    expect(err.code).toBe("NOT_FREEZABLE");
    expect(err.message).toMatch(/suspends one UFS filesystem per freeze/);
    expect(freezeCommands()).toEqual([]);
    const w = await createWindow({ target, mountpoints: ["/"] });
    expect(w.frozenMountpoints).toEqual(["/"]);
    await releaseWindow({ target, windowId: w.windowId });
    // With fsinfo, "everything" on a guest with two UFS filesystems is refused the same way.
    const ufs = (mountpoint: string, name: string) => ({ name, mountpoint, type: "ufs", disks: [] });
    await start({ os: "freebsd", bsdFsinfo: true, filesystems: [ufs("/", "vtbd0p2"), ufs("/var", "vtbd0p3")] });
    expect((await failure(createWindow({ target }))).code).toBe("NOT_FREEZABLE");
  });

  test("an agent that does list filesystems: everything leaves ZFS out; selecting a ZFS mount fails before freezing", async () => {
    await start({ os: "freebsd", bsdFsinfo: true });
    const w = await createWindow({ target });
    expect(w).toMatchObject({ guestOs: "freebsd", frozenMountpoints: ["/"], frozenCount: 1 });
    await releaseWindow({ target, windowId: w.windowId });
    const err = await failure(createWindow({ target, mountpoints: ["/data"] }));
    expect(err.code).toBe("NOT_FREEZABLE");
    expect(err.message).toMatch(/suspends only UFS/);
    expect(freezeCommands()).toEqual(["guest-fsfreeze-freeze"]);
  });
});

describe("Windows with guest-get-osinfo blocked", () => {
  test("its volumes still read as Windows: VSS's 10 s lease applies", async () => {
    await start({ os: "windows", blockedCommands: ["guest-get-osinfo"] });
    const w = await createWindow({ target, mountpoints: ["C:\\"] });
    expect(w.guestOs).toBe("windows");
    expect(Date.parse(w.expiresAt) - Date.parse(w.frozenAt)).toBe(10_000);
    await releaseWindow({ target, windowId: w.windowId });
  });
});

describe("onQuiesceFailure: crash-consistent", () => {
  test("a failing hook gives a window with nothing frozen, consistency crash and the reason", async () => {
    await start({ hook: "fail" });
    const w = await createWindow({ target, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent" });
    expect(w).toMatchObject({ consistency: "crash", frozenMountpoints: [], frozenCount: 0 });
    expect(w.consistencyReason).toMatch(/^FREEZE_HOOK_FAILED: /);
    expect(agent.status).toBe("thawed");
    expect(await lease()).toBeUndefined();
  });

  test("blocked fsfreeze and a silent agent fall back too; input errors and another window's freeze never do", async () => {
    await start({ blockedCommands: ["guest-fsfreeze-freeze-list"] });
    expect((await createWindow({ target, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent" })).consistencyReason).toMatch(/^AGENT_FSFREEZE_DISABLED/);
    expect((await failure(createWindow({ target, mountpoints: ["/nope"], onQuiesceFailure: "crash-consistent" }))).code).toBe("UNKNOWN_MOUNTPOINT");

    await start({ faults: { silent: true } });
    const silent = await createWindow({ target, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent", timeouts: { agentSeconds: 0.5 } });
    expect(silent.consistencyReason).toMatch(/^AGENT_TIMEOUT/);

    await start({});
    const held = await createWindow({ target, mountpoints: ["/data"] });
    expect((await failure(createWindow({ target, mountpoints: ["/data2"], onQuiesceFailure: "crash-consistent" }))).code).toBe("ALREADY_FROZEN");
    await releaseWindow({ target, windowId: held.windowId });
  });

  test("a silent agent whose guest another window holds does not fall back: the claim is refused before the agent is asked", async () => {
    await start({});
    const held = await createWindow({ target, mountpoints: ["/data"] });
    agent.faults.silent = true;
    const err = await failure(createWindow({ target, mountpoints: ["/data2"], onQuiesceFailure: "crash-consistent", timeouts: { agentSeconds: 0.5 } }));
    expect(err.code).toBe("ALREADY_FROZEN");
    expect(err.message).toContain(held.windowId);
    agent.resume();
    await releaseWindow({ target, windowId: held.windowId });
  });

  test("a partial freeze is thawed before falling back", async () => {
    await start({ faults: { reportCount: 0 } });
    const w = await createWindow({ target, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent" });
    expect(w.consistencyReason).toMatch(/^FREEZE_MISMATCH/);
    expect(agent.log).toContain("guest-fsfreeze-thaw");
    expect(agent.status).toBe("thawed");
  });

  test("through the providers: HostSnapshot runs and says crash, WindowRelease succeeds without touching the guest, refresh and delete do no I/O", async () => {
    await start({ hook: "fail" });
    const { id, outs } = await createWindowResource({ socketPath: target.socketPath, leaseDir, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent", resourceName: "db" });
    expect(outs).toMatchObject({ consistency: "crash", held: false, state: "crash-consistent" });
    const snap = await createHostSnapshot({ windowId: id, socketPath: target.socketPath, leaseDir, create: "echo copied", windowConsistency: "crash" });
    expect(snap.outs).toMatchObject({ consistency: "crash", stdout: "copied\n" });
    await agent.stop(); // the agent is gone entirely: nothing below may need it
    const released = await createRelease({ windowId: id, socketPath: target.socketPath, leaseDir, consistency: "crash" });
    expect(released.outs.outcome).toBe("crash-consistent");
    expect((await readWindow(id, outs)).props).toMatchObject({ held: false, state: "crash-consistent" });
    await deleteWindow(id, outs);
  });

  test("a window that froze says consistency filesystem, and so do its snapshots", async () => {
    await start({});
    const { id, outs } = await createWindowResource({ socketPath: target.socketPath, leaseDir, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent" });
    expect(outs).toMatchObject({ consistency: "filesystem", consistencyReason: "", held: true });
    const snap = await createHostSnapshot({ windowId: id, socketPath: target.socketPath, leaseDir, create: "true" });
    expect(snap.outs.consistency).toBe("filesystem");
    expect((await windowStatus(target, { windowId: id })).state).toBe("held");
    await deleteWindow(id, outs);
    expect(agent.status).toBe("thawed");
  });
});

describe("the CLI against each mode", () => {
  const cli = path.resolve(__dirname, "../../dist/provider/cli/index.js");
  // Not spawnSync: the fake agent answers from this process's event loop.
  const quiesce = async (args: string[]): Promise<{ code: number; json: Record<string, unknown> }> => {
    const split = args.indexOf("--");
    const argv = [cli, ...(split < 0 ? [...args, "--json"] : [...args.slice(0, split), "--json", ...args.slice(split)])];
    const r = await promisify(execFile)(process.execPath, argv).then(
      (ok) => ({ code: 0, stdout: ok.stdout }),
      (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout }),
    );
    return { code: r.code, json: JSON.parse(r.stdout) as Record<string, unknown> };
  };
  const local = (): string[] => ["--local", "--socket", target.socketPath, "--lease-dir", leaseDir];

  test("windows: run --ttl 20 is refused before freezing; run without --ttl gets VSS's 10 s", async () => {
    await start({ os: "windows" });
    const refused = await quiesce(["run", ...local(), "--mountpoint", "C:\\", "--ttl", "20", "--", "true"]);
    expect(refused).toMatchObject({ code: 1, json: { ok: false, error: { code: "VSS_LEASE_TOO_LONG" } } });
    const ran = await quiesce(["run", ...local(), "--mountpoint", "C:\\", "--", "true"]);
    expect(ran).toMatchObject({ code: 0, json: { ok: true, frozenMountpoints: ["C:\\"], consistency: "filesystem", outcome: "released" } });
  });

  test("thaw --window of a window that already ended at its deadline fails: its snapshot may not be consistent", async () => {
    await start({});
    const frozen = await quiesce(["freeze", ...local(), "--mountpoint", "/data", "--ttl", "1"]);
    await until(async () => (await lease()) === undefined);
    const thawed = await quiesce(["thaw", ...local(), "--window", frozen.json.windowId as string]);
    expect(thawed).toMatchObject({ code: 1, json: { ok: false, error: { code: "LEASE_EXPIRED", fields: { how: "expired" } } } });
  }, 30_000);

  test("windows: a thaw that finds the writes resumed fails with VSS_WRITES_RESUMED (the guest is thawed)", async () => {
    await start({ os: "windows", vssHoldLimitMs: 200 });
    const frozen = await quiesce(["freeze", ...local(), "--mountpoint", "D:\\", "--ttl", "5"]);
    await new Promise((r) => setTimeout(r, 400));
    const thawed = await quiesce(["thaw", ...local(), "--window", frozen.json.windowId as string]);
    expect(thawed).toMatchObject({ code: 1, json: { ok: false, error: { code: "VSS_WRITES_RESUMED" } } });
    expect(agent.status).toBe("thawed");
  });

  test("freebsd: freeze everything freezes UFS only; a hook failure has its own code, and crash-consistent goes on", async () => {
    await start({ os: "freebsd" });
    expect((await quiesce(["freeze", ...local()])).json).toMatchObject({ ok: false, error: { code: "FSINFO_UNAVAILABLE" } });
    const frozen = await quiesce(["freeze", ...local(), "--mountpoint", "/"]);
    expect(frozen.json).toMatchObject({ ok: true, frozenMountpoints: ["/"], guestOs: "freebsd", consistency: "filesystem" });
    expect((await quiesce(["thaw", ...local(), "--window", frozen.json.windowId as string])).json).toMatchObject({ ok: true, outcome: "released" });

    await start({ hook: "fail" });
    expect((await quiesce(["run", ...local(), "--", "true"])).json).toMatchObject({ ok: false, error: { code: "FREEZE_HOOK_FAILED" } });
    const crash = await quiesce(["run", ...local(), "--on-failure", "crash-consistent", "--", "true"]);
    expect(crash).toMatchObject({ code: 0, json: { ok: true, consistency: "crash", outcome: "crash-consistent" } });
    expect((await quiesce(["run", ...local(), "--on-failure", "sometimes", "--", "true"])).code).toBe(2);
  });
});
