/**
 * Part 4: a libvirt domain (issue 11), every variant side by side in each repetition (the order rotates), against
 * the lab's libvirtd and the same lab sshd and guest as part 1.
 *
 * Variants (each freezes /data and thaws it; ours also verify, before and after):
 * - oursWarm / oursCold: createWindow + releaseWindow on the domain over a pooled SSH connection that is up / new.
 * - socketWarm: the same on the lab guest's agent socket (part 1's oursWarm), for the frozen-time comparison.
 * - virshQemuSsh: `virsh -c qemu+ssh://...` per command (domfsfreeze, then domfsthaw): a new SSH connection each,
 *   with the host key verified (an ssh wrapper given as the URI's `command`), through nc on the host (here a socat
 *   stand-in for `nc -U`, given as the URI's `netcat`: the lab's libvirtd socket is not the default one).
 * - sshVirsh: `ssh host virsh ...` per command.
 * - localVirsh: virsh on the host itself, per command.
 *
 * "Frozen beyond the command": for ours, from the freeze's reply to createWindow's return, plus from releaseWindow's
 * call to the thaw's reply (the host daemon's `thawedAt`; the host is this machine, so the clocks are one). For
 * virsh, the thaw command's duration (its freeze command's tail is not visible, so this is a lower bound).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { randomInt } from "node:crypto";
import { createWindow, releaseWindow, type AgentTarget } from "../provider/quiesce/lifecycle";
import { SshPool, shellQuote } from "../provider/transport/ssh";
import type { Lab } from "../test/lab/lab";
import { startLibvirt, type LabLibvirt } from "../test/lab/libvirtd";
import { run } from "../test/lab/process";
import { Samples, clock, type Figure } from "./stats";
import { connectionFor, removeLeaseDir, stderrLog, tempDir, type Log } from "./common";

/** The variants, in the order of the first repetition. */
export const LIBVIRT_VARIANTS = ["oursWarm", "oursCold", "socketWarm", "virshQemuSsh", "sshVirsh", "localVirsh"] as const;
/** A variant of part 4. */
export type LibvirtVariant = (typeof LIBVIRT_VARIANTS)[number];

/** Everything part 4 measured (medians over the repetitions, in ms). */
export interface LibvirtResult {
  readonly reps: number;
  /** A whole window (or freeze + thaw), per variant. */
  readonly totals: Readonly<Record<LibvirtVariant, Figure>>;
  /** Frozen time beyond the command, per variant (see the module's comment). */
  readonly frozenBeyond: Readonly<Record<LibvirtVariant, Figure>>;
  /** createWindow and releaseWindow alone, warm, on the domain. */
  readonly createMs: Figure;
  readonly releaseMs: Figure;
}

/** Idle pause before each variant and before each release (stands in for the snapshot; never counted). */
async function pause(): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, randomInt(100, 200)));
}

async function oursWindow(pool: SshPool, target: AgentTarget): Promise<{ totalMs: number; createMs: number; releaseMs: number; frozenBeyondMs: number }> {
  let frozenAt = 0;
  const started = clock();
  const w = await createWindow({ target, mountpoints: ["/data"] }, { pool, onStep: (step) => void (step === "frozen" && (frozenAt = Date.now())) });
  const createdAt = Date.now();
  const createMs = clock() - started;
  await pause();
  const releaseStartedAt = Date.now();
  const releaseStart = clock();
  const r = await releaseWindow({ target, windowId: w.windowId }, { pool });
  const releaseMs = clock() - releaseStart;
  if (r.outcome !== "released" || r.agentStatus !== "thawed" || !r.thawedAt) throw new Error(`bench: the release said ${r.outcome} (${r.agentStatus})`);
  return { totalMs: createMs + releaseMs, createMs, releaseMs, frozenBeyondMs: createdAt - frozenAt + (Date.parse(r.thawedAt) - releaseStartedAt) };
}

/** Freeze then thaw through virsh, however it is reached; each command is timed; the status is checked after. */
async function virshWindow(exec: (args: readonly string[]) => Promise<string>, domain: string): Promise<{ totalMs: number; thawMs: number }> {
  const started = clock();
  const frozen = await exec(["domfsfreeze", domain, "--mountpoint", "/data"]);
  const thawStart = clock();
  const thawed = await exec(["domfsthaw", domain]);
  const end = clock();
  if (!/Froze 1 filesystem/.test(frozen) || !/Thawed 1 filesystem/.test(thawed)) throw new Error(`bench: virsh said ${JSON.stringify(frozen + thawed)}`);
  return { totalMs: end - started, thawMs: end - thawStart };
}

