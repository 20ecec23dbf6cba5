/**
 * The ResourceProvider logic of QuiesceWindow, WindowRelease and HostSnapshot, as plain functions.
 * The serialized provider objects in sdk/ only `require()` this module by package name and forward
 * to it, so `__provider` stays small, captures nothing stateful and holds no secret.
 *
 * Contract (DESIGN.md, "Lifecycle rules"; @pulumi/pulumi dynamic/index.ts):
 * - check: pure validation, one failure per field, unknowns tolerated.
 * - diff: target, selection, lease or triggers change → replace with deleteBeforeReplace (freezes do not
 *   nest); credentials and timeouts only → update.
 * - create: if it fails, nothing was created: the guest is thawed.
 * - read: the truth (held or not), never "frozen" when the guest is thawed.
 * - delete: thaw only if owned; "already thawed / expired / another's" succeeds without touching the guest;
 *   an unreachable host fails, so the resource stays in state.
 */
import { QuiesceError } from "../errors";
import type { GuestFilesystem } from "../agent/commands";
import type { SshConnectionConfig } from "../transport/ssh";
import { defaultSshPool, shellQuote } from "../transport/ssh";
import {
  createWindow,
  releaseWindow,
  windowStatus,
  leaseHeld,
  type AgentTarget,
  type Timeouts,
  type WindowState,
  DEFAULT_MAX_DURATION_SECONDS,
} from "../quiesce/lifecycle";
import { validateWindowInputs, validateConnection, type InputFailure, PULUMI_UNKNOWN } from "../quiesce/validate";
import { diskBusTarget } from "../quiesce/plan";
import { DEFAULT_LEASE_DIR } from "../quiesce/lease";

/** QuiesceWindow inputs as the provider receives them (plain values). */
export interface WindowInputs {
  readonly connection?: SshConnectionConfig;
  readonly socketPath: string;
  readonly mountpoints?: string[];
  readonly disks?: string[];
  readonly maxDurationSeconds?: number;
  readonly thawOnDisconnect?: boolean;
  readonly timeouts?: Timeouts;
  readonly triggers?: unknown[];
  readonly leaseDir?: string;
  /** The resource's name, recorded as the lease owner (set by the SDK). */
  readonly resourceName?: string;
}

/** A filesystem in the `filesystems` output. */
export interface FilesystemSummary {
  readonly mountpoint: string;
  readonly type: string;
  readonly disks: { serial?: string; dev?: string; busType: string; target: string }[];
}

/** QuiesceWindow outputs. */
export interface WindowOutputs extends WindowInputs {
  readonly windowId: string;
  readonly frozenMountpoints: string[];
  readonly frozenCount: number;
  readonly frozenAt: string;
  readonly expiresAt: string;
  readonly agentVersion: string;
  readonly filesystems: FilesystemSummary[];
  /** Whether the window was held at the last create or refresh. */
  readonly held: boolean;
  /** The window's state at the last create or refresh. */
  readonly state: WindowState;
}

/** Provider id: the window id. */
type Id = string;

function target(inputs: WindowInputs): AgentTarget {
  return { connection: inputs.connection, socketPath: inputs.socketPath, leaseDir: inputs.leaseDir };
}

/** Summarises fsinfo for the `filesystems` output. */
export function summarizeFilesystems(filesystems: readonly GuestFilesystem[]): FilesystemSummary[] {
  return filesystems.map((f) => ({
    mountpoint: f.mountpoint,
    type: f.type,
    disks: f.disks.map((d) => ({
      ...(d.serial ? { serial: d.serial } : {}),
      ...(d.dev ? { dev: d.dev } : {}),
      busType: d.busType,
      target: diskBusTarget(d),
    })),
  }));
}

/** Writes a diagnostic line to stderr (shown by the engine with the resource's output). */
function note(message: string): void {
  process.stderr.write(`pulumi-quiesce: ${message}\n`);
}

// ---- QuiesceWindow ------------------------------------------------------------------------------

/** check: pure validation. */
export async function checkWindow(_olds: unknown, news: WindowInputs): Promise<{ inputs: WindowInputs; failures: InputFailure[] }> {
  return { inputs: news, failures: validateWindowInputs(news as unknown as Record<string, unknown>) };
}

const TARGET_KEYS = ["host", "port"] as const;
const CREDENTIAL_KEYS = [
  "user",
  "password",
  "privateKey",
  "privateKeyPassword",
  "agentSocketPath",
  "dialErrorLimit",
  "perDialTimeout",
  "hostKey",
  "knownHostsPath",
  "insecureSkipHostKeyCheck",
  "proxy",
] as const;

