/**
 * Freeze safety, proven by fault injection against the real guest (qemu-ga, write load) over the real sshd:
 * no freeze outlives its lease, its process or its owner. Each case ends with the agent thawed, the lease
 * gone and the guest's writers resumed. Measured figures are printed at the end (README, "Reliability").
 */
import { Client } from "ssh2";
import * as path from "node:path";
import { createWindow, releaseWindow, windowStatus, type SocketTarget } from "../../provider/quiesce/lifecycle";
import { daemonFor } from "../../provider/host/daemon";
import { claimFiles, endedPath as endedFile } from "../fake/daemonFiles";
import { deleteWindow, readWindow, type WindowOutputs } from "../../provider/dynamic/window";
import { createRelease } from "../../provider/dynamic/release";
import { SshPool, type SshConnectionConfig } from "../../provider/transport/ssh";
import { isQuiesceError } from "../../provider/errors";
import { raceForOneWinner, spawnCreator } from "../fake/creatorProcess";
import { waitForFile } from "../fake/waitForFile";
import { descendants } from "./descendants";
import { startSshd, withAgentProbe, type LabSshd } from "./lab";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: true, allowReboot: true }, sshd: { extraConfig: "MaxStartups 100" } });
const pool = new SshPool();
const figures: Record<string, number | string> = {};
afterAll(() => {
  pool.closeAll();
  console.log(`QUIESCE-FAULT-FIGURES ${JSON.stringify(figures)}`);
});

function connection(sshd: LabSshd = lab().sshd): SshConnectionConfig {
  return { host: sshd.host, port: sshd.port, user: "root", privateKey: sshd.privateKey, knownHostsPath: sshd.knownHostsPath };
}
let caseNo = 0;
/** A fresh lease directory per case, so each case's ended record is its own. */
function target(sshd?: LabSshd): SocketTarget {
  return { connection: connection(sshd), socketPath: lab().guest.socketPath, leaseDir: path.join(lab().guest.runDir, `leases-${++caseNo}`) };
}
const endedPath = (t: SocketTarget, windowId: string): string => endedFile(t.leaseDir as string, windowId);

async function loadCount(): Promise<number> {
  const log = await withAgentProbe(lab().guest.socketPath, (probe) => probe.readFile("/data/load/log"));
  return log.toString("utf8").split("\n").filter(Boolean).length;
}

/** The guest is thawed, the lease gone, and the in-guest writer makes progress again. */
async function expectSettled(t: SocketTarget): Promise<void> {
  const report = await windowStatus(t, { timeouts: { agentSeconds: 30 } });
  expect(report.agentStatus).toBe("thawed");
  expect(report.lease).toBeUndefined();
  expect(claimFiles(t.leaseDir as string)).toEqual([]);
  const before = await loadCount();
  const deadline = Date.now() + 30_000;
  let after = before;
  // Bounded: each read is a real agent round trip; the writer appends a line every few hundred ms.
  while (after <= before && Date.now() < deadline) after = await loadCount();
  expect(after).toBeGreaterThan(before);
}

test("the freezing process is SIGKILLed right after create: thawed within 2 s (thawOnDisconnect)", async () => {
  const t = target();
  const { child, windowId } = await spawnCreator({ target: t, mountpoints: ["/data"] });
  const killedAt = Date.now();
  child.kill("SIGKILL");
  const ended = JSON.parse(await waitForFile(endedPath(t, windowId), 30_000)) as { windowId: string; how: string };
  const thawMs = Date.now() - killedAt;
  figures.killedProcessThawMs = thawMs;
  expect(ended).toMatchObject({ windowId, how: "disconnected" });
  expect(thawMs).toBeLessThan(2_000);
  await expectSettled(t);
}, 120_000);

test("the freezing process hangs (SIGSTOP: its connection stays open, as when its machine hangs): thawed within 25 s (15 s of silence)", async () => {
  const t = target();
  const { child, windowId } = await spawnCreator({ target: t, mountpoints: ["/data"] });
  try {
    const stoppedAt = Date.now();
    child.kill("SIGSTOP");
    const ended = JSON.parse(await waitForFile(endedPath(t, windowId), 60_000)) as { windowId: string; how: string };
    const thawMs = Date.now() - stoppedAt;
    figures.hungProcessThawMs = thawMs;
    expect(ended).toMatchObject({ windowId, how: "disconnected" });
    // The silence bound is 15 s after the last heartbeat (every 2 s), plus the thaw.
    expect(thawMs).toBeLessThan(25_000);
    await expectSettled(t);
  } finally {
    child.kill("SIGKILL");
  }
}, 120_000);

test("the SSH connection is cut mid-window (sshd child killed): thawed within 2 s", async () => {
  const sshd = await startSshd();
  const ownPool = new SshPool();
  try {
    const t = target(sshd);
    const w = await createWindow({ target: t, mountpoints: ["/data"] }, { pool: ownPool });
    const cutAt = Date.now();
    for (const pid of descendants(sshd.pid)) process.kill(pid, "SIGKILL");
    const ended = JSON.parse(await waitForFile(endedPath(t, w.windowId), 30_000)) as { windowId: string; how: string };
    figures.cutConnectionThawMs = Date.now() - cutAt;
    expect(ended).toMatchObject({ windowId: w.windowId, how: "disconnected" });
    expect(figures.cutConnectionThawMs).toBeLessThan(2_000);
    await expectSettled(target());
  } finally {
    ownPool.closeAll();
    await sshd.stop();
  }
}, 120_000);

