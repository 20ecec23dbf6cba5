/**
 * QuiesceGroup against real parts (issue 12): three real guests (qemu-ga) behind two sshd "hosts", plus the lab
 * guest as a libvirt domain: all or nothing, every member thawed whatever fails, the skew reported, the CLI's
 * group file, and a Pulumi program with a group, a HostSnapshot and a release (serialized providers run for real).
 * The guests' state after each case is read through virsh (the domain) and through a fresh agent session once no
 * window holds the socket guests.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { createGroup, releaseGroup, type GroupMember } from "../../provider/quiesce/group";
import { windowStatus, type AgentTarget } from "../../provider/quiesce/lifecycle";
import { SshPool, type SshConnectionConfig } from "../../provider/transport/ssh";
import { failure } from "../fake/failure";
import { spawnGroupCreator } from "../fake/creatorProcess";
import { claimFiles, endedPath } from "../fake/daemonFiles";
import { waitForFile } from "../fake/waitForFile";
import { agentStatusAt } from "./agentStatus";
import { startGuest, startSshd, type LabGuest, type LabSshd } from "./lab";
import { startLibvirt, type LabLibvirt } from "./libvirtd";
import { quiesce } from "./quiesceCli";
import { findPlaintext, runProgram } from "../pulumi/mocksRunner";

const repoRoot = path.resolve(__dirname, "../..");
let guests: LabGuest[] = [];
let hosts: LabSshd[] = [];
let libvirt: LabLibvirt;
const pool = new SshPool();
let caseNo = 0;
let leaseDirs: string[] = [];

beforeAll(async () => {
  // Three guests and a libvirt domain on 2 cores: boot them together.
  const started = await Promise.all([
    startGuest({ load: true }),
    startGuest({ load: false }),
    startGuest({ load: false }),
    startSshd(),
    startSshd(),
    startLibvirt(),
  ]);
  guests = started.slice(0, 3) as LabGuest[];
  hosts = started.slice(3, 5) as LabSshd[];
  libvirt = started[5] as LabLibvirt;
}, 300_000);
afterAll(async () => {
  pool.closeAll();
  await Promise.all([...guests.map((g) => g.stop()), ...hosts.map((h) => h.stop()), libvirt?.stop()]);
}, 120_000);

function connection(host: LabSshd): SshConnectionConfig {
  return { host: host.host, port: host.port, user: "root", privateKey: host.privateKey, knownHostsPath: host.knownHostsPath };
}

/** Guests 0 and 1 on "host" 0, guest 2 and the libvirt domain on "host" 1; a lease directory per host and case. */
function members(): GroupMember[] {
  caseNo++;
  const leaseDir = (h: number): string => path.join(guests[0].runDir, `group-leases-${caseNo}-${h}`);
  leaseDirs = [leaseDir(0), leaseDir(1)];
  const socket = (g: number, h: number): AgentTarget => ({ connection: connection(hosts[h]), socketPath: guests[g].socketPath, leaseDir: leaseDir(h) });
  return [
    { name: "primary", target: socket(0, 0), mountpoints: ["/data"] },
    { name: "replica", target: socket(1, 0), mountpoints: ["/data"] },
    { name: "app", target: socket(2, 1), disks: ["qdata2"] },
    { name: "vm", target: { connection: connection(hosts[1]), domain: libvirt.domain, libvirtUri: libvirt.uri, leaseDir: leaseDir(1) }, mountpoints: ["/data"] },
  ];
}

async function virshStatus(): Promise<string> {
  return (JSON.parse(await libvirt.virsh(["qemu-agent-command", libvirt.domain, '{"execute":"guest-fsfreeze-status"}'])) as { return: string }).return;
}

/** Every member thawed (a fresh agent session to each socket guest, virsh for the domain), and no claim left. */
async function expectAllThawed(): Promise<void> {
  for (const g of guests) expect(await agentStatusAt(g.socketPath)).toBe("thawed");
  expect(await virshStatus()).toBe("thawed");
  for (const d of leaseDirs) expect(claimFiles(d)).toEqual([]);
}

test("four members on two hosts (three agent sockets, one libvirt domain) frozen as one point, each verified, the skew reported; the release thaws every one", async () => {
  const m = members();
  const g = await createGroup({ members: m, owner: "lab" }, { pool });
  expect(g.members.map((x) => [x.name, x.frozenMountpoints])).toEqual([
    ["primary", ["/data"]],
    ["replica", ["/data"]],
    ["app", ["/data2"]],
    ["vm", ["/data"]],
  ]);
  expect(g.skewMs).toBeGreaterThanOrEqual(0);
  console.log(`QUIESCE-GROUP-FIGURES ${JSON.stringify({ skewMs: g.skewMs, freezeMs: g.members.map((x) => x.freezeMs) })}`);
  // Every member held, from its host daemon's point of view; the domain frozen, as virsh sees it.
  for (const [i, x] of g.members.entries()) expect((await windowStatus(m[i].target, { windowId: x.windowId }, { pool })).state).toBe("held");
  expect(await virshStatus()).toBe("frozen");
  const r = await releaseGroup(g.members.map((x, i) => ({ name: x.name, target: m[i].target, windowId: x.windowId })), {}, { pool });
  expect(r.heldThroughout).toBe(true);
  await expectAllThawed();
}, 120_000);

