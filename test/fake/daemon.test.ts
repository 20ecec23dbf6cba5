/**
 * The host daemon (provider/host/daemon.py, a real python3 process) against fake agents on local sockets: the one
 * owner of every freeze. Deterministic faults at every step boundary of create and release, identity by socket,
 * trust of the lease directory, liveness (a killed daemon), scale (1100 windows on one daemon), garbage.
 * The same guarantees are proven against the real guest over SSH in test/lab/faults.test.ts.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import {
  CREATE_STEPS,
  createWindow,
  forceThaw,
  openSession,
  releaseWindow,
  windowStatus,
  type SocketTarget,
  type CreateStep,
  type CreateWindowRequest,
  type LifecycleDeps,
  type WindowInfo,
} from "../../provider/quiesce/lifecycle";
import { daemonFor, daemonScript } from "../../provider/host/daemon";
import { isQuiesceError } from "../../provider/errors";
import { SshPool } from "../../provider/transport/ssh";
import { spawnCreator, startCreator } from "./creatorProcess";
import { claimFiles, endedPath, readClaim, removeLeaseDir } from "./daemonFiles";
import { failure } from "./failure";
import { FakeAgent } from "./fakeAgent";
import { waitForFile } from "./waitForFile";

let agent: FakeAgent;
let leaseDir: string;
let target: SocketTarget;

beforeEach(async () => {
  agent = await FakeAgent.start();
  leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
  target = { socketPath: agent.socketPath, leaseDir };
});
afterEach(async () => {
  await agent.stop();
  await removeLeaseDir(leaseDir);
});

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The daemon's pids (worker and supervisor), asked of it. */
async function daemonPids(t: SocketTarget, pool = new SshPool()): Promise<{ pid: number; supervisor: number }> {
  const hello = await daemonFor({ leaseDir: t.leaseDir }, pool).request("hello");
  return { pid: hello.pid as number, supervisor: hello.supervisor as number };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw err;
  }
}

/** Creates a window, retrying while another window's record still holds the guest (it is being ended). */
async function createWhenFree(request: CreateWindowRequest, deps: LifecycleDeps, timeoutMs = 20_000): Promise<WindowInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await createWindow(request, deps);
    } catch (err) {
      if (!isQuiesceError(err, "ALREADY_FROZEN") || err.fields.ownerWindowId === undefined || Date.now() > deadline) throw err;
      await delay(100);
    }
  }
}

test("nobody releases: thawed at the deadline on the host's clock, recorded as expired; a client clock an hour off changes nothing", async () => {
  const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false }, { now: () => Date.now() - 3_600_000 });
  expect(agent.status).toBe("frozen");
  // The times come from the host: the client's clock, an hour slow, does not appear.
  expect(Math.abs(Date.parse(w.frozenAt) - Date.now())).toBeLessThan(30_000);
  const ended = JSON.parse(await waitForFile(endedPath(leaseDir, w.windowId), 10_000)) as { how: string };
  expect(ended.how).toBe("expired");
  expect(Date.now() - Date.parse(w.expiresAt)).toBeLessThan(5_000);
  expect(agent.status).toBe("thawed");
  expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("expired");
  expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("expired");
  // The daemon never ran from a file, and keeps only its own files.
  expect(fs.readdirSync(leaseDir).sort()).toEqual(["daemon.lock", "daemon.log", "daemon.sock", `ended-${w.windowId}.json`]);
  const { pid } = await daemonPids(target);
  expect(fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(1, 3)).toEqual(["-", leaseDir]);
});

test("the freezing process is killed: the daemon thaws at once", async () => {
  const { child, windowId } = await spawnCreator({ target, mountpoints: ["/data"], maxDurationSeconds: 300 });
  expect(agent.status).toBe("frozen");
  child.kill("SIGKILL");
  const ended = await waitForFile(endedPath(leaseDir, windowId), 10_000);
  expect(agent.status).toBe("thawed");
  expect(JSON.parse(ended)).toMatchObject({ windowId, how: "disconnected" });
  expect((await windowStatus(target, { windowId })).state).toBe("disconnected");
});