const WINDOW_KEYS = ["socketPath", "leaseDir", "mountpoints", "disks", "maxDurationSeconds", "thawOnDisconnect", "triggers"] as const;
const WINDOW_DEFAULTS: Readonly<Record<string, unknown>> = {
  leaseDir: DEFAULT_LEASE_DIR,
  maxDurationSeconds: DEFAULT_MAX_DURATION_SECONDS,
  thawOnDisconnect: true,
  mountpoints: [],
  disks: [],
};

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

/** diff: what replaces (a new freeze) and what merely updates. */
export async function diffWindow(
  _id: Id,
  olds: WindowOutputs,
  news: WindowInputs,
): Promise<{ changes: boolean; replaces: string[]; deleteBeforeReplace: boolean }> {
  const replaces: string[] = [];
  const updates: string[] = [];
  const oc = (olds.connection ?? {}) as Record<string, unknown>;
  const nc = (news.connection ?? {}) as Record<string, unknown>;
  // An input left out and the same input set to its default are the same window: no spurious replace.
  const conn = (c: Record<string, unknown>, k: string): unknown => c[k] ?? ({ port: 22, user: "root" } as Record<string, unknown>)[k];
  const effective = (w: WindowInputs, k: (typeof WINDOW_KEYS)[number]): unknown =>
    w[k] ?? WINDOW_DEFAULTS[k];
  if (!same(olds.connection === undefined, news.connection === undefined)) replaces.push("connection");
  for (const k of TARGET_KEYS) if (!same(conn(oc, k), conn(nc, k))) replaces.push(`connection.${k}`);
  for (const k of CREDENTIAL_KEYS) if (!same(conn(oc, k), conn(nc, k))) updates.push(`connection.${k}`);
  for (const k of WINDOW_KEYS) if (!same(effective(olds, k), effective(news, k))) replaces.push(k);
  if (!same(olds.timeouts, news.timeouts)) updates.push("timeouts");
  return { changes: replaces.length + updates.length > 0, replaces, deleteBeforeReplace: true };
}

function owner(name: string | undefined): string {
  const project = process.env.PULUMI_PROJECT ?? "";
  const stack = process.env.PULUMI_STACK ?? "";
  return `pulumi:${[project, stack, name].filter(Boolean).join("/") || "unknown"}`;
}

/** create: a verified freeze; on failure the guest is thawed. */
export async function createWindowResource(inputs: WindowInputs): Promise<{ id: Id; outs: WindowOutputs }> {
  const w = await createWindow({
    target: target(inputs),
    mountpoints: inputs.mountpoints,
    disks: inputs.disks,
    maxDurationSeconds: inputs.maxDurationSeconds,
    thawOnDisconnect: inputs.thawOnDisconnect,
    timeouts: inputs.timeouts,
    owner: owner(inputs.resourceName),
  });
  return {
    id: w.windowId,
    outs: {
      ...inputs,
      windowId: w.windowId,
      frozenMountpoints: [...w.frozenMountpoints],
      frozenCount: w.frozenCount,
      frozenAt: w.frozenAt,
      expiresAt: w.expiresAt,
      agentVersion: w.agentVersion,
      filesystems: summarizeFilesystems(w.filesystems),
      held: true,
      state: "held",
    },
  };
}

/** read: the truth about the window. */
export async function readWindow(id: Id, props: WindowOutputs): Promise<{ id: Id; props: WindowOutputs }> {
  // The socket path is the one the window was created through: if it is gone, so is the VM (refresh must not fail).
  const report = await windowStatus(target(props), { windowId: id, timeouts: props.timeouts, vanishedSocket: "vm-gone" });
  return { id, props: { ...props, held: report.state === "held", state: report.state } };
}

/** update: credentials or timeouts changed; the window and its outputs stay. */
export async function updateWindow(_id: Id, olds: WindowOutputs, news: WindowInputs): Promise<{ outs: WindowOutputs }> {
  return { outs: { ...olds, ...news } };
}

/** delete: thaw if this window still owns the freeze; otherwise succeed and say why. */
export async function deleteWindow(id: Id, props: WindowOutputs): Promise<void> {
  // A VM deleted before the stack must not make the stack undeletable: a missing socket reports vm-gone.
  const r = await releaseWindow({ target: target(props), windowId: id, timeouts: props.timeouts, vanishedSocket: "vm-gone" });
  if (r.outcome !== "released") note(`window ${id}: nothing to thaw (${describeOutcome(r.outcome, r.lease?.owner)})`);
}

