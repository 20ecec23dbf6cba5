/** QuiesceWindow's diff: what replaces the window (a new freeze), what only updates it, and what is no change. */
import { diffWindow, updateWindow, type WindowInputs, type WindowOutputs } from "../../provider/dynamic/window";

const base = { connection: { host: "hv1", privateKey: "KEY" }, socketPath: "/run/vm1/qga.sock", mountpoints: ["/data"] } as unknown as WindowInputs;
const olds = { ...base, windowId: "qw-0123456789abcdef" } as unknown as WindowOutputs;
const diff = (news: Record<string, unknown>) => diffWindow("qw-0123456789abcdef", olds, { ...base, ...news } as unknown as WindowInputs);

test("an input set to its default is no change: port 22, user root, the default lease, lease dir and thawOnDisconnect", async () => {
  expect(
    await diff({
      connection: { host: "hv1", privateKey: "KEY", port: 22, user: "root" },
      leaseDir: "/run/pulumi-quiesce",
      maxDurationSeconds: 300,
      thawOnDisconnect: true,
      disks: [],
    }),
  ).toEqual({ changes: false, replaces: [], deleteBeforeReplace: true });
});

test("the target, the selection or the lease replace (delete first); credentials only update", async () => {
  expect(await diff({ connection: { host: "hv1", privateKey: "KEY", port: 2222 } })).toMatchObject({ changes: true, replaces: ["connection.port"] });
  expect(await diff({ mountpoints: ["/data", "/data2"] })).toMatchObject({ replaces: ["mountpoints"], deleteBeforeReplace: true });
  expect(await diff({ maxDurationSeconds: 60 })).toMatchObject({ replaces: ["maxDurationSeconds"] });
  expect(await diff({ connection: { host: "hv1", privateKey: "OTHER" } })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: true });
});

test("a Proxmox VMID and the socket path it stands for are the same target; another VMID replaces", async () => {
  const viaVmid = { ...base, socketPath: undefined, proxmox: { vmid: 101 } } as unknown as WindowInputs;
  const created = { ...viaVmid, socketPath: "/var/run/qemu-server/101.qga", windowId: "qw-0123456789abcdef" } as unknown as WindowOutputs;
  expect((await diffWindow("qw-0123456789abcdef", created, viaVmid)).replaces).toEqual([]);
  expect((await diffWindow("qw-0123456789abcdef", created, { ...viaVmid, proxmox: { vmid: 102 } } as unknown as WindowInputs)).replaces).toEqual(["socketPath"]);
});

test("onQuiesceFailure only governs the next create: an update", async () => {
  expect(await diff({ onQuiesceFailure: "crash-consistent" })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: true });
});

test("the names 0.1.0's serialized providers call on provider/dynamic/window are still there (delete runs the old text)", async () => {
  const legacy = await import("../../provider/dynamic/window");
  for (const name of ["checkWindow", "diffWindow", "createWindowResource", "readWindow", "updateWindow", "deleteWindow", "checkRelease", "createRelease", "checkHostSnapshot", "createHostSnapshot", "deleteHostSnapshot"] as const) {
    expect(typeof legacy[name]).toBe("function");
  }
});

test("an update of a window named by VMID keeps the socket path it resolved to", async () => {
  const viaVmid = { ...base, socketPath: undefined, proxmox: { vmid: 101 } } as unknown as WindowInputs;
  const created = { ...viaVmid, socketPath: "/var/run/qemu-server/101.qga", windowId: "qw-0123456789abcdef" } as unknown as WindowOutputs;
  const { outs } = await updateWindow("qw-0123456789abcdef", created, { ...viaVmid, connection: { host: "hv1", password: "rotated" } } as unknown as WindowInputs);
  expect(outs).toMatchObject({ socketPath: "/var/run/qemu-server/101.qga", windowId: "qw-0123456789abcdef" });
});
