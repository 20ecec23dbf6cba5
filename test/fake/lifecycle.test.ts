import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createWindow, releaseWindow, windowStatus, type SocketTarget } from "../../provider/quiesce/lifecycle";
import { claimFiles, endedPath, readClaim, removeLeaseDir } from "./daemonFiles";
import { failure } from "./failure";
import { waitForFile } from "./waitForFile";
import { defaultFilesystems, FakeAgent, type FakeFilesystem } from "./fakeAgent";

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
  // The daemon may still be writing an ended record there.
  await removeLeaseDir(leaseDir);
});


const freezeCommands = (): string[] => agent.log.filter((c) => c.startsWith("guest-fsfreeze-freeze"));

test("create freezes the selection with freeze-list, verifies, and records the lease", async () => {
  const w = await createWindow({ target, mountpoints: ["/data"], owner: "test/one", maxDurationSeconds: 60 });
  expect(w).toMatchObject({ frozenMountpoints: ["/data"], frozenCount: 1, owner: "test/one", agentVersion: "7.2.0-fake" });
  expect(Date.parse(w.expiresAt) - Date.parse(w.frozenAt)).toBe(60_000);
  expect(freezeCommands()).toEqual(["guest-fsfreeze-freeze-list"]);
  expect([...agent.frozen]).toEqual(["/data"]);
  expect(readClaim(leaseDir, agent.socketPath)).toMatchObject({ windowId: w.windowId, owner: "test/one", selection: ["/data"] });
  expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("held");
});

test("no selection freezes everything with freeze-all", async () => {
  const w = await createWindow({ target });
  expect(freezeCommands()).toEqual(["guest-fsfreeze-freeze"]);
  expect(w.frozenMountpoints).toEqual(["/data", "/data2"]);
});

test("disks select by serial, device or bus target", async () => {
  const w = await createWindow({ target, disks: ["qdata2"] });
  expect(w.frozenMountpoints).toEqual(["/data2"]);
  await releaseWindow({ target, windowId: w.windowId });
  const w2 = await createWindow({ target, disks: ["/dev/vda"] });
  expect(w2.frozenMountpoints).toEqual(["/data"]);
});

test("a disk selector that matches several disks is refused before anything is frozen, listing each match", async () => {
  // Every virtio-blk disk reports bus target virtio:0:0:0 (qemu-ga tells them apart only by pci-controller).
  const err = await failure(createWindow({ target, disks: ["virtio:0:0:0"] }));
  expect(err.code).toBe("AMBIGUOUS_DISK");
  expect(err.message).toContain("matches 2 disks");
  expect(err.message).toContain("serial=qdata1 dev=/dev/vda virtio:0:0:0 pci:0000:00:02.0 (/data)");
  expect(err.message).toContain("serial=qdata2 dev=/dev/vdb virtio:0:0:0 pci:0000:00:03.0 (/data2)");
  expect(freezeCommands()).toEqual([]);
  expect(agent.status).toBe("thawed");
});

test("a disk is selected by its controller's PCI address", async () => {
  const w = await createWindow({ target, disks: ["pci:0000:00:03.0"] });
  expect(w.frozenMountpoints).toEqual(["/data2"]);
  expect([...agent.frozen]).toEqual(["/data2"]);
});

test("one disk with two filesystems (partitions) is one disk: its selector freezes both", async () => {
  const disk = { "bus-type": "virtio", bus: 0, target: 0, unit: 0, serial: "qsys", "pci-controller": { domain: 0, bus: 0, slot: 4, function: 0 } };
  const partitioned = await FakeAgent.start({
    filesystems: [
      { name: "vda1", mountpoint: "/", type: "ext4", disks: [{ ...disk, dev: "/dev/vda1" }] },
      { name: "vda2", mountpoint: "/var", type: "ext4", disks: [{ ...disk, dev: "/dev/vda2" }] },
    ],
  });
  try {
    const partitionedTarget = { ...target, socketPath: partitioned.socketPath };
    const w = await createWindow({ target: partitionedTarget, disks: ["qsys"] });
    expect(w.frozenMountpoints).toEqual(["/", "/var"]);
    await releaseWindow({ target: partitionedTarget, windowId: w.windowId });
  } finally {
    await partitioned.stop();
  }
});

