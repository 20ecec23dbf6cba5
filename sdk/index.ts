/**
 * pulumi-quiesce: freeze VM guest filesystems through the QEMU guest agent for consistent
 * storage-native snapshots. See README.md.
 */
export { QuiesceWindow, WindowRelease, HostSnapshot, QuiesceGroup } from "./window";
export type { QuiesceWindowArgs, WindowReleaseArgs, HostSnapshotArgs, QuiesceGroupArgs, QuiesceGroupMember, QuiesceGroupWindow } from "./window";
export { QuiescedSnapshot } from "./quiescedSnapshot";
export type { QuiescedSnapshotArgs } from "./quiescedSnapshot";
export { getGuestFilesystems, getGuestFilesystemsOutput } from "./filesystems";
export type { GetGuestFilesystemsArgs, GetGuestFilesystemsOutputArgs } from "./filesystems";
export type { Connection, TimeoutsArgs, FilesystemSummary } from "./types";