test("a member selecting a mount point that does not exist: the group fails naming that member, and nothing is frozen", async () => {
  const m = members().map((x) => (x.name === "replica" ? { ...x, mountpoints: ["/no-such-mount"] } : x));
  const err = await failure(createGroup({ members: m }, { pool }));
  expect(err.code).toBe("GROUP_FAILED");
  expect(err.fields.failures).toEqual([expect.objectContaining({ member: "replica", code: "UNKNOWN_MOUNTPOINT" })]);
  expect(err.message).toMatch(/member replica failed: UNKNOWN_MOUNTPOINT: .*\/no-such-mount/);
  expect(err.fields.thawed).toEqual([]);
  await expectAllThawed();
}, 120_000);

test("one member's freeze fails after the others froze (fault injected after its freeze): every member is thawed", async () => {
  const m = members();
  const err = await failure(
    createGroup(
      { members: m },
      {
        pool,
        memberDeps: (name) => ({
          onStep: (step) => {
            if (name === "app" && step === "frozen") throw new Error("injected: the member's verification failed");
          },
        }),
      },
    ),
  );
  expect(err.code).toBe("GROUP_FAILED");
  expect(err.fields.failures).toEqual([expect.objectContaining({ member: "app" })]);
  expect(err.fields.thawed).toEqual(["primary", "replica", "vm"]);
  expect(err.message).toContain("No member is left frozen");
  await expectAllThawed();
}, 120_000);

test("the process holding the group is SIGKILLed: every member is thawed within 2 s", async () => {
  const m = members();
  const { child, windowIds: ids } = await spawnGroupCreator({ members: m });
  expect(await virshStatus()).toBe("frozen");
  const killedAt = Date.now();
  child.kill("SIGKILL");
  const dirs = [leaseDirs[0], leaseDirs[0], leaseDirs[1], leaseDirs[1]];
  const ended = await Promise.all(ids.map(async (id, i) => JSON.parse(await waitForFile(endedPath(dirs[i], id), 20_000)) as { how: string; status: string }));
  const thawMs = Date.now() - killedAt;
  console.log(`QUIESCE-GROUP-FIGURES ${JSON.stringify({ killedGroupThawMs: thawMs })}`);
  expect(ended.map((e) => [e.how, e.status])).toEqual(Array(4).fill(["disconnected", "thawed"]));
  expect(thawMs).toBeLessThan(2_000);
  await expectAllThawed();
}, 120_000);