test("a freezing process that hangs (SIGSTOP) is gone once its heartbeats stop; a live one stays held", async () => {
  const { child, windowId } = await spawnCreator({ target, mountpoints: ["/data"], maxDurationSeconds: 300 });
  const live = await FakeAgent.start();
  const liveTarget: SocketTarget = { socketPath: live.socketPath, leaseDir };
  try {
    const liveWindow = await createWindow({ target: liveTarget, mountpoints: ["/data"], maxDurationSeconds: 300 });
    child.kill("SIGSTOP"); // its connection stays open: only the silence tells
    const stoppedAt = Date.now();
    const ended = JSON.parse(await waitForFile(endedPath(leaseDir, windowId), 40_000)) as { how: string };
    expect(ended.how).toBe("disconnected");
    expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(10_000); // not before the silence bound (15 s)
    expect(agent.status).toBe("thawed");
    expect(live.status).toBe("frozen");
    expect((await windowStatus(liveTarget, { windowId: liveWindow.windowId })).state).toBe("held");
    expect((await releaseWindow({ target: liveTarget, windowId: liveWindow.windowId })).outcome).toBe("released");
  } finally {
    child.kill("SIGKILL");
    await live.stop();
  }
}, 90_000);

test("the agent hangs mid-freeze: create fails within its timeout saying the guest may be frozen; the daemon thaws once it answers", async () => {
  agent.faults.hangAfterCommand = "guest-fsfreeze-freeze-list";
  const err = await failure(
    createWindow({ target, mountpoints: ["/data"], thawOnDisconnect: false, maxDurationSeconds: 3600, timeouts: { agentSeconds: 0.5, freezeSeconds: 0.5, thawSeconds: 0.5 } }),
  );
  expect(err.code).toBe("AGENT_TIMEOUT");
  expect(err.message).toMatch(/MAY BE FROZEN.*host daemon/s);
  expect(agent.status).toBe("frozen");
  expect(claimFiles(leaseDir)).toHaveLength(1); // the record stays, so the daemon keeps trying
  agent.resume();
  // Thawed as soon as the agent answers (retries back off to 5 s at most), an hour before the deadline.
  const deadline = Date.now() + 30_000;
  while (claimFiles(leaseDir).length > 0 && Date.now() < deadline) await delay(100);
  expect(claimFiles(leaseDir)).toEqual([]);
  expect(agent.status).toBe("thawed");
});

test("a guest whose agent went silent delays no other guest's thaw", async () => {
  const other = await FakeAgent.start();
  const otherTarget: SocketTarget = { socketPath: other.socketPath, leaseDir };
  try {
    const first = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
    const w = await createWindow({ target: otherTarget, mountpoints: ["/data"], maxDurationSeconds: 2, thawOnDisconnect: false });
    agent.faults.silent = true; // the daemon's thaw of the first guest, at its deadline, hangs (10 s per try)
    await waitForFile(endedPath(leaseDir, w.windowId), 30_000);
    expect(other.status).toBe("thawed");
    expect(Date.now() - Date.parse(w.expiresAt)).toBeLessThan(5_000);
    expect(agent.status).toBe("frozen");
    agent.resume();
    await waitForFile(endedPath(leaseDir, first.windowId), 30_000);
    expect(agent.status).toBe("thawed");
  } finally {
    await other.stop();
  }
}, 60_000);

test("two spellings of one socket are one guest: the second claim is refused naming the holder, and either spelling releases it", async () => {
  const dir = path.dirname(agent.socketPath);
  const link = fs.mkdtempSync(path.join(os.tmpdir(), "alias-"));
  fs.symlinkSync(dir, path.join(link, "vm"));
  try {
    const w = await createWindow({ target, mountpoints: ["/data"], owner: "proj/stack/first" });
    for (const alias of [`${dir}//${path.basename(agent.socketPath)}`, path.join(link, "vm", path.basename(agent.socketPath))]) {
      const aliased: SocketTarget = { socketPath: alias, leaseDir };
      const err = await failure(createWindow({ target: aliased, mountpoints: ["/data2"] }));
      expect(err.code).toBe("ALREADY_FROZEN");
      expect(err.message).toContain(w.windowId);
      expect(err.message).toContain("proj/stack/first");
      expect((await windowStatus(aliased, { windowId: w.windowId })).state).toBe("held");
      expect((await windowStatus(aliased, { windowId: "qw-someone-else" })).state).toBe("other-window");
    }
    expect(agent.status).toBe("frozen");
    const r = await releaseWindow({ target: { socketPath: path.join(link, "vm", path.basename(agent.socketPath)), leaseDir }, windowId: w.windowId });
    expect(r.outcome).toBe("released");
    expect(agent.status).toBe("thawed");
  } finally {
    fs.rmSync(link, { recursive: true, force: true });
  }
});

