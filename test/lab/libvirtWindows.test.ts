/**
 * Windows on a libvirt domain (issue 11), against a real libvirtd whose domain is the lab guest, with the agent
 * channel libvirt owns, over the real lab sshd: the lifecycle, the CLI, bad input, and the fault subset (the
 * freezing process SIGKILLed at every step, the SSH connection cut, the deadline, 20 racing processes, a freeze
 * made outside with virsh). Every check of the guest's real state goes through virsh, not through the code under
 * test. Last, examples/libvirt runs as a Pulumi program (its serialized providers for real, under setMocks): a
 * disk-only external snapshot taken inside the window must leave a consistent base image.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createWindow, forceThaw, listFilesystems, releaseWindow, windowStatus, type DomainTarget } from "../../provider/quiesce/lifecycle";
import { SshPool, type SshConnectionConfig } from "../../provider/transport/ssh";
import { failure } from "../fake/failure";
import { claimFiles, endedPath } from "../fake/daemonFiles";
import { raceForOneWinner, startCreator, spawnCreator } from "../fake/creatorProcess";
import { waitForFile } from "../fake/waitForFile";
import { CREATE_STEPS } from "../../provider/quiesce/lifecycle";
import { descendants } from "./descendants";
import { startSshd, type LabSshd } from "./lab";
import { startLibvirt, type LabLibvirt } from "./libvirtd";
import { quiesce } from "./quiesceCli";
import { inspectDataImage } from "./lab";
import { findPlaintext, runProgram } from "../pulumi/mocksRunner";

const repoRoot = path.resolve(__dirname, "../..");
/** The lab's non-root SSH user (.ci/install-lab-deps.sh creates it). */
const NON_ROOT = "quiesce-lab";
let lab: LabLibvirt;
let sshd: LabSshd;
let leaseRoot: string;
const pool = new SshPool();
const figures: Record<string, number> = {};
beforeAll(async () => {
  // With the guest's write load on /data: the example's snapshot must be consistent while the guest writes.
  // libvirtd's socket is open to the lab's non-root user's group, as a host's `libvirt` group is.
  [lab, sshd] = await Promise.all([startLibvirt({ load: true, socketGroup: NON_ROOT }), startSshd({ extraConfig: "MaxStartups 100" })]);
  leaseRoot = path.join(lab.runDir, "leases");
}, 240_000);
afterAll(async () => {
  pool.closeAll();
  console.log(`QUIESCE-LIBVIRT-FIGURES ${JSON.stringify(figures)}`);
  await Promise.all([lab?.stop(), sshd?.stop()]);
}, 60_000);

function connection(server: LabSshd = sshd): SshConnectionConfig {
  return { host: server.host, port: server.port, user: "root", privateKey: server.privateKey, knownHostsPath: server.knownHostsPath };
}
let caseNo = 0;
/** The lab domain over SSH, with a lease directory of its own per case (so each case's ended record is its own). */
function target(options: { server?: LabSshd; domain?: string } = {}): DomainTarget {
  return { connection: connection(options.server), domain: options.domain ?? lab.domain, libvirtUri: lab.uri, leaseDir: path.join(leaseRoot, `case-${++caseNo}`) };
}

/** The PID of the QEMU process libvirt runs for `domain` (its command line has `-name guest=NAME,...`). */
function qemuPidOf(domain: string): number {
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string;
    try {
      cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ESRCH") continue; // it exited meanwhile
      throw err;
    }
    if (cmdline.split("\0").some((arg) => arg.startsWith(`guest=${domain},`) || arg === `guest=${domain}`)) return Number(entry);
  }
  throw new Error(`no QEMU process runs domain ${domain}`);
}

/** The agent's status as libvirt reports it to virsh: the independent truth. */
async function virshStatus(): Promise<string> {
  return (JSON.parse(await lab.virsh(["qemu-agent-command", lab.domain, '{"execute":"guest-fsfreeze-status"}'])) as { return: string }).return;
}

/** The guest is thawed (says virsh), and no claim is left. */
async function expectSettled(t: DomainTarget): Promise<void> {
  expect(await virshStatus()).toBe("thawed");
  expect(claimFiles(t.leaseDir as string)).toEqual([]);
}

