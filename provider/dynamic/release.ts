/**
 * WindowRelease's ResourceProvider logic: create thaws the window under the ownership rule and fails loudly if
 * the window was no longer held; there is nothing to undo on delete.
 */
import { QuiesceError } from "../errors";
import type { SshConnectionConfig } from "../transport/ssh";
import { releaseWindow, type Consistency, type Timeouts } from "../quiesce/lifecycle";
import { validateReleaseInputs, type InputFailure } from "../quiesce/validate";
import { ruleMethods, type ResourceRules } from "./rules";
import { describeOutcome, note, target } from "./shared";
import { releaseGroup } from "../quiesce/group";
import { memberRefs, type GroupMemberInputs } from "./group";

/** Provider id. */
type Id = string;

/** WindowRelease inputs. */
export interface ReleaseInputs {
  /** The window released; absent for a group's release. */
  readonly windowId?: string;
  /** A group's release (in place of windowId): the group, its members (inputs) and their windows (outputs). */
  readonly groupId?: string;
  readonly groupMembers?: GroupMemberInputs[];
  readonly groupWindows?: { name: string; windowId: string }[];
  readonly connection?: SshConnectionConfig;
  /** The window's agent socket; absent for a window on a libvirt domain. */
  readonly socketPath?: string;
  /** The window's libvirt domain, when it has one. */
  readonly domain?: string;
  readonly libvirtUri?: string;
  readonly leaseDir?: string;
  readonly timeouts?: Timeouts;
  /** The window's consistency: a `crash` window froze nothing, so there is nothing to release. */
  readonly consistency?: Consistency;
  /** Succeed even when the window was no longer held when release ran. Default false. */
  readonly allowExpired?: boolean;
}

/** WindowRelease outputs. */
export interface ReleaseOutputs extends ReleaseInputs {
  /** How long the freeze was held, in ms (for a group: its shortest-held member's). */
  readonly heldMs: number;
  readonly releasedAt: string;
  /** `released`, or what the release found instead (for a group: `released` only if every member was). */
  readonly outcome: string;
  /** A group's release: each member's outcome and heldMs. */
  readonly memberOutcomes?: { name: string; outcome: string; heldMs: number }[];
}

/**
 * WindowRelease's keys under the one rule: only another window replaces it (a new release to run). Everything
 * else updates, `allowExpired` included: it governs the next release, and replacing would re-run a release
 * against a window released long ago, which then fails.
 */
export const RELEASE_RULES: ResourceRules = {
  replaces: ["windowId", "groupId"],
  defaults: { allowExpired: false },
  outputs: ["heldMs", "releasedAt", "outcome", "memberOutcomes"],
};

const releaseMethods = ruleMethods<ReleaseInputs, ReleaseOutputs>(RELEASE_RULES);
/** diff for WindowRelease. */
export const diffRelease = releaseMethods.diff;
/** update for WindowRelease: nothing to do on the host; the state takes the new inputs. */
export const updateRelease = releaseMethods.update;

/** check for WindowRelease. */
export async function checkRelease(_olds: unknown, news: ReleaseInputs): Promise<{ inputs: ReleaseInputs; failures: InputFailure[] }> {
  return { inputs: news, failures: validateReleaseInputs(news as unknown as Record<string, unknown>) };
}



/** create for WindowRelease: thaws under the ownership rule; fails if the window was no longer held. */
export async function createRelease(inputs: ReleaseInputs): Promise<{ id: Id; outs: ReleaseOutputs }> {
  if (inputs.groupId) return releaseGroupResource(inputs, inputs.groupId);
  if (inputs.consistency === "crash") {
    // Nothing was frozen, so nothing is thawed: touching the guest could only thaw someone else's freeze.
    return { id: `${inputs.windowId}-release`, outs: { ...inputs, heldMs: 0, releasedAt: new Date().toISOString(), outcome: "crash-consistent" } };
  }
  const r = await releaseWindow({
    target: target(inputs),
    windowId: inputs.windowId as string,
    timeouts: inputs.timeouts,
    vanishedSocket: "vm-gone",
  });
  if (r.outcome !== "released" && !inputs.allowExpired) {
    throw new QuiesceError(
      r.writesResumed ? "VSS_WRITES_RESUMED" : r.outcome === "expired" ? "LEASE_EXPIRED" : "NOT_HELD",
      `window ${inputs.windowId} was no longer held when the release ran: ${r.writesResumed ? "the Windows guest's writes had resumed before the release (VSS holds them at most 10 s, while the agent still says frozen)" : describeOutcome(r.outcome, r.lease?.owner)}. ` +
        "SNAPSHOTS THAT DEPEND ON THIS WINDOW MAY BE INCONSISTENT. Raise maxDurationSeconds, or set allowExpired " +
        "if that is acceptable.",
      { windowId: inputs.windowId, outcome: r.outcome },
    );
  }
  if (r.thawWarning) note(`window ${inputs.windowId}: the guest was thawed, but: ${r.thawWarning}`);
  const releasedAt = new Date().toISOString();
  return {
    id: `${inputs.windowId}-release`,
    outs: { ...inputs, heldMs: r.heldMs ?? 0, releasedAt, outcome: r.outcome },
  };
}

/** delete for WindowRelease: a release has nothing to undo. */
export async function deleteRelease(): Promise<void> {
  return undefined;
}

/** A group's release: thaws every member, reports each, and fails unless every member was held throughout. */
async function releaseGroupResource(inputs: ReleaseInputs, groupId: string): Promise<{ id: Id; outs: ReleaseOutputs }> {
  const r = await releaseGroup(memberRefs(inputs.groupMembers ?? [], inputs.groupWindows ?? []), { timeouts: inputs.timeouts, vanishedSocket: "vm-gone" });
  const memberOutcomes = [
    ...r.members.map((m) => ({ name: m.name, outcome: m.outcome, heldMs: m.heldMs ?? 0 })),
    ...r.failures.map((f) => ({ name: f.member, outcome: `failed: ${f.code}`, heldMs: 0 })),
  ];
  if (r.failures.length > 0 || (!r.heldThroughout && !inputs.allowExpired)) {
    const bad = memberOutcomes.filter((m) => m.outcome !== "released");
    throw new QuiesceError(
      r.failures.length > 0 ? "GROUP_FAILED" : "GROUP_NOT_HELD",
      `group ${groupId}: ${bad.map((m) => {
        const failed = r.failures.find((f) => f.member === m.name);
        return `member ${m.name} ${failed ? `could not be released: ${failed.message}` : `was not held throughout: ${describeOutcome(m.outcome, r.members.find((x) => x.name === m.name)?.lease?.owner)}`}`;
      }).join("; ")}. SNAPSHOTS THAT DEPEND ON THIS GROUP MAY BE INCONSISTENT` +
        (r.failures.length > 0 ? " (and a member may still be frozen until its deadline)." : ". Set allowExpired if that is acceptable."),
      { groupId, members: memberOutcomes },
    );
  }
  const heldMs = Math.min(...memberOutcomes.map((m) => m.heldMs));
  return {
    id: `${groupId}-release`,
    outs: { ...inputs, heldMs, releasedAt: new Date().toISOString(), outcome: r.heldThroughout ? "released" : "expired", memberOutcomes },
  };
}