describe("the lease directory is trusted only when it is the SSH user's own", () => {
  test.each([
    ["group-writable", (d: string) => fs.chmodSync(d, 0o770), /writable by group or others \(mode 770\).*chmod 700/],
    ["world-writable", (d: string) => fs.chmodSync(d, 0o777), /writable by group or others \(mode 777\)/],
    ["owned by another user", (d: string) => fs.chownSync(d, 65534, 65534), /owned by uid 65534.*chown/],
  ])("%s: refused before anything is frozen, naming the directory and the fix", async (_name, spoil, message) => {
    spoil(leaseDir);
    const err = await failure(createWindow({ target, mountpoints: ["/data"] }));
    expect(err.code).toBe("LEASE_DIR_REFUSED");
    expect(err.message).toContain(leaseDir);
    expect(err.message).toMatch(message);
    expect(agent.status).toBe("thawed");
    expect(agent.log).toEqual([]);
  });

  test("a symbolic link, or a directory inside a world-writable one without the sticky bit, is refused", async () => {
    const real = fs.mkdtempSync(path.join(os.tmpdir(), "real-"));
    const linked = path.join(os.tmpdir(), `linked-${process.pid}`);
    fs.symlinkSync(real, linked);
    const open = fs.mkdtempSync(path.join(os.tmpdir(), "open-"));
    fs.chmodSync(open, 0o777);
    try {
      const viaLink = await failure(createWindow({ target: { ...target, leaseDir: linked }, mountpoints: ["/data"] }));
      expect(viaLink.code).toBe("LEASE_DIR_REFUSED");
      expect(viaLink.message).toMatch(/is a symbolic link/);
      const inOpen = await failure(createWindow({ target: { ...target, leaseDir: path.join(open, "leases") }, mountpoints: ["/data"] }));
      expect(inOpen.code).toBe("LEASE_DIR_REFUSED");
      expect(inOpen.message).toMatch(/ancestor .* is writable by group or others.*without the sticky bit/);
      expect(agent.status).toBe("thawed");
    } finally {
      fs.rmSync(linked, { force: true });
      fs.rmSync(real, { recursive: true, force: true });
      fs.rmSync(open, { recursive: true, force: true });
    }
  });

  test("a lease directory the SSH user cannot create (a non-root user and /run) is refused with what to do", () => {
    // The daemon itself, as an unprivileged user, from its script on stdin as the start command runs it (the
    // system python3: root's PATH may name one under /root, which that user cannot run).
    const dir = `/run/pulumi-quiesce-test-${process.pid}`;
    const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-", dir], { input: daemonScript(), encoding: "utf8" });
    expect(r.status).toBe(4);
    expect(r.stdout).toMatch(new RegExp(`^REFUSED cannot create the lease directory ${dir} as uid 65534: Permission denied.*install -d -m 700 -o 65534`));
    expect(fs.existsSync(dir)).toBe(false);
  });

  test("symbolic links planted at the daemon's file names are not followed", async () => {
    const victim = path.join(os.tmpdir(), `victim-${process.pid}`);
    fs.writeFileSync(victim, "untouched\n");
    try {
      // The log, and the ended record a window will get: a daemon following them would write into the victim.
      fs.symlinkSync(victim, path.join(leaseDir, "daemon.log"));
      const err = await failure(createWindow({ target, mountpoints: ["/data"] }));
      expect(err.code).toBe("LEASE_DIR_REFUSED");
      expect(err.message).toMatch(/daemon.log is a symbolic link/);
      expect(fs.readFileSync(victim, "utf8")).toBe("untouched\n");
      fs.rmSync(path.join(leaseDir, "daemon.log"));
      const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
      fs.symlinkSync(victim, endedPath(leaseDir, w.windowId));
      // The daemon thaws, checks the status, then writes the ended record: wait for the record, not the thaw.
      const ended = endedPath(leaseDir, w.windowId);
      const deadline = Date.now() + 10_000;
      while ((agent.status === "frozen" || fs.lstatSync(ended).isSymbolicLink()) && Date.now() < deadline) await delay(100);
      expect(agent.status).toBe("thawed");
      expect(fs.readFileSync(victim, "utf8")).toBe("untouched\n");
      // The name now holds the daemon's own record, in place of the link.
      expect(fs.lstatSync(endedPath(leaseDir, w.windowId)).isSymbolicLink()).toBe(false);
    } finally {
      fs.rmSync(victim, { force: true });
    }
  });
});