afterEach(async () => {
  // A failed case must not leave the next one a frozen guest.
  if ((await virshStatus()) === "frozen") await lab.virsh(["domfsthaw", lab.domain]);
});

describe("the lifecycle through libvirt, over the pooled SSH connection", () => {
  test("create by name freezes the mount point, verified (virsh says frozen); status says held; release thaws (virsh says thawed)", async () => {
    const t = target();
    const w = await createWindow({ target: t, mountpoints: ["/data"], owner: "lab" }, { pool });
    expect(w).toMatchObject({ frozenMountpoints: ["/data"], frozenCount: 1, consistency: "filesystem", guestOs: "linux" });
    expect(w.agentVersion).toMatch(/^\d+\.\d+/);
    expect(w.filesystems.find((f) => f.mountpoint === "/data")?.disks[0]).toMatchObject({ serial: "qdata1", libvirtTarget: "vda" });
    expect(await virshStatus()).toBe("frozen");
    const report = await windowStatus(t, { windowId: w.windowId }, { pool });
    expect(report).toMatchObject({ agentStatus: "frozen", state: "held" });
    expect(report.lease?.domain).toMatchObject({ name: lab.domain, uri: lab.uri });
    expect(report.lease?.domain?.uuid).toBe((await lab.virsh(["domuuid", lab.domain])).trim());
    const r = await releaseWindow({ target: t, windowId: w.windowId }, { pool });
    expect(r).toMatchObject({ outcome: "released", thawedCount: 1, agentStatus: "thawed" });
    await expectSettled(t);
    // A second release touches nothing and says so.
    expect((await releaseWindow({ target: t, windowId: w.windowId }, { pool })).outcome).toBe("already-released");
  });

  test("by UUID, by libvirt's disk target, by disk serial, and everything (libvirt's freeze-all): each verified by count", async () => {
    const uuid = (await lab.virsh(["domuuid", lab.domain])).trim();
    for (const [selection, expected] of [
      [{ disks: ["vdb"] }, ["/data2"]],
      [{ disks: ["qdata1"] }, ["/data"]],
      [{}, ["/data", "/data2"]],
    ] as const) {
      const t = { ...target(), domain: uuid };
      const w = await createWindow({ target: t, ...selection }, { pool });
      expect(w.frozenMountpoints).toEqual(expected);
      expect(w.frozenCount).toBe(expected.length);
      expect(await virshStatus()).toBe("frozen");
      expect((await releaseWindow({ target: t, windowId: w.windowId }, { pool })).outcome).toBe("released");
      await expectSettled(t);
    }
  });

  test("getGuestFilesystems' path lists the domain's filesystems with serials and libvirt targets", async () => {
    const fss = await listFilesystems(target(), {}, { pool });
    expect(fss.map((f) => [f.mountpoint, f.disks[0]?.serial, f.disks[0]?.libvirtTarget])).toEqual(
      expect.arrayContaining([
        ["/data", "qdata1", "vda"],
        ["/data2", "qdata2", "vdb"],
      ]),
    );
  });

  test("a mount point or disk the guest lacks fails before anything is frozen, listing what it has", async () => {
    const t = target();
    const mount = await failure(createWindow({ target: t, mountpoints: ["/nope"] }, { pool }));
    expect(mount.code).toBe("UNKNOWN_MOUNTPOINT");
    expect(mount.message).toMatch(/\/nope.*\/data \(ext4, disk serial=qdata1 dev=\/dev\/vda target=vda\)/s);
    const disk = await failure(createWindow({ target: t, disks: ["vdz"] }, { pool }));
    expect(disk.code).toBe("UNKNOWN_DISK");
    expect(disk.message).toContain("libvirt's target (vda)");
    await expectSettled(t);
  });

  test("bad targets fail before anything is claimed or frozen, each saying what to do", async () => {
    await lab.defineDomain(`${lab.domain}-off`, { agent: true, start: false });
    await lab.defineDomain(`${lab.domain}-noagent`, { agent: false, start: true });
    const t = target();
    const unknown = await failure(createWindow({ target: { ...t, domain: "no-such-vm" } }, { pool }));
    expect(unknown.code).toBe("UNKNOWN_DOMAIN");
    expect(unknown.fields.running).toEqual(expect.arrayContaining([lab.domain]));
    const off = await failure(createWindow({ target: { ...t, domain: `${lab.domain}-off` } }, { pool }));
    expect(off.code).toBe("DOMAIN_NOT_RUNNING");
    const noAgent = await failure(createWindow({ target: { ...t, domain: `${lab.domain}-noagent` } }, { pool }));
    expect(noAgent.code).toBe("NO_GUEST_AGENT");
    const noLibvirt = await failure(createWindow({ target: { ...t, libvirtUri: `qemu:///system?socket=${lab.runDir}/no-such-sock` } }, { pool }));
    expect(noLibvirt.code).toBe("LIBVIRT_UNAVAILABLE");
    expect(noLibvirt.message).toMatch(/systemctl start libvirtd/);
    expect(claimFiles(t.leaseDir as string)).toEqual([]);
    await expectSettled(t);
  }, 120_000);

  test("a freeze made outside (virsh domfsfreeze) is refused, named as such, and left frozen", async () => {
    const t = target();
    await lab.virsh(["domfsfreeze", lab.domain, "--mountpoint", "/data"]);
    const err = await failure(createWindow({ target: t, mountpoints: ["/data2"] }, { pool }));
    expect(err.code).toBe("ALREADY_FROZEN");
    expect(err.message).toMatch(/frozen, by a freeze made outside pulumi-quiesce/);
    expect(await virshStatus()).toBe("frozen");
    expect(claimFiles(t.leaseDir as string)).toEqual([]);
    expect((await windowStatus(t, {}, { pool })).state).toBe("frozen-outside");
    // The break-glass thaw (quiesce thaw --force) thaws it through libvirt.
    expect((await forceThaw(t, {}, { pool })).thawedCount).toBe(1);
    expect(await virshStatus()).toBe("thawed");
  });

  test("freezes do not nest: a second window is refused naming the first's owner; a thaw made outside shows as thawed-outside", async () => {
    const t = target();
    const first = await createWindow({ target: t, mountpoints: ["/data"], owner: "first-owner" }, { pool });
    const second = await failure(createWindow({ target: t, mountpoints: ["/data2"] }, { pool }));
    expect(second.code).toBe("ALREADY_FROZEN");
    expect(second.message).toContain(first.windowId);
    expect(second.message).toContain("first-owner");
    await lab.virsh(["domfsthaw", lab.domain]);
    expect((await windowStatus(t, { windowId: first.windowId }, { pool })).state).toBe("thawed-outside");
    expect((await releaseWindow({ target: t, windowId: first.windowId }, { pool })).outcome).toBe("thawed-outside");
    await expectSettled(t);
  });
});

