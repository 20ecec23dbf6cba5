#!/usr/bin/env node
/**
 * `quiesce`: the CLI for pipelines and break-glass use (DESIGN.md, "quiesce CLI"). A thin shell over
 * provider/quiesce. Progress goes to stderr; `--json` prints exactly one JSON object on stdout.
 * Exit codes: 0 success, 1 operation failure, 2 usage error.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import { Command, CommanderError } from "commander";
import { QuiesceError, isQuiesceError } from "../errors";
import {
  createWindow,
  forceThaw,
  listFilesystems,
  proxmoxSocketPath,
  releaseWindow,
  targetLabel,
  windowStatus,
  type AgentTarget,
  type OnQuiesceFailure,
  type ReleaseResult,
  type Timeouts,
} from "../quiesce/lifecycle";
import type { GuestFilesystem } from "../agent/commands";
import { diskBusTarget, diskPciAddress } from "../quiesce/plan";
import { libvirtUriProblem } from "../quiesce/validate";
import { dropAllHolds, DAEMON_PROTOCOL_VERSION } from "../host/daemon";
import { runHostCommand as runOnHost } from "../transport/hostCommand";
import { defaultSshPool, shellQuote, type ExecResult, type SshConnectionConfig } from "../transport/ssh";
import { packageVersion } from "../version";
import { createGroup, releaseGroup, type GroupMember } from "../quiesce/group";
import { GroupFileError, parseGroupFile } from "./groupFile";
import { spawn } from "node:child_process";

/** Exit code of a usage error (bad or missing options). */
export const EXIT_USAGE = 2;
/** Exit code of an operation failure. */
export const EXIT_FAILURE = 1;

interface TargetOptions {
  socket?: string;
  proxmoxVmid?: string;
  domain?: string;
  libvirtUri?: string;
  local?: boolean;
  host?: string;
  port?: string;
  user?: string;
  identity?: string;
  knownHosts?: string;
  hostKey?: string;
  insecureSkipHostKeyCheck?: boolean;
  jump?: string;
  leaseDir?: string;
  timeout?: string;
  json?: boolean;
}

class UsageError extends Error {}

function progress(message: string): void {
  process.stderr.write(`quiesce: ${message}\n`);
}

function parseNumber(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`${name} must be a number from ${min} to ${max}; got ${JSON.stringify(value)}`);
  return n;
}

function parseJump(spec: string, base: SshConnectionConfig): SshConnectionConfig {
  const m = /^(?:([^@]+)@)?([^:]+)(?::(\d+))?$/.exec(spec);
  if (!m) throw new UsageError(`--jump must look like user@host:port; got ${JSON.stringify(spec)}`);
  // The bastion is verified through known_hosts (or its absence refused): the target's pinned key is not its
  // key, and an opt-out of host key checking given for the target does not extend to the bastion.
  return {
    ...base,
    user: m[1] ?? base.user,
    host: m[2],
    port: m[3] ? Number(m[3]) : 22,
    hostKey: undefined,
    insecureSkipHostKeyCheck: undefined,
    proxy: undefined,
  };
}