test("garbage does not take the daemon down: lines that are not JSON, unknown ops, bad claims, a planted record, clients that hang up", async () => {
  const first = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 60, thawOnDisconnect: false });
  fs.writeFileSync(path.join(leaseDir, "claim-1-2.json"), JSON.stringify({ windowId: "../../etc" }));
  const replies: string[] = [];
  for (const line of [
    "PING\n",
    '{"id":1,"op":"nope"}\n',
    '{"id":2,"op":"claim","socket":"relative","windowId":"x"}\n',
    '{"id":3,"op":"claim","socket":"/etc/passwd","windowId":"../x"}\n',
    '{"id":4,"op":"release","windowId":"../../etc/passwd","thaw":true}\n',
    `{"id":5,"op":"release","windowId":"${first.windowId}","thaw":false}\n`,
    "[1,2,3]\n",
  ]) {
    const c = net.createConnection(path.join(leaseDir, "daemon.sock"));
    await new Promise<void>((resolve) => c.once("connect", () => resolve()));
    replies.push(
      await new Promise<string>((resolve) => {
        let got = "";
        c.on("data", (d: Buffer) => {
          got += d.toString();
          if (got.includes("\n")) resolve(got);
        });
        c.write(line);
      }),
    );
    c.destroy();
  }
  expect(replies.map((r) => (JSON.parse(r) as { ok: boolean; code?: string }).code)).toEqual([
    "BAD_REQUEST",
    "BAD_REQUEST",
    "INVALID_INPUT",
    "INVALID_INPUT",
    "INVALID_INPUT",
    undefined, // an armed window is never withdrawn untouched: thaw:false on it is a release like any other
    "BAD_REQUEST",
  ]);
  expect(agent.status).toBe("thawed");
  const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
  await waitForFile(endedPath(leaseDir, w.windowId), 10_000);
  expect(agent.status).toBe("thawed");
  const log = fs.readFileSync(path.join(leaseDir, "daemon.log"), "utf8");
  expect(log.match(/ serving /g)).toHaveLength(1);
});

describe("the daemon dies while a window is held", () => {
  test("its worker is killed: the supervisor restarts it from its records, the holder re-attaches, the window stays held", async () => {
    const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 300 });
    const before = await daemonPids(target);
    process.kill(before.pid, "SIGKILL");
    const after = await daemonPids(target);
    expect(after.pid).not.toBe(before.pid);
    expect(after.supervisor).toBe(before.supervisor);
    expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("held");
    expect(agent.status).toBe("frozen");
    expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("released");
    expect(agent.status).toBe("thawed");
  });

  test("the whole daemon is killed: the holder notices, starts a new one, which ends the window at its deadline", async () => {
    const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 4 });
    const before = await daemonPids(target);
    process.kill(before.supervisor, "SIGKILL");
    process.kill(before.pid, "SIGKILL");
    const deadline = Date.now() + 10_000;
    while ((alive(before.pid) || alive(before.supervisor)) && Date.now() < deadline) await delay(20);
    // The holder's next request waits for its re-arm, which started a new daemon from the records on disk.
    expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("held");
    const now = await daemonPids(target);
    expect(now.supervisor).not.toBe(before.supervisor);
    const ended = JSON.parse(await waitForFile(endedPath(leaseDir, w.windowId), 15_000)) as { how: string };
    expect(ended.how).toBe("expired");
    expect(agent.status).toBe("thawed");
  });
});