describe("a non-root SSH user whom libvirt's socket lets in (its group, as a host's libvirt group)", () => {
  test("freezes, holds and releases through libvirt, with its host daemon in a lease directory of its own; its freeze still ends at the deadline", async () => {
    const leaseDir = `/tmp/quiesce-lab-leases-${process.pid}-${++caseNo}`;
    const t: DomainTarget = { ...target(), connection: { ...connection(), user: NON_ROOT }, leaseDir };
    try {
      const w = await createWindow({ target: t, mountpoints: ["/data"], owner: "non-root" }, { pool });
      expect(await virshStatus()).toBe("frozen");
      expect((await windowStatus(t, { windowId: w.windowId }, { pool })).state).toBe("held");
      expect((await releaseWindow({ target: t, windowId: w.windowId }, { pool })).outcome).toBe("released");
      await expectSettled(t);
      // The daemon is the user's own: its directory and socket belong to the user, not to root.
      const uid = Number(fs.readFileSync("/etc/passwd", "utf8").split("\n").find((l) => l.startsWith(`${NON_ROOT}:`))?.split(":")[2]);
      expect(fs.statSync(leaseDir).uid).toBe(uid);
      expect(fs.statSync(path.join(leaseDir, "daemon.sock")).uid).toBe(uid);
      const expiring = await createWindow({ target: t, mountpoints: ["/data"], maxDurationSeconds: 3, thawOnDisconnect: false }, { pool });
      const ended = JSON.parse(await waitForFile(endedPath(leaseDir, expiring.windowId), 30_000)) as { how: string };
      expect(ended).toMatchObject({ how: "expired", status: "thawed" });
      await expectSettled(t);
    } finally {
      fs.rmSync(leaseDir, { recursive: true, force: true });
    }
  }, 60_000);

  test("a user libvirt's socket does not let in gets LIBVIRT_AUTH before anything is frozen", async () => {
    // The same socket made root-only for a while (its directory 0700).
    const sockDir = path.dirname(lab.socketPath);
    fs.chmodSync(sockDir, 0o700);
    try {
      const t: DomainTarget = { ...target(), connection: { ...connection(), user: NON_ROOT }, leaseDir: `/tmp/quiesce-lab-leases-${process.pid}-${++caseNo}` };
      const err = await failure(createWindow({ target: t, mountpoints: ["/data"] }, { pool }));
      expect(err.code).toBe("LIBVIRT_AUTH");
      expect(err.message).toMatch(/cannot be opened by this user \(permission denied\): add the user to the libvirt group/);
      expect(await virshStatus()).toBe("thawed");
    } finally {
      fs.chmodSync(sockDir, 0o750);
    }
  }, 60_000);
});