/** Builds the agent target from the TARGET options. */
export function targetFrom(o: TargetOptions): AgentTarget {
  const targets = [o.socket && "--socket", o.proxmoxVmid && "--proxmox-vmid", o.domain !== undefined && "--domain"].filter(Boolean);
  if (targets.length > 1) throw new UsageError(`give one of --socket, --proxmox-vmid and --domain, not ${targets.join(" and ")}`);
  if (o.libvirtUri !== undefined) {
    if (o.domain === undefined) throw new UsageError("--libvirt-uri goes with --domain (a libvirt domain)");
    const problem = libvirtUriProblem(o.libvirtUri);
    if (problem) throw new UsageError(`--libvirt-uri: ${problem}`);
  }
  if (o.domain !== undefined && o.domain.trim() === "") throw new UsageError("--domain must name a libvirt domain (its name or UUID; virsh list shows them)");
  if (o.domain === undefined) {
    if (o.proxmoxVmid) {
      const vmid = parseNumber(o.proxmoxVmid, "--proxmox-vmid", 100, 999_999_999) as number;
      if (!Number.isInteger(vmid)) throw new UsageError(`--proxmox-vmid must be a whole number; got ${JSON.stringify(o.proxmoxVmid)}`);
      o = { ...o, socket: proxmoxSocketPath(vmid) };
    }
    if (!o.socket) {
      throw new UsageError("--socket PATH (the absolute path of the guest agent socket on the host), --proxmox-vmid N or --domain NAME (a libvirt domain) is required");
    }
    if (!o.socket.startsWith("/")) {
      throw new UsageError(`--socket must be an absolute path (e.g. /var/lib/vms/vm1/qga.sock); got ${JSON.stringify(o.socket)}`);
    }
  }
  if (o.local && o.host) throw new UsageError("give either --local or --host, not both");
  if (!o.local && !o.host) throw new UsageError("give --local (the socket is on this machine) or --host HOST");
  if (o.leaseDir !== undefined && !o.leaseDir.startsWith("/")) throw new UsageError("--lease-dir must be an absolute path");
  const guest = (connection?: SshConnectionConfig): AgentTarget =>
    o.domain !== undefined
      ? { connection, domain: o.domain, libvirtUri: o.libvirtUri, leaseDir: o.leaseDir }
      : { connection, socketPath: o.socket as string, leaseDir: o.leaseDir };
  if (o.local) return guest(undefined);
  const verifications = [o.knownHosts !== undefined, o.hostKey !== undefined, o.insecureSkipHostKeyCheck === true].filter(Boolean).length;
  if (verifications > 1) throw new UsageError("give at most one of --known-hosts, --host-key and --insecure-skip-host-key-check");
  let privateKey: string | undefined;
  if (o.identity) {
    try {
      privateKey = fs.readFileSync(o.identity.replace(/^~(?=\/)/, os.homedir()), "utf8");
    } catch (err) {
      throw new UsageError(`--identity ${o.identity}: cannot read the key file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
  }
  const connection: SshConnectionConfig = {
    host: o.host as string,
    port: parseNumber(o.port, "--port", 1, 65535),
    user: o.user,
    privateKey,
    privateKeyPassword: process.env.QUIESCE_KEY_PASSPHRASE,
    knownHostsPath: o.knownHosts,
    hostKey: o.hostKey,
    insecureSkipHostKeyCheck: o.insecureSkipHostKeyCheck === true ? true : undefined,
  };
  return guest(o.jump ? { ...connection, proxy: parseJump(o.jump, connection) } : connection);
}

function timeouts(o: TargetOptions): { agentSeconds?: number } {
  return { agentSeconds: parseNumber(o.timeout, "--timeout", 0.1, 3600) };
}

function withTargetOptions(cmd: Command): Command {
  return cmd
    .option("--socket <path>", "absolute path of the guest agent socket on the host")
    .option("--proxmox-vmid <n>", "a Proxmox VE guest: its socket is /var/run/qemu-server/<n>.qga")
    .option("--domain <name>", "a libvirt domain (name or UUID), frozen through libvirt, in place of --socket")
    .option("--libvirt-uri <uri>", "with --domain: libvirt URI on the host (default qemu:///system)")
    .option("--local", "the socket is on this machine")
    .option("--host <host>", "hypervisor host to reach over SSH")
    .option("--port <n>", "SSH port (default 22)")
    .option("--user <user>", "SSH user (default root)")
    .option("--identity <file>", "private key file (passphrase from $QUIESCE_KEY_PASSPHRASE); default: ssh-agent")
    .option("--known-hosts <file>", "known_hosts file to verify the host key (default ~/.ssh/known_hosts)")
    .option("--host-key <key>", "pinned host key (ssh-ed25519 AAAA...) or SHA256: fingerprint")
    .option("--insecure-skip-host-key-check", "accept any host key (explicit opt-in)")
    .option("--jump <user@host:port>", "bastion to connect through")
    .option("--lease-dir <dir>", "lease directory on the host (default /run/pulumi-quiesce)")
    .option("--timeout <seconds>", "agent timeout in seconds (default 10)")
    .option("--json", "print exactly one JSON object on stdout");
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

function cliOwner(): string {
  return `cli:${os.userInfo().username}@${os.hostname()}`;
}

type Result = Record<string, unknown>;

/** Runs one subcommand body: prints its result (or error) and sets the exit code. */
async function execute(o: TargetOptions, body: () => Promise<{ result: Result; human: string; exitCode?: number }>): Promise<void> {
  try {
    const { result, human, exitCode } = await body();
    if (o.json) process.stdout.write(JSON.stringify({ ok: (exitCode ?? 0) === 0, ...result }) + "\n");
    else if (human) process.stdout.write(human + "\n");
    process.exitCode = exitCode ?? 0;
  } catch (err) {
    const usage = err instanceof UsageError;
    const error = isQuiesceError(err)
      ? err.toJSON()
      : { name: usage ? "UsageError" : (err as Error).name, code: usage ? "USAGE" : "INTERNAL", message: (err as Error).message };
    if (o.json) process.stdout.write(JSON.stringify({ ok: false, error }) + "\n");
    process.stderr.write(`quiesce: error: ${(err as Error).message}\n`);
    process.exitCode = usage ? EXIT_USAGE : EXIT_FAILURE;
  } finally {
    // Nothing may keep the CLI alive: a window still held here (a failed release) is left to the host daemon.
    dropAllHolds();
    defaultSshPool.closeAll();
  }
}

/**
 * Runs a host command: every argument quoted on its own, so no shell interprets it, over SSH or on this machine.
 * It dies with its channel: killing `quiesce run` kills it too (the guest is being thawed by then).
 */
function runHostCommand(target: AgentTarget, argv: readonly string[], killAfterSeconds?: number): Promise<ExecResult> {
  return runOnHost(target.connection, { script: argv.map(shellQuote).join(" "), timeoutMs: 24 * 3600 * 1000, purpose: "host command", killAfterSeconds });
}

/** A size in bytes, in binary units: `50.2 MiB`. */
function formatBytes(n: number | undefined): string {
  if (n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * The filesystems as a table, one line per filesystem (as `virsh domfsinfo` prints them): mount point, type,
 * used/total, and each backing disk's serial, device, bus target and controller PCI address.
 */
export function filesystemTable(filesystems: readonly GuestFilesystem[]): string {
  if (filesystems.length === 0) return "(the guest agent reports no filesystems)";
  const rows = filesystems.map((f) => [
    f.mountpoint,
    f.type,
    `${formatBytes(f.usedBytes)} / ${formatBytes(f.totalBytes)}`,
    f.disks
      .map((d) => {
        const pci = diskPciAddress(d);
        return [d.serial ? `serial=${d.serial}` : "", d.dev ?? "", d.libvirtTarget ? `target=${d.libvirtTarget}` : "", d.busType === "unknown" ? "" : diskBusTarget(d), pci ? `pci:${pci}` : ""].filter(Boolean).join(" ");
      })
      .join("; ") || "-",
  ]);
  const header = ["MOUNTPOINT", "TYPE", "USED / TOTAL", "DISKS (serial, device, libvirt target, bus target, PCI address)"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join("  ");
  return [line(header), ...rows.map(line)].join("\n");
}

interface WindowOptions extends TargetOptions {
  mountpoint: string[];
  disk: string[];
  ttl?: string;
  onFailure: string;
}

/** The selection, lease and fallback of `freeze` and `run`. No --ttl: the lease defaults (300 s; 10 s on Windows). */
function windowRequest(o: WindowOptions): { mountpoints: string[]; disks: string[]; maxDurationSeconds?: number; onQuiesceFailure: OnQuiesceFailure } {
  if (o.onFailure !== "fail" && o.onFailure !== "crash-consistent") {
    throw new UsageError(`--on-failure must be fail or crash-consistent; got ${JSON.stringify(o.onFailure)}`);
  }
  return { mountpoints: o.mountpoint, disks: o.disk, maxDurationSeconds: parseNumber(o.ttl, "--ttl", 1, 86_400), onQuiesceFailure: o.onFailure };
}

/** Builds the program (exported for tests). */
export function buildProgram(): Command {
  const program = new Command("quiesce")
    .description("Freeze and thaw VM guest filesystems through the QEMU guest agent, for consistent snapshots.")
    .version(`${packageVersion()} (host daemon protocol ${DAEMON_PROTOCOL_VERSION})`, "-V, --version", "print the version and the host daemon protocol version")
    .showHelpAfterError()
    .exitOverride();

  withTargetOptions(program.command("fsinfo").description("list the guest's filesystems and disks"))
    .addHelpText("after", "\nExample:\n  quiesce fsinfo --host hv1 --socket /var/lib/vms/db/qga.sock")
    .action(async (o: TargetOptions) =>
      execute(o, async () => {
        const target = targetFrom(o);
        progress(`reading filesystems of ${targetLabel(target)}`);
        const filesystems = await listFilesystems(target, { timeouts: timeouts(o) });
        return { result: { filesystems }, human: filesystemTable(filesystems) };
      }),
    );

  withTargetOptions(program.command("status").description("agent freeze status and the lease (owner, expiresAt)"))
    .option("--window <id>", "report the state from this window's point of view")
    .addHelpText("after", "\nExample:\n  quiesce status --local --socket /run/vm1/qga.sock --json")
    .action(async (o: TargetOptions & { window?: string }) =>
      execute(o, async () => {
        const target = targetFrom(o);
        const r = await windowStatus(target, { windowId: o.window, timeouts: timeouts(o) });
        const lease = r.lease ? `window ${r.lease.windowId} of ${r.lease.owner}, until ${r.lease.expiresAt}` : "no lease";
        return { result: { agentStatus: r.agentStatus, state: r.state, lease: r.lease ?? null, ended: r.ended ?? null }, human: `${r.agentStatus} (${r.state}); ${lease}` };
      }),
    );

  withTargetOptions(program.command("freeze").description("freeze; the window is held until `quiesce thaw` or the TTL"))
    .option("--mountpoint <path>", "guest mount point to freeze (repeatable); none: every filesystem", collect, [])
    .option("--disk <id>", "freeze the filesystems on one disk: serial, /dev/vdX, bus target, pci:DDDD:BB:SS.F, or a libvirt target (vdb) (repeatable)", collect, [])
    .option("--ttl <seconds>", "lease: the guest is thawed after this many seconds whatever happens (default 300; 10 on Windows)")
    .option("--on-failure <policy>", "fail, or crash-consistent: when the guest cannot be frozen, go on with nothing frozen", "fail")
    .addHelpText("after", "\nExamples:\n  quiesce freeze --host hv1 --socket /var/lib/vms/db/qga.sock --mountpoint /data --ttl 60\n  quiesce freeze --host hv1 --domain db1 --disk vdb --ttl 60")
    .action(async (o: WindowOptions) =>
      execute(o, async () => {
        const target = targetFrom(o);
        const window = windowRequest(o);
        progress(`freezing ${o.mountpoint.join(", ") || o.disk.join(", ") || "every filesystem"} on ${targetLabel(target)}`);
        // The CLI exits after freezing, so the window must not end with this process: deadline only.
        const w = await createWindow({ target, ...window, thawOnDisconnect: false, owner: cliOwner(), timeouts: timeouts(o) });
        if (w.consistency === "crash") progress(`NOTHING FROZEN (--on-failure crash-consistent): ${w.consistencyReason}`);
        else progress(`frozen ${w.frozenMountpoints.join(", ")} in ${w.freezeMs} ms; thaw with: quiesce thaw ... --window ${w.windowId}`);
        return { result: { ...w, filesystems: undefined }, human: w.windowId };
      }),
    );

  withTargetOptions(program.command("thaw").description("thaw a window made by the CLI (or --window ID); --force thaws any freeze"))
    .option("--window <id>", "the window to thaw")
    .option("--force", "break-glass: thaw whatever froze the guest, owned or not")
    .addHelpText("after", "\nExamples:\n  quiesce thaw --host hv1 --socket /var/lib/vms/db/qga.sock --window qw-1a2b3c4d5e6f7a8b\n  quiesce thaw --local --socket /run/vm1/qga.sock --force")
    .action(async (o: TargetOptions & { window?: string; force?: boolean }) =>
      execute(o, async () => {
        const target = targetFrom(o);
        if (o.force) {
          const r = await forceThaw(target, { timeouts: timeouts(o) });
          progress(`force-thawed ${r.thawedCount} filesystem(s)${r.lease ? ` (the lease named window ${r.lease.windowId} of ${r.lease.owner})` : ""}`);
          return { result: { outcome: "force-thawed", thawedCount: r.thawedCount, lease: r.lease ?? null }, human: "thawed" };
        }
        const status = await windowStatus(target, { windowId: o.window, timeouts: timeouts(o) });
        const lease = status.lease;
        if (!lease) {
          // The window named ended before this thaw (its deadline, or its holder gone): a pipeline's
          // freeze → snapshot → thaw must learn that its snapshot may not be consistent.
          const ended = status.ended;
          if (o.window && ended?.windowId === o.window && ended.how !== "released") {
            throw new QuiesceError(
              "LEASE_EXPIRED",
              `${targetLabel(target)}: window ${o.window} had already ended (${ended.how} at ${ended.at}) before this thaw: ` +
                "the guest was thawed then, so a snapshot taken after that is NOT CONSISTENT. Use a longer --ttl.",
              { windowId: o.window, how: ended.how },
            );
          }
          if (status.agentStatus === "frozen") {
            throw new QuiesceError("NOT_OWNER", `${targetLabel(target)}: the guest is frozen outside pulumi-quiesce (no lease). Refusing; use --force if you are sure.`, {});
          }
          return { result: { outcome: "not-held", thawedCount: 0 }, human: "already thawed" };
        }
        // A Pulumi stack's window is its deployment's to release (a snapshot may be running under it).
        if (lease.owner.startsWith("pulumi:")) {
          throw new QuiesceError(
            "NOT_OWNER",
            `${targetLabel(target)}: the freeze belongs to window ${lease.windowId} of the Pulumi stack ${lease.owner.slice("pulumi:".length)} ` +
              `(lease until ${lease.expiresAt}); its deployment releases it, and the host daemon thaws it at the deadline. ` +
              "Refusing to thaw it under a running snapshot; add --force if you are sure.",
            { owner: lease.owner, windowId: lease.windowId },
          );
        }
        // Without --window, only a window this user made on this machine is "mine".
        const mine = o.window ? lease.windowId === o.window : lease.owner === cliOwner();
        if (!mine) {
          throw new QuiesceError(
            "NOT_OWNER",
            `${targetLabel(target)}: the freeze belongs to window ${lease.windowId} of ${lease.owner}` +
              `${o.window ? `, not ${o.window}` : ""}. Refusing to thaw it; pass --window ${lease.windowId} or --force if you are sure.`,
            { owner: lease.owner, windowId: lease.windowId },
          );
        }
        const r: ReleaseResult = await releaseWindow({ target, windowId: lease.windowId, timeouts: timeouts(o) });
        progress(`window ${lease.windowId}: ${r.outcome}, held ${r.heldMs ?? 0} ms`);
        if (r.writesResumed) {
          throw new QuiesceError(
            "VSS_WRITES_RESUMED",
            `${targetLabel(target)}: window ${lease.windowId} is thawed, but the Windows guest's writes had resumed before this thaw ` +
              `(VSS holds them at most 10 s; held ${r.heldMs ?? 0} ms): a snapshot taken in this window is NOT CONSISTENT.`,
            { windowId: lease.windowId, heldMs: r.heldMs },
          );
        }
        if (r.thawWarning) progress(`the guest was thawed, but: ${r.thawWarning}`);
        return { result: { windowId: lease.windowId, outcome: r.outcome, heldMs: r.heldMs, thawedCount: r.thawedCount, ...(r.thawWarning ? { warning: r.thawWarning } : {}) }, human: r.outcome };
      }),
    );

  withTargetOptions(program.command("run").description("freeze, run a command on the host, release; killing `run` thaws at once"))
    .option("--mountpoint <path>", "guest mount point to freeze (repeatable); none: every filesystem", collect, [])
    .option("--disk <id>", "freeze the filesystems on one disk: serial, /dev/vdX, bus target, pci:DDDD:BB:SS.F, or a libvirt target (vdb) (repeatable)", collect, [])
    .option("--ttl <seconds>", "lease: the guest is thawed after this many seconds whatever happens (default 300; 10 on Windows)")
    .option("--on-failure <policy>", "fail, or crash-consistent: when the guest cannot be frozen, run the command anyway with nothing frozen", "fail")
    .argument("<host-command...>", "the command to run on the host while frozen (after --)")
    .addHelpText("after", "\nExample:\n  quiesce run --host hv1 --socket /var/lib/vms/db/qga.sock --mountpoint /data -- lvcreate -s -n db-snap -L 5G vg0/db")
    .action(async (command: string[], o: WindowOptions) =>
      execute(o, async () => {
        const target = targetFrom(o);
        const window = windowRequest(o);
        progress(`freezing ${o.mountpoint.join(", ") || o.disk.join(", ") || "every filesystem"} on ${targetLabel(target)}`);
        const w = await createWindow({ target, ...window, thawOnDisconnect: true, owner: cliOwner(), timeouts: timeouts(o) });
        const crash = w.consistency === "crash";
        if (crash) progress(`NOTHING FROZEN (--on-failure crash-consistent), the snapshot is crash-consistent only: ${w.consistencyReason}; running: ${command.join(" ")}`);
        else progress(`frozen ${w.frozenMountpoints.join(", ")} in ${w.freezeMs} ms (window ${w.windowId}); running: ${command.join(" ")}`);
        const started = Date.now();
        let ran: { code: number | null; stdout: string; stderr: string } | undefined;
        let runError: unknown;
        try {
          // Killed on the host at the lease's end (plus 1 s), whatever happens to this process's connection.
          ran = await runHostCommand(target, command, crash ? undefined : (Date.parse(w.expiresAt) - Date.now()) / 1000 + 1);
        } catch (err) {
          runError = err;
        }
        const commandMs = Date.now() - started;
        // A crash-consistent window froze nothing and holds no lease: there is nothing to release.
        const r: Pick<ReleaseResult, "outcome" | "heldMs" | "writesResumed" | "thawWarning"> = crash
          ? { outcome: "not-held" }
          : await releaseWindow({ target, windowId: w.windowId, timeouts: timeouts(o) });
        if (!crash) progress(`released: ${r.outcome}, held ${r.heldMs ?? 0} ms`);
        if (r.writesResumed) progress("the Windows guest's writes resumed before the release (VSS holds them at most 10 s): the snapshot is NOT consistent");
        if (runError) throw runError;
        const expired = !crash && r.outcome !== "released";
        const commandFailed = ran?.code !== 0;
        if (ran && ran.stderr) process.stderr.write(ran.stderr);
        const result = {
          windowId: w.windowId,
          frozenMountpoints: w.frozenMountpoints,
          freezeMs: w.freezeMs,
          heldMs: r.heldMs,
          commandMs,
          exitCode: ran?.code ?? null,
          outcome: crash ? "crash-consistent" : r.outcome,
          consistency: crash || expired ? "crash" : "filesystem",
          ...(crash ? { consistencyReason: w.consistencyReason } : {}),
          ...(r.writesResumed ? { writesResumed: true } : {}),
          ...(r.thawWarning ? { warning: r.thawWarning } : {}),
          stdout: ran?.stdout ?? "",
        };
        if (expired) progress(`the window ended (${r.outcome}) before the command did: the snapshot may be inconsistent`);
        if (commandFailed) progress(`the host command exited with ${ran?.code}`);
        return { result, human: ran?.stdout.trimEnd() ?? "", exitCode: expired || commandFailed ? EXIT_FAILURE : 0 };
      }),
    );
  addGroupCommands(program);
  return program;
}