test("an unknown mount point fails before anything is frozen and lists what the guest has", async () => {
  const err = await failure(createWindow({ target, mountpoints: ["/data", "/nope"] }));
  expect(err.code).toBe("UNKNOWN_MOUNTPOINT");
  expect(err.message).toContain("/nope");
  expect(err.message).toContain("/data2 (ext4");
  expect(freezeCommands()).toEqual([]);
  expect(agent.status).toBe("thawed");
});

test("an unknown disk fails before anything is frozen", async () => {
  const err = await failure(createWindow({ target, disks: ["no-such-serial"] }));
  expect(err.code).toBe("UNKNOWN_DISK");
  expect(err.message).toContain("serial=qdata1");
  expect(freezeCommands()).toEqual([]);
});

test("a guest frozen by another window: create fails naming the owner, and the other freeze stays", async () => {
  const first = await createWindow({ target, mountpoints: ["/data"], owner: "proj/stack/first" });
  const err = await failure(createWindow({ target, mountpoints: ["/data2"], owner: "proj/stack/second" }));
  expect(err.code).toBe("ALREADY_FROZEN");
  expect(err.message).toContain(first.windowId);
  expect(err.message).toContain("proj/stack/first");
  expect(agent.status).toBe("frozen");
  expect(agent.log).not.toContain("guest-fsfreeze-thaw");
});

test("a guest frozen outside pulumi-quiesce: create fails and says so, touching nothing", async () => {
  agent.frozen.add("/data");
  const err = await failure(createWindow({ target, mountpoints: ["/data2"] }));
  expect(err.code).toBe("ALREADY_FROZEN");
  expect(err.message).toMatch(/outside pulumi-quiesce/);
  expect(agent.log).not.toContain("guest-fsfreeze-thaw");
  expect(agent.status).toBe("frozen");
});

test("a count mismatch thaws, then fails", async () => {
  agent.faults.reportCount = 0;
  const err = await failure(createWindow({ target, mountpoints: ["/data"] }));
  expect(err.code).toBe("FREEZE_MISMATCH");
  expect(agent.status).toBe("thawed");
  expect(agent.log.slice(-2)).toEqual(["guest-fsfreeze-thaw", "guest-fsfreeze-status"]);
  expect(claimFiles(leaseDir)).toEqual([]);
});

test("an error in the middle of the freeze leaves the guest thawed", async () => {
  agent.faults.freezeError = "failed to freeze /data2: Device or resource busy";
  const err = await failure(createWindow({ target, mountpoints: ["/data", "/data2"] }));
  expect(err.code).toBe("AGENT_COMMAND_FAILED");
  expect(err.fields.desc).toContain("Device or resource busy");
  expect(agent.status).toBe("thawed");
});

test("an agent that does not answer fails within the configured timeout, nothing frozen", async () => {
  agent.faults.silent = true;
  const err = await failure(createWindow({ target, mountpoints: ["/data"], timeouts: { agentSeconds: 0.3 } }));
  expect(err.code).toBe("AGENT_TIMEOUT");
  expect(err.fields.timeoutMs).toBe(300);
  agent.resume();
  expect(agent.status).toBe("thawed");
});

test("fsfreeze blocked by the administrator fails clearly", async () => {
  await agent.stop();
  agent = await FakeAgent.start({ blockedCommands: ["guest-fsfreeze-freeze-list"] });
  target = { socketPath: agent.socketPath, leaseDir };
  const err = await failure(createWindow({ target, mountpoints: ["/data"] }));
  expect(err.code).toBe("AGENT_FSFREEZE_DISABLED");
  expect(err.message).toContain("guest-fsfreeze-freeze-list");
});

test("release thaws an owned window, verifies, and removes the lease", async () => {
  const w = await createWindow({ target, mountpoints: ["/data"] });
  const r = await releaseWindow({ target, windowId: w.windowId });
  expect(r).toMatchObject({ outcome: "released", thawedCount: 1, agentStatus: "thawed" });
  expect(r.heldMs).toBeGreaterThanOrEqual(0);
  expect(agent.status).toBe("thawed");
  expect(claimFiles(leaseDir)).toEqual([]);
  // Releasing again touches nothing.
  const again = await releaseWindow({ target, windowId: w.windowId });
  expect(again).toMatchObject({ outcome: "already-released", thawedCount: 0 });
  expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("released");
});

test("release of a window whose lease belongs to another does not thaw", async () => {
  await createWindow({ target, mountpoints: ["/data"] });
  const r = await releaseWindow({ target, windowId: "qw-someone-else" });
  expect(r.outcome).toBe("other-window");
  expect(agent.status).toBe("frozen");
  expect(agent.log).not.toContain("guest-fsfreeze-thaw");
});