function describeOutcome(outcome: string, leaseOwner: string | undefined): string {
  switch (outcome) {
    case "not-held":
      return "the guest is thawed and holds no lease of this window: already released, or thawed at its deadline";
    case "thawed-outside":
      return "the lease was this window's but the guest was thawed by someone else, or rebooted";
    case "other-window":
      return `the guest's freeze belongs to another window (${leaseOwner ?? "unknown owner"}); it was left alone`;
    case "frozen-outside":
      return "the guest is frozen by something outside pulumi-quiesce; it was left alone";
    case "expired":
      return "the window's lease deadline passed and the guest was thawed then (by the watchdog, or now)";
    case "already-released":
      return "the window had already been released by its owner";
    case "disconnected":
      return "the process that held the window went away and the watchdog thawed the guest (thawOnDisconnect)";
    case "vm-gone":
      return "the guest agent's socket no longer exists on the host: the VM stopped or was deleted, which ended the freeze";
    default:
      return outcome;
  }
}

// ---- WindowRelease ------------------------------------------------------------------------------

/** WindowRelease inputs. */
export interface ReleaseInputs {
  readonly windowId: string;
  readonly connection?: SshConnectionConfig;
  readonly socketPath: string;
  readonly leaseDir?: string;
  readonly timeouts?: Timeouts;
  /** Succeed even when the window was no longer held when release ran. Default false. */
  readonly allowExpired?: boolean;
}

/** WindowRelease outputs. */
export interface ReleaseOutputs extends ReleaseInputs {
  readonly heldMs: number;
  readonly releasedAt: string;
  readonly outcome: string;
}

/** check for WindowRelease. */
export async function checkRelease(_olds: unknown, news: ReleaseInputs): Promise<{ inputs: ReleaseInputs; failures: InputFailure[] }> {
  const failures: InputFailure[] = [];
  if (news.windowId !== PULUMI_UNKNOWN && (typeof news.windowId !== "string" || news.windowId === "")) {
    failures.push({ property: "window", reason: "window is required: the QuiesceWindow to release" });
  }
  failures.push(...validateConnection(news.connection));
  return { inputs: news, failures };
}

/** create for WindowRelease: thaws under the ownership rule; fails if the window was no longer held. */
export async function createRelease(inputs: ReleaseInputs): Promise<{ id: Id; outs: ReleaseOutputs }> {
  const r = await releaseWindow({
    target: target(inputs as WindowInputs),
    windowId: inputs.windowId,
    timeouts: inputs.timeouts,
    vanishedSocket: "vm-gone",
  });
  if (r.outcome !== "released" && !inputs.allowExpired) {
    throw new QuiesceError(
      r.outcome === "expired" ? "LEASE_EXPIRED" : "NOT_HELD",
      `window ${inputs.windowId} was no longer held when the release ran: ${describeOutcome(r.outcome, r.lease?.owner)}. ` +
        "SNAPSHOTS THAT DEPEND ON THIS WINDOW MAY BE INCONSISTENT. Raise maxDurationSeconds, or set allowExpired " +
        "if that is acceptable.",
      { windowId: inputs.windowId, outcome: r.outcome },
    );
  }
  const releasedAt = new Date().toISOString();
  return {
    id: `${inputs.windowId}-release`,
    outs: { ...inputs, heldMs: r.heldMs ?? 0, releasedAt, outcome: r.outcome },
  };
}

// ---- HostSnapshot -------------------------------------------------------------------------------

/** HostSnapshot inputs. */
export interface HostSnapshotInputs {
  readonly windowId: string;
  readonly connection?: SshConnectionConfig;
  readonly socketPath: string;
  readonly leaseDir?: string;
  /** Shell command run on the host while the window is held. */
  readonly create: string;
  /** Shell command run on the host when the resource is deleted (no window needed). */
  readonly delete?: string;
  /** Environment variables for the commands (values are quoted; names must be identifiers). */
  readonly environment?: Record<string, string>;
  readonly timeouts?: Timeouts;
}

/** HostSnapshot outputs. */
export interface HostSnapshotOutputs extends HostSnapshotInputs {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Milliseconds the create command ran. */
  readonly commandMs: number;
}

/** Bytes of stdout/stderr kept in outputs. */
export const HOST_OUTPUT_LIMIT = 16_384;

/** check for HostSnapshot. */
export async function checkHostSnapshot(_olds: unknown, news: HostSnapshotInputs): Promise<{ inputs: HostSnapshotInputs; failures: InputFailure[] }> {
  const failures: InputFailure[] = [];
  if (news.create !== PULUMI_UNKNOWN && (typeof news.create !== "string" || news.create.trim() === "")) {
    failures.push({ property: "create", reason: "create is required: the shell command that takes the snapshot on the host" });
  }
  for (const name of Object.keys(news.environment ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      failures.push({ property: `environment.${name}`, reason: `environment variable name ${JSON.stringify(name)} is not a shell identifier` });
    }
  }
  failures.push(...validateConnection(news.connection));
  return { inputs: news, failures };
}

function withEnvironment(command: string, environment: Record<string, string> | undefined): string {
  const exports = Object.entries(environment ?? {}).map(([k, v]) => `export ${k}=${shellQuote(v)};`);
  return [...exports, command].join(" ");
}

