/**
 * HostSnapshot's ResourceProvider logic: a command run on the hypervisor host while a window is held, failing
 * unless the window was held throughout. Commands go through provider/transport/hostCommand: the environment
 * never reaches a command line, and a command never outlives its channel.
 */
import { QuiesceError } from "../errors";
import type { SshConnectionConfig } from "../transport/ssh";
import { runHostCommand, type HostCommand } from "../transport/hostCommand";
import type { ExecResult } from "../transport/ssh";
import { leaseHeld, windowStatus, type Consistency, type Timeouts } from "../quiesce/lifecycle";
import { validateHostSnapshotInputs, type InputFailure } from "../quiesce/validate";
import { ruleMethods, type ResourceRules } from "./rules";
import { target } from "./shared";
import { memberConnection, memberRefs, type GroupMemberInputs } from "./group";
import type { AgentTarget } from "../quiesce/lifecycle";

/** Provider id. */
type Id = string;


/** HostSnapshot inputs. */
export interface HostSnapshotInputs {
  /** The window it snapshots in; absent for a group's snapshot. */
  readonly windowId?: string;
  /** A group's snapshot (in place of windowId): the group, its members (inputs), their windows (outputs). */
  readonly groupId?: string;
  readonly groupMembers?: GroupMemberInputs[];
  readonly groupWindows?: { name: string; windowId: string }[];
  /** For a group: the member on whose host the commands run. */
  readonly member?: string;
  readonly connection?: SshConnectionConfig;
  /** The window's agent socket; absent for a window on a libvirt domain. */
  readonly socketPath?: string;
  /** The window's libvirt domain, when it has one. */
  readonly domain?: string;
  readonly libvirtUri?: string;
  readonly leaseDir?: string;
  /** Shell command run on the host while the window is held. */
  readonly create: string;
  /** Shell command run on the host when the resource is deleted (no window needed). */
  readonly delete?: string;
  /** Environment variables for the commands (values are quoted; names must be identifiers). */
  readonly environment?: Record<string, string>;
  readonly timeouts?: Timeouts;
  /** The window's consistency: in a `crash` window (nothing frozen) the command runs without the held checks. */
  readonly windowConsistency?: Consistency;
}

/** HostSnapshot outputs. */
export interface HostSnapshotOutputs extends HostSnapshotInputs {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
  /** Milliseconds the create command ran. */
  readonly commandMs: number;
  /** What the snapshot is: `filesystem`-consistent (taken while frozen, held throughout), or only `crash`-consistent. */
  readonly consistency: Consistency;
}

/** Bytes of stdout/stderr kept in outputs. */
export const HOST_OUTPUT_LIMIT = 16_384;

/**
 * HostSnapshot's keys under the one rule: another window, another create command or another environment is a
 * new snapshot; the delete command, the connection and the timeouts update (a removed delete command is gone).
 */
export const HOST_SNAPSHOT_RULES: ResourceRules = {
  replaces: ["windowId", "groupId", "member", "create", "environment"],
  defaults: {},
  outputs: ["exitCode", "stdout", "stderr", "commandMs", "consistency"],
};

const hostSnapshotMethods = ruleMethods<HostSnapshotInputs, HostSnapshotOutputs>(HOST_SNAPSHOT_RULES);
/** diff for HostSnapshot. */
export const diffHostSnapshot = hostSnapshotMethods.diff;
/** update for HostSnapshot: nothing runs; the state takes the new inputs and keeps the snapshot's outputs. */
export const updateHostSnapshot = hostSnapshotMethods.update;

/** check for HostSnapshot. */
export async function checkHostSnapshot(_olds: unknown, news: HostSnapshotInputs): Promise<{ inputs: HostSnapshotInputs; failures: InputFailure[] }> {
  return { inputs: news, failures: validateHostSnapshotInputs(news as unknown as Record<string, unknown>) };
}