test("release after the guest was thawed outside reports it and clears the lease", async () => {
  const w = await createWindow({ target, mountpoints: ["/data"] });
  agent.frozen.clear();
  const r = await releaseWindow({ target, windowId: w.windowId });
  expect(r.outcome).toBe("thawed-outside");
  expect(claimFiles(leaseDir)).toEqual([]);
});

test("past the deadline the daemon has thawed the window; a release then reports it expired", async () => {
  const w = await createWindow({ target, mountpoints: ["/data"], maxDurationSeconds: 1 });
  await waitForFile(endedPath(leaseDir, w.windowId), 10_000);
  expect(agent.status).toBe("thawed");
  const r = await releaseWindow({ target, windowId: w.windowId });
  expect(r.outcome).toBe("expired");
});

test("the VM goes away mid-window: the daemon ends the record once as vm-gone, and never acts on a new VM at that path", async () => {
  const vmDir = fs.mkdtempSync(path.join(os.tmpdir(), "vm-"));
  const socketPath = path.join(vmDir, "qga.sock");
  await agent.stop();
  agent = await FakeAgent.start({ socketPath });
  target = { socketPath, leaseDir };
  const w = await createWindow({ target, mountpoints: ["/data"], thawOnDisconnect: false });
  await agent.stop();
  const ended = JSON.parse(await waitForFile(endedPath(leaseDir, w.windowId), 10_000)) as { how: string };
  expect(ended.how).toBe("vm-gone");
  expect(claimFiles(leaseDir)).toEqual([]);
  expect((await windowStatus(target, { windowId: w.windowId, vanishedSocket: "vm-gone" })).state).toBe("vm-gone");
  // Without a record, a missing socket is an error unless asked to mean vm-gone: the path may be wrong.
  expect((await failure(windowStatus(target))).code).toBe("SOCKET_MISSING");
  expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("vm-gone");
  // A new VM at the same path, frozen by someone else: the old window's record is gone, so nothing thaws it.
  agent = await FakeAgent.start({ socketPath });
  agent.frozen.add("/data");
  expect((await windowStatus(target, { windowId: w.windowId })).state).toBe("vm-gone");
  expect((await windowStatus(target)).state).toBe("frozen-outside");
  expect(agent.log).not.toContain("guest-fsfreeze-thaw");
});

describe("a UEFI guest with a bind mount (a vfat /boot/efi, and /srv bound from /data)", () => {
  const uefi = (): FakeFilesystem[] => [
    ...defaultFilesystems(),
    { name: "vdc1", mountpoint: "/boot/efi", type: "vfat", disks: [{ "bus-type": "virtio", bus: 0, target: 2, unit: 0, dev: "/dev/vdc1" }] },
    { name: "vda", mountpoint: "/srv", type: "ext4", disks: [{ "bus-type": "virtio", bus: 0, target: 0, unit: 0, dev: "/dev/vda", serial: "qdata1" }] },
  ];
  beforeEach(async () => {
    await agent.stop();
    agent = await FakeAgent.start({ filesystems: uefi() });
    target = { socketPath: agent.socketPath, leaseDir };
  });

  test("freezing everything skips what Linux cannot freeze and counts a bind mount once: the freeze is accepted", async () => {
    const w = await createWindow({ target });
    expect(freezeCommands()).toEqual(["guest-fsfreeze-freeze"]);
    expect(w.frozenMountpoints).toEqual(["/data", "/data2", "/srv"]);
    expect(w.frozenCount).toBe(2);
    expect(agent.status).toBe("frozen");
    expect((await releaseWindow({ target, windowId: w.windowId })).outcome).toBe("released");
  });

  test("selecting /data and its bind mount /srv expects one device", async () => {
    const w = await createWindow({ target, mountpoints: ["/data", "/srv"] });
    expect(w.frozenCount).toBe(1);
    await releaseWindow({ target, windowId: w.windowId });
  });

  test("selecting the vfat /boot/efi fails before anything is frozen and says why", async () => {
    const err = await failure(createWindow({ target, mountpoints: ["/data", "/boot/efi"] }));
    expect(err.code).toBe("NOT_FREEZABLE");
    expect(err.message).toMatch(/\/boot\/efi \(vfat.*cannot be frozen.*Leave it out/s);
    expect(freezeCommands()).toEqual([]);
  });
});