/** Runs part 4 on `lab` (its guest and sshd), with a libvirtd of its own. */
export async function benchLibvirt(lab: Lab, options: { reps: number; log?: Log }): Promise<LibvirtResult> {
  const log = options.log ?? stderrLog;
  log("part 4: starting the lab's libvirtd and domain");
  const libvirt: LabLibvirt = await startLibvirt();
  const dir = tempDir("libvirt");
  const leaseDir = path.join(dir, "leases");
  const connection = connectionFor(lab.sshd);
  const domainTarget: AgentTarget = { connection, domain: libvirt.domain, libvirtUri: libvirt.uri, leaseDir };
  const socketTarget: AgentTarget = { connection, socketPath: lab.guest.socketPath, leaseDir };
  const warm = new SshPool({ idleTimeoutMs: 600_000 });
  const sshArgs = [
    "-F", "/dev/null", "-i", lab.sshd.privateKeyPath, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
    "-o", `UserKnownHostsFile=${lab.sshd.knownHostsPath}`, "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
  ];
  // qemu+ssh:// through our ssh options (the host key verified), and a stand-in for `nc -U SOCKET` on the host.
  const sshWrapper = path.join(dir, "ssh");
  fs.writeFileSync(sshWrapper, `#!/bin/sh\nexec ssh ${sshArgs.map(shellQuote).join(" ")} "$@"\n`, { mode: 0o755 });
  const nc = path.join(dir, "nc");
  fs.writeFileSync(nc, '#!/bin/sh\n# libvirt runs "nc [-q0] -U SOCKET": the socket is the last argument.\nfor last; do :; done\nexec socat - "UNIX-CONNECT:$last"\n', { mode: 0o755 });
  const remoteUri =
    `qemu+ssh://${lab.sshd.user}@${lab.sshd.host}:${lab.sshd.port}/system?` +
    new URLSearchParams({ socket: libvirt.socketPath, command: sshWrapper, netcat: nc, proxy: "netcat" }).toString();
  const virsh = (uri: string) => (args: readonly string[]) => run("virsh", ["-c", uri, ...args], { timeoutMs: 60_000 });
  const sshVirsh = (args: readonly string[]): Promise<string> =>
    run("ssh", [...sshArgs, "-p", String(lab.sshd.port), `${lab.sshd.user}@${lab.sshd.host}`, ["virsh", "-c", libvirt.uri, ...args].map(shellQuote).join(" ")], { timeoutMs: 60_000 });
  const samples = new Samples();
  const runVariant = async (variant: LibvirtVariant, measured: boolean): Promise<void> => {
    const put = (name: string, value: number): void => {
      if (measured) samples.add(name, value);
    };
    await pause();
    switch (variant) {
      case "oursWarm": {
        const r = await oursWindow(warm, domainTarget);
        put("oursWarm", r.totalMs);
        put("oursWarm.frozenBeyond", r.frozenBeyondMs);
        put("createMs", r.createMs);
        put("releaseMs", r.releaseMs);
        return;
      }
      case "oursCold": {
        const pool = new SshPool();
        try {
          const r = await oursWindow(pool, domainTarget);
          put("oursCold", r.totalMs);
          put("oursCold.frozenBeyond", r.frozenBeyondMs);
        } finally {
          pool.closeAll();
        }
        return;
      }
      case "socketWarm": {
        const r = await oursWindow(warm, socketTarget);
        put("socketWarm", r.totalMs);
        put("socketWarm.frozenBeyond", r.frozenBeyondMs);
        return;
      }
      default: {
        const exec = variant === "virshQemuSsh" ? virsh(remoteUri) : variant === "sshVirsh" ? sshVirsh : virsh(libvirt.uri);
        const r = await virshWindow(exec, libvirt.domain);
        put(variant, r.totalMs);
        put(`${variant}.frozenBeyond`, r.thawMs);
      }
    }
  };
  try {
    log(`part 4: ${options.reps} repetitions of ${LIBVIRT_VARIANTS.join(", ")}`);
    for (const v of LIBVIRT_VARIANTS) await runVariant(v, false); // warm-up: pools, daemon, caches
    for (let rep = 0; rep < options.reps; rep++) {
      const order = LIBVIRT_VARIANTS.map((_, i) => LIBVIRT_VARIANTS[(i + rep) % LIBVIRT_VARIANTS.length]);
      for (const v of order) await runVariant(v, true);
    }
    const byVariant = (suffix: string): Record<LibvirtVariant, Figure> =>
      Object.fromEntries(LIBVIRT_VARIANTS.map((v) => [v, samples.figure(`${v}${suffix}`)])) as Record<LibvirtVariant, Figure>;
    return { reps: options.reps, totals: byVariant(""), frozenBeyond: byVariant(".frozenBeyond"), createMs: samples.figure("createMs"), releaseMs: samples.figure("releaseMs") };
  } finally {
    warm.closeAll();
    removeLeaseDir(leaseDir);
    fs.rmSync(dir, { recursive: true, force: true });
    await libvirt.stop();
  }
}