describe("faults at every step boundary of create: never frozen without a record that ends it, never another window's freeze thawed, a racer's freeze survives", () => {
  type Fault = "relay dropped" | "control channel cut" | "daemon killed" | "client killed";
  const cases: Array<[Fault, CreateStep]> = [];
  for (const fault of ["relay dropped", "control channel cut", "daemon killed", "client killed"] as const) {
    for (const step of CREATE_STEPS) {
      if (fault === "relay dropped" && (step === "claimed" || step === "verified" || step === "returned")) continue; // no relay open then
      cases.push([fault, step]);
    }
  }

  test.each(cases)("%s after %s", async (fault, step) => {
    const request = { target, mountpoints: ["/data"], maxDurationSeconds: 120, timeouts: { agentSeconds: 3 } };
    let outcome: { window?: WindowInfo; error?: unknown };
    if (fault === "client killed") {
      const child = startCreator(request, step);
      const code = await new Promise<number | null>((resolve) => child.once("exit", (c, signal) => resolve(signal === "SIGKILL" ? null : c)));
      expect(code).toBeNull();
      outcome = { error: new Error("killed") };
    } else {
      const pool = new SshPool();
      const onStep: LifecycleDeps["onStep"] = async (s, io) => {
        if (s !== step) return;
        if (fault === "relay dropped") io.relay?.destroy();
        if (fault === "control channel cut") io.daemon.drop();
        if (fault === "daemon killed") process.kill((await daemonPids(target)).pid, "SIGKILL");
      };
      outcome = await createWindow(request, { pool, onStep }).then(
        (window) => ({ window }),
        (error: unknown) => ({ error }),
      );
    }
    // A racer (its own channel to the daemon) creates as soon as the guest is free.
    const racer = await createWhenFree({ target, mountpoints: ["/data2"], maxDurationSeconds: 120 }, { pool: new SshPool() }).catch((e: unknown) => e);
    if (outcome.window && (await windowStatus(target, { windowId: outcome.window.windowId })).state === "held") {
      // The create survived the fault and holds the guest: the racer is refused, naming it.
      expect(isQuiesceError(racer, "ALREADY_FROZEN")).toBe(true);
      expect((racer as Error).message).toContain(outcome.window.windowId);
      expect((await releaseWindow({ target, windowId: outcome.window.windowId })).outcome).toBe("released");
      expect(agent.status).toBe("thawed");
      return;
    }
    // The create failed (or its window ended): the racer got the guest, and nothing of the first window is left.
    expect(racer).toMatchObject({ frozenMountpoints: ["/data2"] });
    const held = racer as WindowInfo;
    expect(readClaim(leaseDir, agent.socketPath)).toMatchObject({ windowId: held.windowId });
    expect([...agent.frozen]).toEqual(["/data2"]);
    // Give a late end of the first window every chance to do harm: it must not touch the racer's freeze.
    await delay(300);
    expect([...agent.frozen]).toEqual(["/data2"]);
    expect((await windowStatus(target, { windowId: held.windowId })).state).toBe("held");
    expect((await releaseWindow({ target, windowId: held.windowId })).outcome).toBe("released");
    expect(agent.status).toBe("thawed");
    expect(claimFiles(leaseDir)).toEqual([]);
  });
});

describe("faults around a release", () => {
  test("the release's channel is cut right after the request went out: the daemon still thaws and removes only its own record, and the next window survives", async () => {
    const pool = new SshPool();
    const w = await createWindow({ target, mountpoints: ["/data"] }, { pool });
    const daemon = daemonFor({ leaseDir }, pool);
    const releasing = daemon.request("release", { windowId: w.windowId, thaw: true });
    daemon.drop(); // the SSH connection drops with the request in flight
    await expect(releasing).rejects.toMatchObject({ code: "WATCHDOG_UNAVAILABLE" });
    const next = await createWhenFree({ target, mountpoints: ["/data2"] }, { pool: new SshPool() });
    expect([...agent.frozen]).toEqual(["/data2"]);
    // The first window's retried release finds it ended and touches nothing of the next one's.
    const again = await releaseWindow({ target, windowId: w.windowId }, { pool: new SshPool() });
    expect(["already-released", "disconnected"]).toContain(again.outcome);
    expect([...agent.frozen]).toEqual(["/data2"]);
    expect((await windowStatus(target, { windowId: next.windowId })).state).toBe("held");
    expect((await releaseWindow({ target, windowId: next.windowId })).outcome).toBe("released");
  });

  test("a release of another window's id, or of an ended window, never thaws the holder's freeze", async () => {
    const w = await createWindow({ target, mountpoints: ["/data"] });
    expect((await releaseWindow({ target, windowId: "qw-someone-else" })).outcome).toBe("other-window");
    expect(agent.status).toBe("frozen");
    expect(agent.log).not.toContain("guest-fsfreeze-thaw");
    expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("released");
  });
});

