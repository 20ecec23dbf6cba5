/**
 * The home of all provider logic: one object per resource with the whole dynamic-provider contract (check,
 * diff, create, read, update, delete), under the one diff/update rule of ./rules.ts. The serialized providers
 * in sdk/ only `require("pulumi-quiesce/provider/dynamic/index")` and forward to these, so `__provider` stays
 * small, captures nothing stateful and holds no secret (AGENT-FACTS.md, "Pulumi dynamic providers").
 */
import type * as pulumi from "@pulumi/pulumi";
import { checkWindow, createWindowResource, deleteWindow, diffWindow, readWindow, updateWindow } from "./window";
import { checkRelease, createRelease, deleteRelease, diffRelease, updateRelease } from "./release";
import { checkHostSnapshot, createHostSnapshot, deleteHostSnapshot, diffHostSnapshot, updateHostSnapshot } from "./hostSnapshot";
import { checkGroup, createGroupResource, deleteGroup, diffGroup, readGroup, updateGroup } from "./group";

/** The resources this package provides, by the name the SDK forwards with. */
export type ResourceKind = "window" | "release" | "hostSnapshot" | "group";

/** QuiesceWindow, WindowRelease, HostSnapshot and QuiesceGroup, as dynamic providers. */
export const providers: Readonly<Record<ResourceKind, pulumi.dynamic.ResourceProvider>> = {
  window: { check: checkWindow, diff: diffWindow, create: createWindowResource, read: readWindow, update: updateWindow, delete: deleteWindow },
  // A release's read keeps its state: it records a past event, which a refresh cannot re-observe.
  release: { check: checkRelease, diff: diffRelease, create: createRelease, update: updateRelease, delete: deleteRelease },
  hostSnapshot: { check: checkHostSnapshot, diff: diffHostSnapshot, create: createHostSnapshot, update: updateHostSnapshot, delete: deleteHostSnapshot },
  group: { check: checkGroup, diff: diffGroup, create: createGroupResource, read: readGroup, update: updateGroup, delete: deleteGroup },
};

export type { WindowInputs, WindowOutputs, FilesystemSummary } from "./window";
export type { ReleaseInputs, ReleaseOutputs } from "./release";
export type { HostSnapshotInputs, HostSnapshotOutputs } from "./hostSnapshot";
export type { GroupInputs, GroupOutputs, GroupMemberInputs, GroupWindow } from "./group";