/** Runs a command on the window's host: over SSH, or locally with `sh -c`. */
export async function runOnHost(
  inputs: { connection?: SshConnectionConfig },
  command: string,
  environment: Record<string, string> | undefined,
  timeoutMs: number,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const full = withEnvironment(command, environment);
  if (inputs.connection) {
    return defaultSshPool.exec(inputs.connection, full, { timeoutMs, maxOutputBytes: HOST_OUTPUT_LIMIT });
  }
  const { spawn } = await import("node:child_process");
  return new Promise((resolve, reject) => {
    const child = spawn("sh", ["-c", full], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    timer.unref();
    child.stdout.on("data", (d: Buffer) => (stdout = (stdout + d.toString()).slice(0, HOST_OUTPUT_LIMIT)));
    child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(0, HOST_OUTPUT_LIMIT)));
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * The last `lines` lines of a command's stderr for an error message. Errors are not secret (the engine prints
 * and stores them), while the environment may be: its values are masked wherever the command echoed them.
 */
function stderrTail(stderr: string, environment: Record<string, string> | undefined, lines: number, separator: string): string {
  let tail = stderr.trim().split("\n").slice(-lines).join(separator);
  for (const value of Object.values(environment ?? {})) {
    if (typeof value === "string" && value.length >= 4) tail = tail.split(value).join("[secret]");
  }
  return tail;
}

function notHeld(inputs: HostSnapshotInputs, when: string, state: string, consequence: string): QuiesceError {
  return new QuiesceError(
    "NOT_HELD",
    `window ${inputs.windowId} is not held ${when} the snapshot command (state: ${state}); ${consequence} ` +
      "Raise maxDurationSeconds or check who thawed the guest.",
    { windowId: inputs.windowId, state },
  );
}

/**
 * create for HostSnapshot: window held → command → window still held.
 *
 * Before the command the lease is checked (no agent session: each one costs about 100 ms of frozen time);
 * after it the agent itself must say frozen with the lease still this window's, which is what proves the
 * snapshot consistent. If that fails, the snapshot just taken is not consistent: the delete command (if
 * any) removes it, so it neither lands in state nor stays on the host unseen.
 */
export async function createHostSnapshot(inputs: HostSnapshotInputs): Promise<{ id: Id; outs: HostSnapshotOutputs }> {
  const before = await leaseHeld(target(inputs as WindowInputs), inputs.windowId);
  if (before.state !== "held") {
    throw notHeld(
      inputs,
      "before",
      before.state,
      "nothing was run. A snapshot needs a window frozen in the same deployment: if only the snapshot is being " +
        "replaced or retried, replace its window too (put the snapshot's changing inputs in the window's `triggers`, " +
        "or `pulumi up --replace` the window).",
    );
  }
  const started = Date.now();
  const r = await runOnHost(inputs, inputs.create, inputs.environment, 3_600_000);
  const commandMs = Date.now() - started;
  if (r.code !== 0) {
    const tail = stderrTail(r.stderr, inputs.environment, 5, "\n");
    throw new QuiesceError("HOST_COMMAND_FAILED", `snapshot command exited with ${r.code}:\n${tail}`, { exitCode: r.code, stderr: tail });
  }
  const after = await windowStatus(target(inputs as WindowInputs), {
    windowId: inputs.windowId,
    timeouts: inputs.timeouts,
    vanishedSocket: "vm-gone",
  });
  if (after.state !== "held") {
    if (!inputs.delete) {
      throw notHeld(inputs, "after", after.state, "the snapshot it took is NOT CONSISTENT and was left on the host (no delete command): remove it.");
    }
    const d = await runOnHost(inputs, inputs.delete, inputs.environment, 3_600_000);
    throw notHeld(
      inputs,
      "after",
      after.state,
      d.code === 0
        ? "the snapshot it took was not consistent and the delete command removed it."
        : `the snapshot it took is NOT CONSISTENT, and the delete command failed (exit ${d.code}: ` +
            `${stderrTail(d.stderr, inputs.environment, 3, " | ")}): remove it by hand.`,
    );
  }
  return {
    id: `${inputs.windowId}-snap-${started}`,
    outs: { ...inputs, exitCode: 0, stdout: r.stdout, stderr: r.stderr, commandMs },
  };
}

/** delete for HostSnapshot: runs the delete command, if any. */
export async function deleteHostSnapshot(_id: Id, props: HostSnapshotOutputs): Promise<void> {
  if (!props.delete) return;
  const r = await runOnHost(props, props.delete, props.environment, 3_600_000);
  if (r.code !== 0) {
    throw new QuiesceError("HOST_COMMAND_FAILED", `snapshot delete command exited with ${r.code}: ${stderrTail(r.stderr, props.environment, 5, " | ")}`, {
      exitCode: r.code,
    });
  }
}