/** Runs one of the resource's commands on the window's host (over SSH, or locally). */
export function runOnHost(
  inputs: { connection?: SshConnectionConfig },
  command: string,
  environment: Record<string, string> | undefined,
  purpose: string,
  options: Pick<HostCommand, "timeoutMs" | "signal" | "killAfterSeconds"> = {},
): Promise<ExecResult> {
  return runHostCommand(inputs.connection, { script: command, environment, maxOutputBytes: HOST_OUTPUT_LIMIT, purpose, ...options });
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

function notHeld(inputs: HostSnapshotInputs, when: string, state: string, consequence: string, member?: string): QuiesceError {
  const what = inputs.groupId ? `group ${inputs.groupId}: member ${member ?? "?"}'s window` : `window ${inputs.windowId}`;
  return new QuiesceError(
    "NOT_HELD",
    `${what} is not held ${when} the snapshot command (state: ${state}); ${consequence} ` +
      "Raise maxDurationSeconds or check who thawed the guest.",
    { windowId: inputs.windowId, groupId: inputs.groupId, member, state },
  );
}

/** The windows that must hold throughout: the window's, or every member's of a group. */
function holds(inputs: HostSnapshotInputs): { name?: string; target: AgentTarget; windowId: string }[] {
  if (inputs.groupId) return memberRefs(inputs.groupMembers ?? [], inputs.groupWindows ?? []);
  return [{ target: target(inputs), windowId: inputs.windowId as string }];
}

/** Where the commands run: the window's host, or the named member's of a group. */
function hostOf(inputs: HostSnapshotInputs): { connection?: SshConnectionConfig } {
  if (!inputs.groupId) return inputs;
  if (!inputs.member) throw new QuiesceError("INVALID_INPUT", "a group's HostSnapshot needs member: the member on whose host its commands run", { field: "member" });
  return { connection: memberConnection(inputs.groupMembers ?? [], inputs.member) };
}

/** Runs the create command; a non-zero exit fails with the last lines of its stderr (secrets masked). */
async function runCreate(
  inputs: HostSnapshotInputs,
  options: { killAfterSeconds?: number; checkedAfter?: boolean } = {},
): Promise<{ r: ExecResult; started: number; commandMs: number }> {
  const started = Date.now();
  const r = await runOnHost(hostOf(inputs), inputs.create, inputs.environment, "snapshot command", { killAfterSeconds: options.killAfterSeconds });
  const commandMs = Date.now() - started;
  // Killed by a signal (the host's kill at the lease end): the check after the command decides, and removes
  // whatever the command had made by then.
  if (r.code !== 0 && !(r.code === null && options.checkedAfter)) throw commandFailed(inputs, r);
  return { r, started, commandMs };
}

function commandFailed(inputs: HostSnapshotInputs, r: ExecResult): QuiesceError {
  const tail = stderrTail(r.stderr, inputs.environment, 5, "\n");
  return new QuiesceError("HOST_COMMAND_FAILED", `snapshot command exited with ${r.code}:\n${tail}`, { exitCode: r.code, stderr: tail });
}

/**
 * create for HostSnapshot: window held → command → window still held.
 *
 * Before the command the host daemon's record is checked (no agent round trip: frozen time is what users feel);
 * after it the agent itself, through the connection the daemon holds, must say frozen with the record still this
 * window's, which is what proves the snapshot consistent. If that fails, the snapshot just taken is not consistent: the delete command (if
 * any) removes it, so it neither lands in state nor stays on the host unseen.
 */
export async function createHostSnapshot(inputs: HostSnapshotInputs): Promise<{ id: Id; outs: HostSnapshotOutputs }> {
  if (inputs.windowConsistency === "crash") {
    // The window froze nothing (onQuiesceFailure: crash-consistent): there is no hold to check, and the
    // snapshot says what it is.
    const { r, started, commandMs } = await runCreate(inputs);
    return { id: `${inputs.windowId ?? inputs.groupId}-snap-${started}`, outs: { ...inputs, exitCode: 0, stdout: r.stdout, stderr: r.stderr, commandMs, consistency: "crash" } };
  }
  const windows = holds(inputs);
  const befores = await Promise.all(windows.map((w) => leaseHeld(w.target, w.windowId)));
  const notBefore = befores.findIndex((b) => b.state !== "held");
  if (notBefore >= 0) {
    throw notHeld(
      inputs,
      "before",
      befores[notBefore].state,
      "nothing was run. A snapshot needs a window frozen in the same deployment: if only the snapshot is being " +
        "replaced or retried, replace its window too (put the snapshot's changing inputs in the window's `triggers`, " +
        "or `pulumi up --replace` the window).",
      windows[notBefore].name,
    );
  }
  // The host kills the command at the (earliest) lease's end by itself: a client cut off by a network partition
  // can end nothing, and a snapshot finished after the deadline would be taken of a thawed guest.
  const ends = befores.flatMap((b) => (b.lease ? [Date.parse(b.lease.expiresAt)] : []));
  const leaseLeftSeconds = ends.length ? (Math.min(...ends) - Date.now()) / 1000 + 1 : undefined;
  const { r, started, commandMs } = await runCreate(inputs, { killAfterSeconds: leaseLeftSeconds, checkedAfter: true });
  const afters = await Promise.all(windows.map((w) => windowStatus(w.target, { windowId: w.windowId, timeouts: inputs.timeouts, vanishedSocket: "vm-gone" })));
  const notAfter = afters.findIndex((a) => a.state !== "held");
  if (notAfter >= 0) {
    const after = afters[notAfter];
    const member = windows[notAfter].name;
    if (!inputs.delete) {
      throw notHeld(inputs, "after", after.state, "the snapshot it took is NOT CONSISTENT and was left on the host (no delete command): remove it.", member);
    }
    const d = await runOnHost(hostOf(inputs), inputs.delete, inputs.environment, "snapshot delete command");
    throw notHeld(
      inputs,
      "after",
      after.state,
      d.code === 0
        ? "the snapshot it took was not consistent and the delete command removed it."
        : `the snapshot it took is NOT CONSISTENT, and the delete command failed (exit ${d.code}: ` +
            `${stderrTail(d.stderr, inputs.environment, 3, " | ")}): remove it by hand.`,
      member,
    );
  }
  // Killed by a signal while the window still held: not a snapshot to keep.
  if (r.code !== 0) throw commandFailed(inputs, r);
  return {
    id: `${inputs.windowId ?? inputs.groupId}-snap-${started}`,
    outs: { ...inputs, exitCode: 0, stdout: r.stdout, stderr: r.stderr, commandMs, consistency: "filesystem" },
  };
}

/** delete for HostSnapshot: runs the delete command, if any. */
export async function deleteHostSnapshot(_id: Id, props: HostSnapshotOutputs): Promise<void> {
  if (!props.delete) return;
  const r = await runOnHost(hostOf(props), props.delete, props.environment, "snapshot delete command");
  if (r.code !== 0) {
    throw new QuiesceError("HOST_COMMAND_FAILED", `snapshot delete command exited with ${r.code}: ${stderrTail(r.stderr, props.environment, 5, " | ")}`, {
      exitCode: r.code,
    });
  }
}
