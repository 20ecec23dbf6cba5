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