describe("quiesce group --file", () => {
  function groupFile(extra = ""): string {
    const m = members();
    const host = (h: number): string =>
      `host: ${hosts[h].host}\n    port: ${hosts[h].port}\n    identity: ${hosts[h].privateKeyPath}\n    knownHosts: ${hosts[h].knownHostsPath}\n    leaseDir: ${leaseDirs[h]}`;
    const file = path.join(guests[0].runDir, `group-${caseNo}.yaml`);
    fs.writeFileSync(
      file,
      [
        "ttl: 60",
        "defaults:",
        "  user: root",
        "members:",
        `  - name: primary\n    ${host(0)}\n    socket: ${guests[0].socketPath}\n    mountpoints: [/data]`,
        `  - name: replica\n    ${host(0)}\n    socket: ${guests[1].socketPath}\n    mountpoints: [/data]`,
        `  - name: app\n    ${host(1)}\n    socket: ${guests[2].socketPath}\n    disks: [qdata2]`,
        `  - name: vm\n    ${host(1)}\n    domain: ${libvirt.domain}\n    libvirtUri: "${libvirt.uri}"\n    mountpoints: [/data]`,
        extra,
      ].join("\n"),
    );
    expect(m).toHaveLength(4);
    return file;
  }

  test("run -- CMD: the command runs here while every member is frozen, with the group in its environment; --json has every member and skewMs", async () => {
    const file = groupFile();
    const r = await quiesce(["group", "run", "--file", file, "--json", "--", process.execPath, "-e", "console.log(process.env.QUIESCE_GROUP_MEMBERS); console.log(process.env.QUIESCE_GROUP)"]);
    expect(r.code).toBe(0);
    expect(r.json).toMatchObject({ ok: true, heldThroughout: true, exitCode: 0 });
    expect(typeof r.json.skewMs).toBe("number");
    expect((r.json.members as { name: string; outcome: string }[]).map((x) => [x.name, x.outcome])).toEqual([
      ["primary", "released"],
      ["replica", "released"],
      ["app", "released"],
      ["vm", "released"],
    ]);
    const [names, described] = String(r.json.stdout).trim().split("\n");
    expect(names).toBe("primary replica app vm");
    expect((JSON.parse(described) as { name: string; windowId: string }[]).map((x) => x.name)).toEqual(["primary", "replica", "app", "vm"]);
    await expectAllThawed();
  }, 120_000);

  test("freeze, status, thaw: the members stay frozen between the commands; thaw thaws each and says each held", async () => {
    const file = groupFile();
    const frozen = await quiesce(["group", "freeze", "--file", file, "--json"]);
    expect(frozen.code).toBe(0);
    expect(frozen.json).toMatchObject({ ok: true, groupId: expect.stringMatching(/^qg-/) });
    const status = await quiesce(["group", "status", "--file", file, "--json"]);
    expect((status.json.members as { name: string; state: string; agentStatus: string }[]).map((x) => [x.name, x.agentStatus, x.state])).toEqual([
      ["primary", "frozen", "held"],
      ["replica", "frozen", "held"],
      ["app", "frozen", "held"],
      ["vm", "frozen", "held"],
    ]);
    const thawed = await quiesce(["group", "thaw", "--file", file, "--json"]);
    expect(thawed.code).toBe(0);
    expect(thawed.json).toMatchObject({ ok: true, heldThroughout: true });
    await expectAllThawed();
  }, 120_000);

  test("a bad file fails before anything is touched, with the line and the field", async () => {
    const file = groupFile("  - name: primary\n    local: true\n    sockt: /x\n");
    const r = await quiesce(["group", "freeze", "--file", file, "--json"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/line \d+: members\[4\]: the name "primary" is used twice/);
    expect(r.stderr).toMatch(/unknown field "sockt" \(did you mean socket\?\)/);
    await expectAllThawed();
  }, 60_000);
});

test("a Pulumi program with a group, a HostSnapshot on one member's host and a release: every member held throughout, thawed after, no secret in plaintext", async () => {
  const m = members();
  const key = hosts[0].privateKey;
  const run = await runProgram(
    () => {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { QuiesceGroup, HostSnapshot, WindowRelease } = require("pulumi-quiesce") as typeof import("../../sdk/index");
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const pulumi = require("@pulumi/pulumi") as typeof import("@pulumi/pulumi");
      const secret = (c: SshConnectionConfig | undefined): unknown => c && { ...c, privateKey: pulumi.secret(c.privateKey as string) };
      const group = new QuiesceGroup("db", {
        members: m.map((x) => ({
          name: x.name,
          connection: secret(x.target.connection) as never,
          ...(x.target.domain ? { domain: x.target.domain, libvirtUri: x.target.libvirtUri } : { socketPath: x.target.socketPath }),
          leaseDir: x.target.leaseDir,
          mountpoints: x.mountpoints ? [...x.mountpoints] : undefined,
          disks: x.disks ? [...x.disks] : undefined,
        })),
        maxDurationSeconds: 60,
      });
      const snap = new HostSnapshot("db-snap", { group, member: "app", create: "echo snapshot-of-$GROUP_NAME", environment: { GROUP_NAME: "db" } }, { dependsOn: group });
      const release = new WindowRelease("db-release", { group }, { dependsOn: snap });
      return { skewMs: group.skewMs, heldMs: release.heldMs, outcomes: release.memberOutcomes, stdout: snap.stdout };
    },
    { project: "group-lab", stack: "lab", programDir: repoRoot, timeoutMs: 120_000 },
  );
  expect(run.errors).toEqual([]);
  expect(run.resources.filter((r) => r.dynamic).map((r) => r.type)).toEqual([
    "pulumi-nodejs:dynamic/quiesce:QuiesceGroup",
    "pulumi-nodejs:dynamic/quiesce:HostSnapshot",
    "pulumi-nodejs:dynamic/quiesce:WindowRelease",
  ]);
  expect((run.outputs.outcomes as { name: string; outcome: string }[]).map((x) => [x.name, x.outcome])).toEqual([
    ["primary", "released"],
    ["replica", "released"],
    ["app", "released"],
    ["vm", "released"],
  ]);
  expect(run.outputs.heldMs).toBeGreaterThan(0);
  expect(typeof run.outputs.skewMs).toBe("number");
  expect(findPlaintext(run, key)).toEqual([]);
  for (const r of run.resources) expect(r.providerText ?? "").not.toContain(key.split("\n")[1]);
  await expectAllThawed();
  await run.destroyAll();
  await expectAllThawed();
}, 180_000);
