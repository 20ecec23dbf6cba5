/**
 * The lab's guest variants that failure-path tests build on: a guest whose agent never runs, a disk with
 * no serial, a vfat /boot/efi as on a UEFI guest, and a VM paused through QMP (its agent goes silent, as
 * AGENT-FACTS.md says an absent agent does).
 */
import * as path from "node:path";
import { createWindow, releaseWindow, windowStatus } from "../../provider/quiesce/lifecycle";
import { LabAgentProbe, LabError, LabGuest, startGuest, withAgentProbe } from "./lab";
import { LAB_START_TIMEOUT_MS } from "./shared";

interface FsinfoEntry {
  mountpoint: string;
  type: string;
  disk: { serial?: string; dev?: string }[];
}

let silent: LabGuest | undefined;
let plain: LabGuest | undefined;

beforeAll(async () => {
  const [a, b] = await Promise.allSettled([
    startGuest({ agent: false, load: false }),
    startGuest({ load: false, data2Serial: null, efiDisk: true }),
  ]);
  silent = a.status === "fulfilled" ? a.value : undefined;
  plain = b.status === "fulfilled" ? b.value : undefined;
  if (a.status === "rejected") throw a.reason;
  if (b.status === "rejected") throw b.reason;
}, LAB_START_TIMEOUT_MS);

afterAll(async () => {
  await Promise.all([silent?.stop(), plain?.stop()]);
}, 60_000);

function running(guest: LabGuest | undefined): LabGuest {
  if (!guest) throw new Error("the guest did not start: see the beforeAll failure above");
  return guest;
}

test("a guest started with agent: false accepts the connection but never answers", async () => {
  const guest = running(silent);
  expect(guest.agent).toBe(false);
  expect(guest.timings.agentReadyMs).toBeUndefined();
  const attempt = LabAgentProbe.connect(guest.socketPath, { timeoutMs: 3_000 });
  await expect(attempt).rejects.toMatchObject({ code: "LAB_TIMEOUT" });
  await expect(attempt).rejects.toBeInstanceOf(LabError);
});

test("a disk attached without a serial is still mounted, and fsinfo reports no serial for it", async () => {
  const guest = running(plain);
  expect(guest.disk("/data2").serial).toBeUndefined();
  expect(guest.disk("/data2").guestDev).toMatch(/^\/dev\/vd[a-z]$/);
  const fsinfo = await withAgentProbe(guest.socketPath, (agent) => agent.execute<FsinfoEntry[]>("guest-get-fsinfo"));
  const data2 = fsinfo.find((e) => e.mountpoint === "/data2");
  expect(data2?.disk).toHaveLength(1);
  expect(data2?.disk[0].serial).toBeUndefined();
  expect(data2?.disk[0].dev).toBe(guest.disk("/data2").guestDev);
  expect(fsinfo.find((e) => e.mountpoint === "/data")?.disk[0].serial).toBe("qdata1");
});

test("a vfat /boot/efi (a UEFI guest): the real agent lists it but skips it when freezing; create leaves it out, and refuses it when selected", async () => {
  const guest = running(plain);
  const fsinfo = await withAgentProbe(guest.socketPath, (agent) => agent.execute<FsinfoEntry[]>("guest-get-fsinfo"));
  expect(fsinfo.find((e) => e.mountpoint === "/boot/efi")).toMatchObject({ type: "vfat" });
  // The agent itself: freeze-all counts the two ext4 disks only (FIFREEZE on vfat says EOPNOTSUPP).
  const count = await withAgentProbe(guest.socketPath, async (agent) => {
    try {
      return await agent.execute<number>("guest-fsfreeze-freeze");
    } finally {
      await agent.execute("guest-fsfreeze-thaw");
    }
  });
  expect(count).toBe(2);
  const target = { socketPath: guest.socketPath, leaseDir: path.join(guest.runDir, "leases") };
  const w = await createWindow({ target, thawOnDisconnect: false });
  expect(w).toMatchObject({ frozenMountpoints: ["/data", "/data2"], frozenCount: 2 });
  expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("released");
  const err = await createWindow({ target, mountpoints: ["/data", "/boot/efi"] }).catch((e: unknown) => e);
  expect(err).toMatchObject({ code: "NOT_FREEZABLE", message: expect.stringMatching(/\/boot\/efi \(vfat/) });
  expect((await windowStatus(target)).agentStatus).toBe("thawed");
});

test("pausing the VM through QMP silences the agent; resuming brings it back", async () => {
  const guest = running(plain);
  await guest.qmp("stop");
  try {
    await expect(guest.qmp("query-status")).resolves.toMatchObject({ status: "paused" });
    await expect(LabAgentProbe.connect(guest.socketPath, { timeoutMs: 2_000 })).rejects.toMatchObject({ code: "LAB_TIMEOUT" });
  } finally {
    await guest.qmp("cont");
  }
  // The syncs sent while paused are answered first; the probe discards them and waits for its own.
  await expect(withAgentProbe(guest.socketPath, (agent) => agent.execute("guest-ping"), { timeoutMs: 15_000 })).resolves.toEqual({});
});