interface GroupOptions {
  file?: string;
  json?: boolean;
  timeout?: string;
  force?: boolean;
}

/** The group file's members as the lifecycle takes them; every problem is a usage error naming the line. */
function loadGroup(o: GroupOptions): { ttl: number; members: GroupMember[] } {
  if (!o.file) throw new UsageError("--file GROUP.yaml is required (see quiesce group --help for its format)");
  let text: string;
  try {
    text = fs.readFileSync(o.file, "utf8");
  } catch (err) {
    throw new UsageError(`--file ${o.file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  let parsed;
  try {
    parsed = parseGroupFile(text, o.file);
  } catch (err) {
    if (err instanceof GroupFileError) throw new UsageError(err.message);
    throw err;
  }
  const members = parsed.members.map((m): GroupMember => {
    try {
      return { name: m.name, target: targetFrom(m.options), mountpoints: m.mountpoints, disks: m.disks };
    } catch (err) {
      // The checks are the CLI's: the file's field names are its flags' (socket = --socket, knownHosts = --known-hosts).
      if (err instanceof UsageError) throw new UsageError(`${o.file}: line ${m.line}: member ${m.name}: ${err.message}`);
      throw err;
    }
  });
  return { ttl: parsed.ttl, members };
}

function withGroupOptions(cmd: Command): Command {
  return cmd
    .option("--file <path>", "the group file (YAML): ttl, defaults, members")
    .option("--timeout <seconds>", "agent timeout in seconds (default 10)")
    .option("--json", "print exactly one JSON object on stdout");
}

/** Runs `argv` on this machine (no shell), killed with SIGKILL after `killAfterMs`; its output is collected. */
function runLocal(argv: readonly string[], env: NodeJS.ProcessEnv, killAfterMs: number): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // In a process group of its own, so that what it starts goes with it (a shell's children keep its pipes open).
    const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], env, detached: true });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const killGroup = (): void => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err; // ESRCH: the group is gone already
      }
    };
    const timer = setTimeout(killGroup, Math.max(0, killAfterMs));
    timer.unref();
    // This process's end (a signal) ends the command too: the members are being thawed by then.
    const stop = killGroup;
    process.once("SIGINT", stop).once("SIGTERM", stop);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new UsageError(`cannot run ${argv[0]}: ${err.message}`));
    });
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      process.off("SIGINT", stop).off("SIGTERM", stop);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** `quiesce group fsinfo|status|freeze|thaw|run --file GROUP.yaml`. */
function addGroupCommands(program: Command): void {
  const group = program
    .command("group")
    .description("several guests, on one host or several, frozen as one consistent point (--file GROUP.yaml)")
    .addHelpText(
      "after",
      "\nThe group file (YAML):\n" +
        "  ttl: 60                       # lease in seconds, every member (default 300)\n" +
        "  defaults: { host: hv1, user: root, identity: ~/.ssh/id_ed25519, knownHosts: ~/.ssh/known_hosts }\n" +
        "  members:\n" +
        "    - { name: primary, socket: /var/lib/vms/db1/qga.sock, mountpoints: [/var/lib/postgresql] }\n" +
        "    - { name: replica, host: hv2, port: 2222, socket: /var/lib/vms/db2/qga.sock }\n" +
        "    - { name: app, domain: app1, disks: [appdata] }   # a libvirt domain\n" +
        "Member fields are the TARGET flags: host, port, user, identity, knownHosts, hostKey, jump, leaseDir, local,\n" +
        "one of socket / domain (with libvirtUri) / proxmoxVmid, and mountpoints, disks.",
    );
  const t = (o: GroupOptions): Timeouts => ({ agentSeconds: parseNumber(o.timeout, "--timeout", 0.1, 3600) });

  withGroupOptions(group.command("fsinfo").description("every member's filesystems")).action(async (o: GroupOptions) =>
    execute(o, async () => {
      const { members } = loadGroup(o);
      const all = await Promise.all(members.map(async (m) => ({ name: m.name, target: targetLabel(m.target), filesystems: await listFilesystems(m.target, { timeouts: t(o) }) })));
      return { result: { members: all }, human: all.map((m) => `== ${m.name} (${m.target})\n${filesystemTable(m.filesystems)}`).join("\n") };
    }),
  );

  withGroupOptions(group.command("status").description("every member's agent status and lease")).action(async (o: GroupOptions) =>
    execute(o, async () => {
      const { members } = loadGroup(o);
      const all = await Promise.all(
        members.map(async (m) => {
          const r = await windowStatus(m.target, { timeouts: t(o) });
          return { name: m.name, target: targetLabel(m.target), agentStatus: r.agentStatus, state: r.state, lease: r.lease ?? null };
        }),
      );
      return {
        result: { members: all },
        human: all.map((m) => `${m.name}: ${m.agentStatus} (${m.state})${m.lease ? `; window ${m.lease.windowId} of ${m.lease.owner} until ${m.lease.expiresAt}` : ""}`).join("\n"),
      };
    }),
  );

  withGroupOptions(group.command("freeze").description("freeze every member as one point; the leases (ttl) end it, or group thaw"))
    .addHelpText("after", "\nExample:\n  quiesce group freeze --file db.yaml --json")
    .action(async (o: GroupOptions) =>
      execute(o, async () => {
        const { ttl, members } = loadGroup(o);
        progress(`freezing ${members.map((m) => m.name).join(", ")}`);
        // The CLI exits after freezing: only the leases (or group thaw) end the members.
        const g = await createGroup({ members, maxDurationSeconds: ttl, thawOnDisconnect: false, owner: cliOwner(), timeouts: t(o) });
        progress(`group ${g.groupId} frozen, skew ${g.skewMs} ms, until ${g.expiresAt}`);
        const result = {
          groupId: g.groupId,
          skewMs: g.skewMs,
          frozenAt: g.frozenAt,
          expiresAt: g.expiresAt,
          members: g.members.map((m) => ({ name: m.name, windowId: m.windowId, frozenMountpoints: m.frozenMountpoints, frozenAt: m.frozenAt, expiresAt: m.expiresAt, freezeMs: m.freezeMs })),
        };
        return { result, human: g.groupId };
      }),
    );

  withGroupOptions(group.command("thaw").description("thaw every member the CLI froze; fails if any was not held until now"))
    .option("--force", "break-glass: thaw whatever froze each member, owned or not")
    .action(async (o: GroupOptions) =>
      execute(o, async () => {
        const { members } = loadGroup(o);
        const all = await Promise.all(
          members.map(async (m) => {
            const label = targetLabel(m.target);
            if (o.force) {
              const r = await forceThaw(m.target, { timeouts: t(o) });
              return { name: m.name, outcome: "force-thawed", thawedCount: r.thawedCount };
            }
            const status = await windowStatus(m.target, { timeouts: t(o) });
            const lease = status.lease;
            if (!lease) {
              // Nothing of the CLI's holds it now: if a freeze was made, it ended before this thaw.
              return { name: m.name, outcome: status.agentStatus === "frozen" ? "frozen-outside" : "not-held", thawedCount: 0 };
            }
            if (lease.owner !== `${cliOwner()}#${m.name}`) {
              return { name: m.name, outcome: "not-owner", thawedCount: 0, owner: lease.owner, windowId: lease.windowId, message: `${label}: the freeze belongs to window ${lease.windowId} of ${lease.owner}; left alone (--force thaws it)` };
            }
            const r = await releaseWindow({ target: m.target, windowId: lease.windowId, timeouts: t(o) });
            return { name: m.name, outcome: r.outcome, thawedCount: r.thawedCount, heldMs: r.heldMs, windowId: lease.windowId };
          }),
        );
        const bad = all.filter((m) => m.outcome !== "released" && m.outcome !== "force-thawed");
        for (const m of bad) progress(`member ${m.name}: ${m.outcome}${"message" in m && m.message ? `: ${m.message}` : ""}`);
        if (bad.length) progress("a member was not held until this thaw: a snapshot taken across the group may be NOT CONSISTENT");
        return { result: { members: all, heldThroughout: bad.length === 0 }, human: all.map((m) => `${m.name}: ${m.outcome}`).join("\n"), exitCode: bad.length ? EXIT_FAILURE : 0 };
      }),
    );

  withGroupOptions(group.command("run").description("freeze every member, run a command on THIS machine, release; non-zero if any member was not held throughout"))
    .argument("<command...>", "the command to run here while every member is frozen (after --); no shell")
    .addHelpText(
      "after",
      "\nThe command gets QUIESCE_GROUP_ID, QUIESCE_GROUP_MEMBERS (the names, space-separated) and QUIESCE_GROUP (JSON: each\n" +
        "member's name, window, target and frozen mount points). It is killed at the earliest lease's end.\n" +
        "Example:\n  quiesce group run --file db.yaml -- rbd group snap create pool/db@nightly",
    )
    .action(async (command: string[], o: GroupOptions) =>
      execute(o, async () => {
        const { ttl, members } = loadGroup(o);
        progress(`freezing ${members.map((m) => m.name).join(", ")}`);
        const g = await createGroup({ members, maxDurationSeconds: ttl, thawOnDisconnect: true, owner: cliOwner(), timeouts: t(o) });
        progress(`group ${g.groupId} frozen (skew ${g.skewMs} ms); running: ${command.join(" ")}`);
        const described = g.members.map((m, i) => ({ name: m.name, windowId: m.windowId, target: targetLabel(members[i].target), frozenMountpoints: m.frozenMountpoints }));
        const env = { ...process.env, QUIESCE_GROUP_ID: g.groupId, QUIESCE_GROUP_MEMBERS: g.members.map((m) => m.name).join(" "), QUIESCE_GROUP: JSON.stringify(described) };
        const started = Date.now();
        let ran: Awaited<ReturnType<typeof runLocal>> | undefined;
        let runError: unknown;
        try {
          ran = await runLocal(command, env, Date.parse(g.expiresAt) - Date.now() + 1_000);
        } catch (err) {
          runError = err;
        }
        const commandMs = Date.now() - started;
        const r = await releaseGroup(g.members.map((m, i) => ({ name: m.name, target: members[i].target, windowId: m.windowId })), { timeouts: t(o) });
        if (runError) throw runError;
        if (ran?.stderr) process.stderr.write(ran.stderr);
        const notHeld = [...r.members.filter((m) => m.outcome !== "released").map((m) => `${m.name} (${m.outcome})`), ...r.failures.map((f) => `${f.member} (${f.code})`)];
        if (notHeld.length) progress(`not held throughout: ${notHeld.join(", ")}: the snapshot may be NOT CONSISTENT`);
        const commandFailed = ran?.code !== 0;
        if (commandFailed) progress(`the command exited with ${ran?.code ?? ran?.signal}`);
        const result = {
          groupId: g.groupId,
          skewMs: g.skewMs,
          commandMs,
          exitCode: ran?.code ?? null,
          heldThroughout: r.heldThroughout,
          members: g.members.map((m) => {
            const rel = r.members.find((x) => x.name === m.name);
            return { name: m.name, windowId: m.windowId, frozenMountpoints: m.frozenMountpoints, freezeMs: m.freezeMs, outcome: rel?.outcome ?? "failed", heldMs: rel?.heldMs };
          }),
          stdout: ran?.stdout ?? "",
        };
        return { result, human: ran?.stdout.trimEnd() ?? "", exitCode: !r.heldThroughout || commandFailed ? EXIT_FAILURE : 0 };
      }),
    );
}

/** Entry point. */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv]);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit 0; everything else commander rejects is a usage error.
      process.exitCode = err.exitCode === 0 ? 0 : EXIT_USAGE;
      if (process.exitCode !== 0 && argv.includes("--json")) {
        process.stdout.write(JSON.stringify({ ok: false, error: { name: "UsageError", code: "USAGE", message: err.message } }) + "\n");
      }
      return;
    }
    throw err;
  }
}

if (require.main === module) {
  void main().catch((err: unknown) => {
    process.stderr.write(`quiesce: internal error: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = EXIT_FAILURE;
  });
}