test("nobody releases: thawed within 1 s after the deadline; a later release fails loudly; delete succeeds", async () => {
  const t = target();
  const w = await createWindow({ target: t, mountpoints: ["/data"], maxDurationSeconds: 3, thawOnDisconnect: false }, { pool });
  await waitForFile(endedPath(t, w.windowId), 30_000);
  const lateMs = Date.now() - Date.parse(w.expiresAt);
  figures.deadlineThawLateMs = lateMs;
  expect(lateMs).toBeLessThan(1_000);
  const release = await createRelease({ windowId: w.windowId, connection: t.connection, socketPath: t.socketPath, leaseDir: t.leaseDir }).catch(
    (e: unknown) => e,
  );
  expect(isQuiesceError(release, "LEASE_EXPIRED")).toBe(true);
  expect((release as Error).message).toMatch(/MAY BE INCONSISTENT/);
  const props = { ...t, mountpoints: ["/data"], windowId: w.windowId } as unknown as WindowOutputs;
  await deleteWindow(w.windowId, props);
  await expectSettled(t);
}, 120_000);

test("the guest reboots while frozen: status, read and delete report it correctly", async () => {
  const t = target();
  const w = await createWindow({ target: t, mountpoints: ["/data"], thawOnDisconnect: false }, { pool });
  await lab().guest.qmp("system_reset");
  // The agent is gone while the guest boots; wait (bounded) until it answers again.
  const deadline = Date.now() + 120_000;
  let report: Awaited<ReturnType<typeof windowStatus>> | undefined;
  while (!report && Date.now() < deadline) {
    report = await windowStatus(t, { windowId: w.windowId, timeouts: { agentSeconds: 3 } }).catch((e: unknown) => {
      if (isQuiesceError(e, "AGENT_TIMEOUT", "AGENT_INTERRUPTED")) return undefined;
      throw e;
    });
  }
  expect(report).toMatchObject({ agentStatus: "thawed", state: "thawed-outside" });
  const props = { ...t, mountpoints: ["/data"], windowId: w.windowId } as unknown as WindowOutputs;
  const read = await readWindow(w.windowId, props);
  expect(read.props).toMatchObject({ held: false, state: "thawed-outside" });
  await deleteWindow(w.windowId, props);
  await expectSettled(t);
}, 240_000);

test("20 concurrent creates on one guest from 20 processes: exactly one wins, the others name it, nobody thaws it", async () => {
  const t = target();
  const winner = await raceForOneWinner(t);
  const report = await windowStatus(t, { windowId: winner });
  expect(report).toMatchObject({ agentStatus: "frozen", state: "held" });
  expect((await releaseWindow({ target: t, windowId: winner }, { pool })).outcome).toBe("released");
  await expectSettled(t);
}, 300_000);


test("the host daemon is SIGKILLed (worker and supervisor) while a window is held: the holder restarts it, the window stays held and still ends at its deadline", async () => {
  const t = target();
  const w = await createWindow({ target: t, mountpoints: ["/data"], maxDurationSeconds: 8 }, { pool });
  const hello = await daemonFor({ connection: t.connection, leaseDir: t.leaseDir }, pool).request("hello");
  const killedAt = Date.now();
  process.kill(hello.supervisor as number, "SIGKILL");
  process.kill(hello.pid as number, "SIGKILL");
  // The holder's next request waits for its re-arm: a new daemon, started from the records on disk.
  expect((await windowStatus(t, { windowId: w.windowId }, { pool })).state).toBe("held");
  const again = await daemonFor({ connection: t.connection, leaseDir: t.leaseDir }, pool).request("hello");
  expect(again.pid).not.toBe(hello.pid);
  figures.daemonKilledRearmMs = Date.now() - killedAt;
  const ended = JSON.parse(await waitForFile(endedPath(t, w.windowId), 30_000)) as { how: string };
  const lateMs = Date.now() - Date.parse(w.expiresAt);
  figures.daemonKilledDeadlineLateMs = lateMs;
  expect(ended.how).toBe("expired");
  expect(lateMs).toBeLessThan(1_000);
  await expectSettled(t);
}, 120_000);

test("the lab's sshd offers no sftp subsystem, and every window works without it", async () => {
  // ssh2's own client, straight: pulumi-quiesce has no SFTP code left to ask with.
  const sftp = await new Promise<Error | undefined>((resolve) => {
    const c = new Client();
    c.on("ready", () =>
      c.sftp((err) => {
        c.end();
        resolve(err ?? undefined);
      }),
    );
    c.on("error", (err: Error) => resolve(err));
    c.connect({ host: lab().sshd.host, port: lab().sshd.port, username: "root", privateKey: lab().sshd.privateKey, hostVerifier: () => true });
  });
  expect(sftp).toBeInstanceOf(Error);
  const t = target();
  const w = await createWindow({ target: t, mountpoints: ["/data"] }, { pool });
  expect((await releaseWindow({ target: t, windowId: w.windowId }, { pool })).outcome).toBe("released");
  await expectSettled(t);
}, 120_000);
