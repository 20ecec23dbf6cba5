/**
 * The libvirt RPC client (provider/libvirt) against a real libvirtd 9 whose domain is the lab guest, with the agent
 * channel libvirt owns: no virsh on the path under test. (The lifecycle, CLI and fault suites against libvirt
 * domains come with the rest of issue 11.)
 */
import { formatUuid, parseUuid } from "../../provider/libvirt/codec";
import {
  AuthType,
  connectClose,
  domainAgentCommand,
  domainFsFreeze,
  domainFsThaw,
  domainGetGuestInfo,
  lookupDomainByName,
  lookupDomainByUuid,
} from "../../provider/libvirt/procedures";
import { isQuiesceError } from "../../provider/errors";
import { libvirtFilesystems, openLibvirtGuest } from "../../provider/libvirt/guest";
import { SshPool, type SshConnectionConfig } from "../../provider/transport/ssh";
import { failure } from "../fake/failure";
import { startSshd, type LabSshd } from "./lab";
import { startLibvirt, type LabLibvirt } from "./libvirtd";

let lab: LabLibvirt;
beforeAll(async () => {
  lab = await startLibvirt();
}, 240_000);
afterAll(async () => lab?.stop(), 60_000);

const status = async (s: Awaited<ReturnType<LabLibvirt["session"]>>, dom: Parameters<typeof domainFsThaw>[1]): Promise<string> =>
  (JSON.parse((await domainAgentCommand(s, dom, '{"execute":"guest-fsfreeze-status"}', 5)) ?? "{}") as { return?: string }).return ?? "";

test("open, look up by name and by UUID; an unknown domain is libvirt's VIR_ERR_NO_DOMAIN, decoded", async () => {
  const s = await lab.session();
  try {
    const dom = await lookupDomainByName(s, lab.domain);
    expect(dom.name).toBe(lab.domain);
    expect(dom.id).toBeGreaterThan(0);
    const uuid = (await lab.virsh(["domuuid", lab.domain])).trim();
    expect(formatUuid(dom.uuid)).toBe(uuid);
    expect(await lookupDomainByUuid(s, parseUuid(uuid) as Buffer)).toEqual(dom);
    let err: unknown;
    try {
      await lookupDomainByName(s, "no-such-domain");
    } catch (e) {
      err = e;
    }
    expect(isQuiesceError(err, "LIBVIRT_ERROR")).toBe(true);
    expect((err as { fields: Record<string, unknown> }).fields).toMatchObject({ libvirtCode: 42 });
    expect((err as Error).message).toMatch(/Domain not found.*no-such-domain/);
    await connectClose(s);
  } finally {
    s.close();
  }
});

test("guest info reports each filesystem with its disk serial; freeze-list, the agent's status and thaw go through libvirt", async () => {
  expect(AuthType.NONE).toBe(0);
  const s = await lab.session();
  try {
    const dom = await lookupDomainByName(s, lab.domain);
    const info = Object.fromEntries(await domainGetGuestInfo(s, dom));
    expect(info["fs.count"]).toBe(2);
    const mounts = [0, 1].map((i) => [info[`fs.${i}.mountpoint`], info[`fs.${i}.fstype`], info[`fs.${i}.disk.0.serial`], info[`fs.${i}.disk.0.alias`]]);
    expect(mounts).toEqual(
      expect.arrayContaining([
        ["/data", "ext4", "qdata1", "vda"],
        ["/data2", "ext4", "qdata2", "vdb"],
      ]),
    );
    expect(await domainFsFreeze(s, dom, ["/data"])).toBe(1);
    expect(await status(s, dom)).toBe("frozen");
    expect(await domainFsThaw(s, dom)).toBe(1);
    expect(await status(s, dom)).toBe("thawed");
    // As with the agent itself, a mount point that does not exist "freezes" 0 filesystems, without an error.
    expect(await domainFsFreeze(s, dom, ["/nope"])).toBe(0);
    expect(await status(s, dom)).toBe("thawed");
  } finally {
    s.close();
  }
});

describe("a libvirt guest, found with an error that says what to do for each way it fails", () => {
  let sshd: LabSshd;
  const pool = new SshPool();
  beforeAll(async () => {
    sshd = await startSshd();
    await lab.defineDomain(`${lab.domain}-off`, { agent: true, start: false });
    await lab.defineDomain(`${lab.domain}-noagent`, { agent: false, start: true });
  }, 120_000);
  afterAll(async () => {
    pool.closeAll();
    await sshd?.stop();
  });
  const over = (): SshConnectionConfig => ({ host: sshd.host, port: sshd.port, user: "root", privateKey: sshd.privateKey, knownHostsPath: sshd.knownHostsPath });

  test("by name over the pooled SSH connection (streamlocal to libvirt's socket), and by UUID locally: its filesystems carry disk serials", async () => {
    const remote = await openLibvirtGuest({ connection: over(), domain: lab.domain, socketPath: lab.socketPath }, { pool });
    try {
      expect(remote.label).toContain(`libvirt:${lab.domain}`);
      const fs = await libvirtFilesystems(remote);
      expect(fs.map((f) => [f.mountpoint, f.type, f.disks[0]?.serial, f.disks[0]?.alias, f.disks[0]?.device])).toEqual(
        expect.arrayContaining([
          ["/data", "ext4", "qdata1", "vda", "/dev/vda"],
          ["/data2", "ext4", "qdata2", "vdb", "/dev/vdb"],
        ]),
      );
      expect(fs[0].totalBytes).toBeGreaterThan(0);
    } finally {
      remote.close();
    }
    const uuid = (await lab.virsh(["domuuid", lab.domain])).trim();
    const local = await openLibvirtGuest({ domain: uuid, socketPath: lab.socketPath });
    expect(local.domain.name).toBe(lab.domain);
    local.close();
  });

  test("an unknown domain lists the running ones; a stopped one says to start it; one without an agent says what it needs", async () => {
    const unknown = await failure(openLibvirtGuest({ domain: "no-such-vm", socketPath: lab.socketPath }));
    expect(unknown.code).toBe("UNKNOWN_DOMAIN");
    expect(unknown.message).toContain(`Running domains: `);
    expect(unknown.fields.running).toEqual(expect.arrayContaining([lab.domain, `${lab.domain}-noagent`]));
    expect(unknown.fields.running).not.toContain(`${lab.domain}-off`);
    const off = await failure(openLibvirtGuest({ domain: `${lab.domain}-off`, socketPath: lab.socketPath }));
    expect(off.code).toBe("DOMAIN_NOT_RUNNING");
    expect(off.message).toContain(`virsh start ${lab.domain}-off`);
    const noAgent = await failure(openLibvirtGuest({ domain: `${lab.domain}-noagent`, socketPath: lab.socketPath }));
    expect(noAgent.code).toBe("NO_GUEST_AGENT");
    expect(noAgent.message).toMatch(/org\.qemu\.guest_agent\.0.*qemu-ga running in the guest/s);
  }, 60_000);

  test("libvirt not running there: LIBVIRT_UNAVAILABLE names the sockets tried and how to start it", async () => {
    const err = await failure(openLibvirtGuest({ domain: lab.domain, socketPath: `${lab.runDir}/no-such-sock` }));
    expect(err.code).toBe("LIBVIRT_UNAVAILABLE");
    expect(err.message).toMatch(/no-such-sock does not exist.*systemctl start libvirtd/s);
  });
});