test("1100 holders on one daemon at once (no select() limit): each holder's exit thaws its own window only; an expiring lease among them is thawed on time", async () => {
  const n = 1100;
  const agents: FakeAgent[] = [];
  const holders: net.Socket[] = [];
  const pool = new SshPool();
  try {
    for (let i = 0; i < n; i++) agents.push(await FakeAgent.start());
    const windows: WindowInfo[] = [];
    for (let i = 0; i < n; i += 100) {
      windows.push(
        ...(await Promise.all(agents.slice(i, i + 100).map((a) => createWindow({ target: { socketPath: a.socketPath, leaseDir }, mountpoints: ["/data"] }, { pool })))),
      );
    }
    // One holder connection per window, each attached to its window.
    for (const w of windows) {
      const c = net.createConnection(path.join(leaseDir, "daemon.sock"));
      c.on("error", () => undefined);
      holders.push(c);
      const reply = await new Promise<string>((resolve) => {
        c.once("data", (d: Buffer) => resolve(d.toString()));
        c.write(JSON.stringify({ id: 1, op: "attach", windowId: w.windowId }) + "\n");
      });
      expect(JSON.parse(reply)).toMatchObject({ ok: true });
    }
    // The creating process lets go: the 1100 attached holders keep every window.
    daemonFor({ leaseDir }, pool).drop();
    expect(((await daemonFor({ leaseDir }).request("list")).records as unknown[]).length).toBe(n);
    const { pid } = await daemonPids(target);
    expect(fs.readdirSync(`/proc/${pid}/fd`).length).toBeGreaterThan(2 * n);
    expect(agents.every((a) => a.status === "frozen")).toBe(true);
    // One holder goes: its window alone is thawed.
    holders[7].destroy();
    await waitForFile(endedPath(leaseDir, windows[7].windowId), 15_000);
    expect(agents[7].status).toBe("thawed");
    expect(agents.filter((a) => a.status === "frozen")).toHaveLength(n - 1);
    // A short lease among them ends on time.
    const short = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 2 });
    await waitForFile(endedPath(leaseDir, short.windowId), 15_000);
    expect(agent.status).toBe("thawed");
    expect(Date.now() - Date.parse(short.expiresAt)).toBeLessThan(5_000);
    // Every other holder goes at once: every window is thawed.
    for (const c of holders) c.destroy();
    const deadline = Date.now() + 60_000;
    while (agents.some((a) => a.status === "frozen") && Date.now() < deadline) await delay(200);
    expect(agents.every((a) => a.status === "thawed")).toBe(true);
  } finally {
    for (const c of holders) c.destroy();
    await Promise.all(agents.map((a) => a.stop()));
  }
}, 240_000);

describe("races the review found", () => {
  test("a claim whose client leaves at once leaves no agent connection behind: the guest is free for the next client", async () => {
    await daemonPids(target); // the daemon runs
    for (let i = 0; i < 5; i++) {
      const c = net.createConnection(path.join(leaseDir, "daemon.sock"));
      await new Promise<void>((resolve) => c.once("connect", () => resolve()));
      c.end(JSON.stringify({ id: 1, op: "claim", socket: agent.socketPath, windowId: `qw-gone-${i}`, owner: "t", claimMs: 60_000 }) + "\n");
      await new Promise<void>((resolve) => c.once("close", () => resolve()));
    }
    // No record stays, and a direct agent session (the chardev serves one client) gets through at once.
    const deadline = Date.now() + 5_000;
    while (claimFiles(leaseDir).length > 0 && Date.now() < deadline) await delay(50);
    expect(claimFiles(leaseDir)).toEqual([]);
    const s = await openSession(target, { agentSeconds: 3 });
    s.close();
    const w = await createWindow({ target, mountpoints: ["/data"] });
    expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("released");
  });

  test("a thaw being retried: force and release try again at once instead of answering the stale failure", async () => {
    const w = await createWindow({ target, mountpoints: ["/data"], thawOnDisconnect: false, timeouts: { agentSeconds: 1, thawSeconds: 1 } });
    agent.faults.silent = true;
    const first = await failure(releaseWindow({ target, windowId: w.windowId }, {}));
    expect(first.code).toBe("FREEZE_MISMATCH");
    expect(first.message).toMatch(/MAY BE FROZEN.*keeps the record and retries/s);
    agent.resume();
    const forced = await forceThaw(target);
    expect(forced.lease?.windowId).toBe(w.windowId);
    expect(agent.status).toBe("thawed");
    expect(claimFiles(leaseDir)).toEqual([]);
  }, 60_000);
});