describe("faults: no freeze of a libvirt domain outlives its process, its connection or its lease", () => {
  test("the freezing process SIGKILLed right after create: thawed through libvirt within 2 s", async () => {
    const t = target();
    const { child, windowId } = await spawnCreator({ target: t, mountpoints: ["/data"] });
    expect(await virshStatus()).toBe("frozen");
    const killedAt = Date.now();
    child.kill("SIGKILL");
    const ended = JSON.parse(await waitForFile(endedPath(t.leaseDir as string, windowId), 30_000)) as { how: string };
    figures.killedProcessThawMs = Date.now() - killedAt;
    expect(ended).toMatchObject({ how: "disconnected", status: "thawed" });
    expect(figures.killedProcessThawMs).toBeLessThan(2_000);
    await expectSettled(t);
  }, 60_000);

  test("the freezing process SIGKILLed at every step of its create: the guest is left thawed and unclaimed each time", async () => {
    for (const step of CREATE_STEPS.filter((s) => s !== "returned")) {
      const t = target();
      const child = startCreator({ target: t, mountpoints: ["/data"] }, step);
      await new Promise((resolve) => child.once("exit", resolve));
      // The daemon ends the window once the process's control channel closes: wait for its claim to go.
      const deadline = Date.now() + 20_000;
      while (claimFiles(t.leaseDir as string).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect({ step, status: await virshStatus(), claims: claimFiles(t.leaseDir as string) }).toEqual({ step, status: "thawed", claims: [] });
    }
  }, 240_000);

  test("the SSH connection cut mid-window (sshd's children killed): thawed within 2 s", async () => {
    const own = await startSshd();
    const ownPool = new SshPool();
    try {
      const t = target({ server: own });
      const w = await createWindow({ target: t, mountpoints: ["/data"] }, { pool: ownPool });
      const cutAt = Date.now();
      for (const pid of descendants(own.pid)) process.kill(pid, "SIGKILL");
      const ended = JSON.parse(await waitForFile(endedPath(t.leaseDir as string, w.windowId), 30_000)) as { how: string };
      figures.cutConnectionThawMs = Date.now() - cutAt;
      expect(ended).toMatchObject({ how: "disconnected" });
      expect(figures.cutConnectionThawMs).toBeLessThan(2_000);
      await expectSettled(t);
    } finally {
      ownPool.closeAll();
      await own.stop();
    }
  }, 60_000);

  test("nobody releases: thawed within 1 s after the deadline, and a later release says it expired", async () => {
    const t = target();
    const w = await createWindow({ target: t, mountpoints: ["/data"], maxDurationSeconds: 3, thawOnDisconnect: false }, { pool });
    const ended = JSON.parse(await waitForFile(endedPath(t.leaseDir as string, w.windowId), 30_000)) as { how: string };
    figures.deadlineThawLateMs = Date.now() - Date.parse(w.expiresAt);
    expect(ended).toMatchObject({ how: "expired", status: "thawed" });
    expect(figures.deadlineThawLateMs).toBeLessThan(1_000);
    expect((await releaseWindow({ target: t, windowId: w.windowId }, { pool })).outcome).toBe("expired");
    await expectSettled(t);
  }, 60_000);

  test("a freeze that hangs (the domain's QEMU stopped mid-freeze): our wait times out, the daemon's thaw waits for libvirt's agent job, and the guest ends thawed", async () => {
    const qemu = qemuPidOf(lab.domain);
    const t = target();
    let resumed: NodeJS.Timeout | undefined;
    try {
      const err = await failure(
        createWindow(
          { target: t, mountpoints: ["/data"], timeouts: { freezeSeconds: 3 } },
          {
            pool,
            onStep: (step) => {
              if (step !== "armed") return;
              // The freeze is sent next and cannot be answered: libvirt holds the domain's agent job for it.
              process.kill(qemu, "SIGSTOP");
              resumed = setTimeout(() => process.kill(qemu, "SIGCONT"), 6_000);
            },
          },
        ),
      );
      expect(err.code).toBe("AGENT_TIMEOUT");
      expect(err.message).toMatch(/domain's agent timeout.*host daemon's thaw waits/s);
      // The freeze went through once QEMU ran again, and the daemon's thaw (queued behind it) thawed it.
      expect(err.fields.mayBeFrozen).toBeUndefined();
      const ended = fs.readdirSync(t.leaseDir as string).filter((n) => n.startsWith("ended-"));
      expect(ended).toHaveLength(1);
      // Thawed 1: the freeze did happen (after QEMU resumed), and the thaw came after it.
      expect(JSON.parse(fs.readFileSync(path.join(t.leaseDir as string, ended[0]), "utf8"))).toMatchObject({ how: "released", thawedCount: 1, status: "thawed" });
      await expectSettled(t);
    } finally {
      if (resumed) clearTimeout(resumed);
      process.kill(qemu, "SIGCONT");
    }
  }, 120_000);

  test("20 concurrent creates on the domain from 20 processes: exactly one wins, the others name it, nobody thaws it", async () => {
    const t = target();
    const winner = await raceForOneWinner(t);
    expect(await virshStatus()).toBe("frozen");
    expect((await windowStatus(t, { windowId: winner }, { pool })).state).toBe("held");
    expect((await releaseWindow({ target: t, windowId: winner }, { pool })).outcome).toBe("released");
    await expectSettled(t);
  }, 300_000);
});

describe("the CLI with --domain", () => {
  const ssh = (leaseDir: string): string[] => [
    "--host", sshd.host, "--port", String(sshd.port), "--user", "root",
    "--identity", sshd.privateKeyPath, "--known-hosts", sshd.knownHostsPath,
    "--domain", lab.domain, "--libvirt-uri", lab.uri, "--lease-dir", leaseDir,
  ];

  test("fsinfo, freeze, status, thaw --window: the JSON says what happened, virsh agrees", async () => {
    const leaseDir = path.join(leaseRoot, `cli-${++caseNo}`);
    const fsinfo = await quiesce(["fsinfo", ...ssh(leaseDir)]);
    expect(fsinfo.code).toBe(0);
    expect(fsinfo.stdout).toMatch(/^\/data\s+ext4\s.*serial=qdata1 \/dev\/vda target=vda$/m);
    const frozen = await quiesce(["freeze", ...ssh(leaseDir), "--disk", "vda", "--ttl", "60", "--json"]);
    expect(frozen.code).toBe(0);
    expect(frozen.json).toMatchObject({ ok: true, frozenMountpoints: ["/data"] });
    expect(await virshStatus()).toBe("frozen");
    const status = await quiesce(["status", ...ssh(leaseDir), "--window", String(frozen.json.windowId), "--json"]);
    expect(status.json).toMatchObject({ ok: true, state: "held", agentStatus: "frozen" });
    const thawed = await quiesce(["thaw", ...ssh(leaseDir), "--window", String(frozen.json.windowId), "--json"]);
    expect(thawed.code).toBe(0);
    expect(thawed.json).toMatchObject({ ok: true, outcome: "released" });
    expect(await virshStatus()).toBe("thawed");
  }, 60_000);

  test("run -- CMD: the command runs while the domain is frozen, and the guest is thawed after", async () => {
    const leaseDir = path.join(leaseRoot, `cli-${++caseNo}`);
    const r = await quiesce([
      "run", ...ssh(leaseDir), "--mountpoint", "/data2", "--json", "--",
      "virsh", "-c", lab.uri, "qemu-agent-command", lab.domain, '{"execute":"guest-fsfreeze-status"}',
    ]);
    expect(r.code).toBe(0);
    expect(r.json).toMatchObject({ ok: true, outcome: "released", frozenMountpoints: ["/data2"] });
    expect(String(r.json.stdout)).toContain('"return":"frozen"');
    expect(await virshStatus()).toBe("thawed");
  }, 60_000);

  test("usage errors: two targets, --libvirt-uri without --domain, a remote URI", async () => {
    const two = await quiesce(["status", "--local", "--socket", "/x", "--domain", "d"]);
    expect(two.code).toBe(2);
    expect(two.stderr).toContain("give one of --socket, --proxmox-vmid and --domain, not --socket and --domain");
    const uriAlone = await quiesce(["status", "--local", "--socket", "/x", "--libvirt-uri", "qemu:///system"]);
    expect(uriAlone.code).toBe(2);
    expect(uriAlone.stderr).toContain("--libvirt-uri goes with --domain");
    const remote = await quiesce(["status", "--local", "--domain", "d", "--libvirt-uri", "qemu+ssh://hv1/system"]);
    expect(remote.code).toBe(2);
    expect(remote.stderr).toMatch(/names a remote host: give the host as the SSH connection/);
  });
});

describe("examples/libvirt: a disk-only external snapshot inside a window, as a Pulumi program", () => {
  test("the base image left behind is a consistent filesystem of a disk being written; destroy commits the overlay back; no secret in plaintext", async () => {
    const overlay = path.join(lab.runDir, "data1.overlay.qcow2");
    const blockSource = async (): Promise<string> => {
      const line = (await lab.virsh(["domblklist", lab.domain])).split("\n").find((l) => l.trim().startsWith("vda"));
      return (line ?? "").trim().split(/\s+/)[1] ?? "";
    };
    const run = await runProgram(path.join(repoRoot, "examples/libvirt/index.ts"), {
      project: "quiesced-libvirt-snapshot",
      stack: "lab",
      config: {
        domain: lab.domain,
        libvirtUri: lab.uri,
        overlayPath: overlay,
        disk: "vda",
        otherDisks: "vdb",
        host: sshd.host,
        port: String(sshd.port),
        user: "root",
        privateKey: sshd.privateKey,
        knownHostsPath: sshd.knownHostsPath,
      },
      secretConfigKeys: ["privateKey"],
      programDir: repoRoot,
      timeoutMs: 120_000,
    });
    expect(run.errors).toEqual([]);
    const window = run.resources.find((r) => r.type.endsWith(":QuiesceWindow"));
    expect(window?.outputs).toMatchObject({ frozenMountpoints: ["/data"], frozenCount: 1, domain: lab.domain });
    expect(run.outputs.heldMs).toBeGreaterThan(0);
    expect(await virshStatus()).toBe("thawed");
    // The guest writes to the overlay now; the base image is the point of the freeze.
    expect(await blockSource()).toBe(overlay);
    const report = await inspectDataImage(lab.dataImage);
    expect(report.needsRecovery).toBe(false);
    expect(report.fsck.exitCode).toBe(0);
    expect(report.loggedWrites.length).toBeGreaterThan(0);
    expect(report.brokenFiles).toEqual([]);
    const key = sshd.privateKey;
    expect(findPlaintext(run, key)).toEqual([]);
    for (const r of run.resources) expect(r.providerText ?? "").not.toContain(key.split("\n")[1]);
    // pulumi destroy: the snapshot's delete commits the overlay back into the base and removes it.
    await run.destroyAll();
    expect(await blockSource()).toBe(lab.dataImage);
    expect(fs.existsSync(overlay)).toBe(false);
    expect(await virshStatus()).toBe("thawed");
  }, 240_000);
});
