/**
 * The watchdog against the fake agent on a local socket: deadline, disconnect of the freezing process, an
 * agent that hangs mid-freeze, ownership. The whole suite runs once per port of the daemon, each a real
 * process: provider/quiesce/watchdog.py under python3 and provider/quiesce/watchdog.pl under perl, forced
 * with QUIESCE_WATCHDOG_INTERPRETER (inherited by the child processes the tests spawn).
 * The same guarantees are proven against the real guest over SSH in test/lab/faults.test.ts.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { createWindow, releaseWindow, windowStatus, type AgentTarget } from "../../provider/quiesce/lifecycle";
import { endedFileName, LocalLeaseStore } from "../../provider/quiesce/lease";
import { isQuiesceError } from "../../provider/errors";
import { WATCHDOG_INTERPRETER_ENV, watchdogScript, type WatchdogInterpreter } from "../../provider/quiesce/watchdog";
import { spawnCreator } from "./creatorProcess";
import { FakeAgent } from "./fakeAgent";
import { waitForFile } from "./waitForFile";

const interpreters: WatchdogInterpreter[] = ["python3", "perl"];

describe.each(interpreters)("the watchdog under %s", (interpreter) => {
  let saved: string | undefined;
  beforeAll(() => {
    saved = process.env[WATCHDOG_INTERPRETER_ENV];
    process.env[WATCHDOG_INTERPRETER_ENV] = interpreter;
  });
  afterAll(() => {
    if (saved === undefined) delete process.env[WATCHDOG_INTERPRETER_ENV];
    else process.env[WATCHDOG_INTERPRETER_ENV] = saved;
  });

  let agent: FakeAgent;
  let leaseDir: string;
  let target: AgentTarget;

  beforeEach(async () => {
    agent = await FakeAgent.start();
    leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
    target = { socketPath: agent.socketPath, leaseDir };
  });
  afterEach(async () => {
    await agent.stop();
    fs.rmSync(leaseDir, { recursive: true, force: true });
  });

  const endedPath = (): string => path.join(leaseDir, endedFileName(agent.socketPath));

  test("nobody releases: thawed at the deadline, recorded as expired; a later release reports it", async () => {
    const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
    expect(agent.status).toBe("frozen");
    // The forced port is the one that runs: only its script was written into the lease directory.
    const [ours, other] = interpreter === "perl" ? ["watchdog.pl", "watchdog.py"] : ["watchdog.py", "watchdog.pl"];
    expect(fs.existsSync(path.join(leaseDir, ours))).toBe(true);
    expect(fs.existsSync(path.join(leaseDir, other))).toBe(false);
    await waitForFile(endedPath(), 10_000);
    const thawedAt = Date.now();
    expect(agent.status).toBe("thawed");
    expect(thawedAt - Date.parse(w.expiresAt)).toBeLessThan(1_000);
    expect(await new LocalLeaseStore(leaseDir).read(agent.socketPath)).toBeUndefined();
    expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("expired");
    expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("expired");
  });

  test("the deadline is kept on the host's clock: a client clock an hour fast or slow neither stretches nor cuts the freeze", async () => {
    // A client clock an hour slow writes a lease that looks long expired: it must still last its 3 s.
    await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 3, thawOnDisconnect: false }, { now: () => Date.now() - 3_600_000 });
    const createdAt = Date.now();
    await waitForFile(endedPath(), 30_000);
    expect(Date.now() - createdAt).toBeGreaterThanOrEqual(2_000);
    expect(agent.status).toBe("thawed");
    fs.rmSync(endedPath());
    // A client clock an hour fast writes a lease that looks an hour away: it must still end after its 1 s.
    await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false }, { now: () => Date.now() + 3_600_000 });
    await waitForFile(endedPath(), 10_000);
    expect(agent.status).toBe("thawed");
  }, 60_000);

  test("the freezing process is killed: the watchdog thaws at once (thawOnDisconnect)", async () => {
    const { child, windowId } = await spawnCreator({ target, mountpoints: ["/data"], maxDurationSeconds: 300 });
    expect(agent.status).toBe("frozen");
    child.kill("SIGKILL");
    const ended = await waitForFile(endedPath(), 10_000);
    expect(agent.status).toBe("thawed");
    expect(JSON.parse(ended)).toMatchObject({ windowId, how: "disconnected" });
    expect((await windowStatus(target, { windowId })).state).toBe("disconnected");
  });

  test("a freezing process that hangs (SIGSTOP, as a hung or crashed machine) is gone once its heartbeats stop; a live one stays held", async () => {
    const { child, windowId } = await spawnCreator({ target, mountpoints: ["/data"], maxDurationSeconds: 300 });
    // A second guest held by this (live) process through the same watchdog, for the same time.
    const live = await FakeAgent.start();
    const liveTarget: AgentTarget = { socketPath: live.socketPath, leaseDir };
    try {
      const liveWindow = await createWindow({ target: liveTarget, mountpoints: ["/data"], maxDurationSeconds: 300 });
      child.kill("SIGSTOP"); // its connection stays open: only the silence tells
      const stoppedAt = Date.now();
      const ended = JSON.parse(await waitForFile(endedPath(), 40_000)) as { windowId: string; how: string };
      expect(ended).toMatchObject({ windowId, how: "disconnected" });
      expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(10_000); // not before the silence bound (15 s)
      expect(agent.status).toBe("thawed");
      // The live holder beat all along: still frozen, still held.
      expect(live.status).toBe("frozen");
      expect((await windowStatus(liveTarget, { windowId: liveWindow.windowId })).state).toBe("held");
      expect((await releaseWindow({ target: liveTarget, windowId: liveWindow.windowId })).outcome).toBe("released");
    } finally {
      child.kill("SIGKILL");
      await live.stop();
    }
  }, 90_000);

  test("a released window is disarmed: closing its process later thaws nothing", async () => {
    const w = await createWindow({ target, mountpoints: ["/data"] });
    await releaseWindow({ target, windowId: w.windowId });
    const second = await createWindow({ target, mountpoints: ["/data2"], thawOnDisconnect: false });
    // The first window's hold is gone; the second window's freeze stays.
    expect(agent.status).toBe("frozen");
    // The only ended record is the release's own, not a watchdog thaw.
    expect(JSON.parse(fs.readFileSync(endedPath(), "utf8"))).toMatchObject({ windowId: w.windowId, how: "released" });
    await releaseWindow({ target, windowId: second.windowId });
  });

  test("the agent hangs mid-freeze: create fails within its timeout, and the guest is thawed when the agent comes back", async () => {
    agent.faults.hangAfterCommand = "guest-fsfreeze-freeze-list";
    const err = await createWindow({ target, mountpoints: ["/data"], timeouts: { agentSeconds: 0.5, freezeSeconds: 0.5, thawSeconds: 0.5 } }).catch(
      (e: unknown) => e,
    );
    expect(isQuiesceError(err, "AGENT_TIMEOUT")).toBe(true);
    expect((err as Error).message).toMatch(/MAY BE FROZEN.*watchdog takes over/s);
    expect(agent.status).toBe("frozen");
    // The lease stays, so the watchdog keeps trying; once the agent answers again, it thaws.
    expect(await new LocalLeaseStore(leaseDir).read(agent.socketPath)).toBeDefined();
    agent.resume();
    await waitForFile(endedPath(), 30_000);
    expect(agent.status).toBe("thawed");
  });

  test("the agent hangs mid-freeze with no hold (thawOnDisconnect off): the watchdog still takes over at once, not at the deadline", async () => {
    agent.faults.hangAfterCommand = "guest-fsfreeze-freeze-list";
    const err = await createWindow({
      target,
      mountpoints: ["/data"],
      thawOnDisconnect: false,
      maxDurationSeconds: 3600,
      timeouts: { agentSeconds: 0.5, freezeSeconds: 0.5, thawSeconds: 0.5 },
    }).catch((e: unknown) => e);
    expect(isQuiesceError(err, "AGENT_TIMEOUT")).toBe(true);
    expect((err as Error).message).toMatch(/MAY BE FROZEN.*watchdog takes over/s);
    expect(agent.status).toBe("frozen");
    agent.resume();
    // Thawed as soon as the agent answers (retries back off to 5 s at most), an hour before the deadline.
    expect(JSON.parse(await waitForFile(endedPath(), 30_000))).toMatchObject({ how: "expired" });
    expect(agent.status).toBe("thawed");
  });

  test("a guest whose agent went silent delays no other guest's thaw", async () => {
    const other = await FakeAgent.start();
    const otherTarget: AgentTarget = { socketPath: other.socketPath, leaseDir };
    try {
      await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
      const w = await createWindow({ target: otherTarget, mountpoints: ["/data"], maxDurationSeconds: 2, thawOnDisconnect: false });
      // The first guest's agent stops answering: the watchdog's thaw of it, at its deadline, hangs (10 s per try).
      agent.faults.silent = true;
      const otherEnded = path.join(leaseDir, endedFileName(other.socketPath));
      await waitForFile(otherEnded, 30_000);
      expect(other.status).toBe("thawed");
      // Thawed about at its own deadline, not after the silent guest's attempt gave up.
      expect(Date.now() - Date.parse(w.expiresAt)).toBeLessThan(5_000);
      expect(agent.status).toBe("frozen");
      agent.resume();
      await waitForFile(endedPath(), 30_000);
      expect(agent.status).toBe("thawed");
    } finally {
      await other.stop();
    }
  }, 60_000);

  test("garbage does not take the watchdog down: a malformed lease, a bad HOLD, a client that hangs up", async () => {
    const first = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 60, thawOnDisconnect: false });
    // A lease file with a valid name but nonsense inside, and a client that leaves before its reply.
    fs.writeFileSync(path.join(leaseDir, "0".repeat(32) + ".json"), JSON.stringify({ expiresAt: 1234 }));
    for (const line of ["PING\n", "HOLD w ../../etc/passwd\n", "HOLD\n"]) {
      const c = net.createConnection(path.join(leaseDir, "watchdog.sock"));
      await new Promise<void>((resolve) => c.once("connect", () => resolve()));
      c.end(line);
      c.destroy();
    }
    await releaseWindow({ target, windowId: first.windowId });
    // The same daemon still enforces a deadline afterwards.
    const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
    fs.rmSync(endedPath(), { force: true });
    await waitForFile(endedPath(), 10_000);
    expect(agent.status).toBe("thawed");
    expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("expired");
    // And it is the same daemon: it never had to be started again.
    const log = fs.readFileSync(path.join(leaseDir, "watchdog.log"), "utf8");
    expect(log.match(/ serving /g)).toHaveLength(1);
  });

  test("out of file descriptors: accepts pause, holders are still read, and deadlines are kept once descriptors free up", async () => {
    // A watchdog limited to a few descriptors, so a flood of clients exhausts them (EMFILE on accept).
    const file = path.join(leaseDir, interpreter === "perl" ? "watchdog.pl" : "watchdog.py");
    fs.writeFileSync(file, watchdogScript(interpreter));
    const daemon = spawn("sh", ["-c", `ulimit -n 24 && exec ${interpreter} "$0" "$1" --foreground`, file, leaseDir], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    daemon.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const flood: net.Socket[] = [];
    const other = await FakeAgent.start();
    try {
      await new Promise<void>((resolve, reject) => {
        daemon.stdout.on("data", (d: Buffer) => d.toString().includes("READY") && resolve());
        daemon.once("exit", (code) => reject(new Error(`the watchdog exited ${code}`)));
      });
      // A is held by this process (it beats every 2 s); B has only a deadline.
      const a = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 120 });
      const otherTarget: AgentTarget = { socketPath: other.socketPath, leaseDir };
      const b = await createWindow({ target: otherTarget, mountpoints: ["/data"], maxDurationSeconds: 18, thawOnDisconnect: false });
      for (let i = 0; i < 40; i++) flood.push(net.createConnection(path.join(leaseDir, "watchdog.sock")).on("error", () => undefined));
      // With no descriptor left the log file cannot be opened either: the watchdog says it on stderr.
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the watchdog never said it could not accept; its stderr: ${stderr.slice(-500)}`)), 20_000);
        const check = (): void => {
          if (!stderr.includes("cannot accept a client")) return;
          clearTimeout(timer);
          resolve();
        };
        daemon.stderr.on("data", check);
        check();
      });
      for (const c of flood) c.destroy();
      // B ends at its deadline, 15 s and more after the flood: the watchdog kept working all along.
      await waitForFile(path.join(leaseDir, endedFileName(other.socketPath)), 40_000);
      expect(other.status).toBe("thawed");
      expect(Date.now() - Date.parse(b.expiresAt)).toBeLessThan(5_000);
      // A's heartbeats were read throughout: still frozen and held.
      expect(agent.status).toBe("frozen");
      expect((await windowStatus(target, { windowId: a.windowId })).state).toBe("held");
      expect((await releaseWindow({ target, windowId: a.windowId })).outcome).toBe("released");
    } finally {
      for (const c of flood) c.destroy();
      daemon.kill("SIGKILL");
      await other.stop();
    }
  }, 90_000);

  test("the watchdog never thaws a freeze that is not its window's", async () => {
    const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1, thawOnDisconnect: false });
    // Someone else takes over the guest: the lease now names another window with a later deadline.
    const store = new LocalLeaseStore(leaseDir);
    const lease = await store.read(agent.socketPath);
    await store.write({ ...(lease as NonNullable<typeof lease>), windowId: "qw-someone-else", expiresAt: new Date(Date.now() + 60_000).toISOString() });
    // Past the first window's deadline the guest is still frozen, because the lease is not its own.
    const first = await waitForFile(endedPath(), 2_500).catch((e: unknown) => e);
    expect(first).toBeInstanceOf(Error);
    expect(agent.status).toBe("frozen");
    expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("other-window");
    expect((await releaseWindow({ target, windowId: "qw-someone-else" })).outcome).toBe("released");
  });
});
