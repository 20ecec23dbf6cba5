/** libvirt domains as targets (issue 11), without I/O: check, the plan by libvirt's disk target, error mapping. */
import { libvirtUriProblem, validateWindowInputs } from "../../provider/quiesce/validate";
import { planFreeze } from "../../provider/quiesce/plan";
import { libvirtAgentError } from "../../provider/libvirt/agent";
import { QuiesceError } from "../../provider/errors";
import type { GuestFilesystem } from "../../provider/agent/commands";

const failures = (inputs: Record<string, unknown>): Record<string, string> =>
  Object.fromEntries(validateWindowInputs(inputs).map((f) => [f.property, f.reason]));

describe("check: exactly one of socketPath, proxmox and domain; libvirtUri only with a domain, and local", () => {
  test.each([
    [{ domain: "vm1" }],
    [{ domain: "6f0b9a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", libvirtUri: "qemu:///system" }],
    [{ domain: "vm1", libvirtUri: "qemu:///session" }],
    [{ domain: "vm1", libvirtUri: "qemu:///system?socket=/run/libvirt/virtqemud-sock" }],
  ])("%j passes", (inputs) => {
    expect(validateWindowInputs(inputs)).toEqual([]);
  });

  test("two targets name both", () => {
    expect(failures({ socketPath: "/s", domain: "vm1" })).toEqual({ domain: "give exactly one target: socketPath, proxmox or domain, not socketPath and domain" });
    expect(Object.keys(failures({ proxmox: { vmid: 100 }, domain: "vm1" }))).toEqual(["domain"]);
  });

  test("an empty domain, libvirtUri without a domain, a remote or foreign URI: each says what to give", () => {
    expect(failures({ domain: " " }).domain).toMatch(/name or UUID/);
    expect(failures({ socketPath: "/s", libvirtUri: "qemu:///system" }).libvirtUri).toMatch(/goes with domain/);
    expect(failures({ domain: "vm1", libvirtUri: "qemu+ssh://hv1/system" }).libvirtUri).toMatch(/names a remote host: give the host as the SSH connection/);
    expect(failures({ domain: "vm1", libvirtUri: "xen:///system" }).libvirtUri).toMatch(/is not qemu:\/\/\/system or qemu:\/\/\/session/);
    expect(failures({ domain: "vm1", libvirtUri: "qemu:///system?socket=relative" }).libvirtUri).toBeDefined();
    // The daemon accepts exactly what check accepts: a shell metacharacter never gets as far as an argv.
    expect(libvirtUriProblem("qemu:///system?socket=/a;b")).toBeDefined();
  });

  test("a required target lists every kind", () => {
    expect(failures({}).socketPath).toMatch(/socketPath .*proxmox.*domain/);
  });
});

describe("the plan, for a libvirt domain's filesystems (no bus address, libvirt's target instead)", () => {
  const lv = (dev: string, serial: string | undefined, target: string) => ({
    busType: "unknown",
    bus: 0,
    target: 0,
    unit: 0,
    dev,
    ...(serial ? { serial } : {}),
    libvirtTarget: target,
  });
  const filesystems: GuestFilesystem[] = [
    { name: "vda", mountpoint: "/data", type: "ext4", disks: [lv("/dev/vda", "qdata1", "vda")] },
    { name: "vdb", mountpoint: "/data2", type: "ext4", disks: [lv("/dev/vdb", undefined, "vdb")] },
  ];

  test("by libvirt's target, by serial, by guest device", () => {
    expect(planFreeze({ disks: ["vdb"] }, filesystems, "t").mountpoints).toEqual(["/data2"]);
    expect(planFreeze({ disks: ["qdata1"] }, filesystems, "t").mountpoints).toEqual(["/data"]);
    expect(planFreeze({ disks: ["/dev/vdb"] }, filesystems, "t").mountpoints).toEqual(["/data2"]);
  });

  test("an unreported bus address matches nothing (every disk would be unknown:0:0:0), and the error lists the targets", () => {
    let err: unknown;
    try {
      planFreeze({ disks: ["unknown:0:0:0"] }, filesystems, "t");
    } catch (e) {
      err = e;
    }
    expect((err as QuiesceError).code).toBe("UNKNOWN_DISK");
    expect((err as Error).message).toContain("/data2 (ext4, disk dev=/dev/vdb target=vdb)");
    expect((err as Error).message).not.toContain("unknown:0:0:0 ");
  });
});

describe("libvirt's agent errors, mapped as the agent's own", () => {
  const libvirtError = (code: number, message: string): QuiesceError =>
    new QuiesceError("LIBVIRT_ERROR", `libvirt: ${message}`, { libvirtCode: code, libvirtMessage: message });

  test("a fsfreeze hook failure wrapped by libvirt is FREEZE_HOOK_FAILED, with libvirt's code kept", () => {
    const e = libvirtAgentError(
      "guest-fsfreeze-freeze-list",
      libvirtError(1, "internal error: unable to execute QEMU agent command 'guest-fsfreeze-freeze-list': fsfreeze hook has failed with status 1"),
      "t",
    ) as QuiesceError;
    expect(e.code).toBe("FREEZE_HOOK_FAILED");
    expect(e.fields).toMatchObject({ libvirtCode: 1, hookStatus: 1 });
    expect(e.cause).toBeInstanceOf(QuiesceError);
  });

  test("an agent that does not answer, or libvirt's own timeout, is AGENT_TIMEOUT; anything else is left as it is", () => {
    expect((libvirtAgentError("guest-ping", libvirtError(86, "Guest agent is not responding"), "t") as QuiesceError).code).toBe("AGENT_TIMEOUT");
    expect((libvirtAgentError("guest-ping", new QuiesceError("LIBVIRT_TIMEOUT", "no answer", {}), "t") as QuiesceError).code).toBe("AGENT_TIMEOUT");
    const other = libvirtError(42, "Domain not found");
    expect(libvirtAgentError("guest-ping", other, "t")).toBe(other);
  });
});
