import * as pulumi from "@pulumi/pulumi";
import { QuiesceWindow, WindowRelease, type QuiesceWindowArgs } from "./window";

/** Arguments of {@link QuiescedSnapshot}. */
export interface QuiescedSnapshotArgs {
  /**
   * The freeze. A snapshot can only be taken inside a window frozen in the same deployment, so put every
   * input whose change should produce a new snapshot (its name, size, stamp...) in `window.triggers`: a
   * change there replaces the window, and with it the snapshots. A snapshot replaced on its own fails (NOT_HELD).
   */
  window: QuiesceWindowArgs;
  /**
   * Declares your snapshot resources. They are created after the freeze and before the release;
   * pass the given options to each (they set the parent and `dependsOn` the window).
   */
  snapshots: (window: QuiesceWindow, opts: pulumi.CustomResourceOptions) => pulumi.Resource[];
  /** Let the release succeed even if the window had ended. Default false. */
  allowExpired?: pulumi.Input<boolean>;
}

/**
 * A component: window → your snapshot resources → release, in that order.
 *
 * @example
 * ```ts
 * new QuiescedSnapshot("nightly", {
 *   window: { socketPath: "/run/vm1/qga.sock", mountpoints: ["/data"] },
 *   snapshots: (window, opts) => [new HostSnapshot("copy", { window, create: "cp --sparse=always a b" }, opts)],
 * });
 * ```
 */
export class QuiescedSnapshot extends pulumi.ComponentResource {
  /** The freeze. */
  public readonly window: QuiesceWindow;
  /** Your snapshot resources. */
  public readonly snapshots: pulumi.Resource[];
  /** The release that thaws the guest after the snapshots. */
  public readonly release: WindowRelease;

  constructor(name: string, args: QuiescedSnapshotArgs, opts?: pulumi.ComponentResourceOptions) {
    super("pulumi-quiesce:index:QuiescedSnapshot", name, {}, opts);
    this.window = new QuiesceWindow(`${name}-window`, args.window, { parent: this });
    this.snapshots = args.snapshots(this.window, { parent: this, dependsOn: [this.window] });
    this.release = new WindowRelease(
      `${name}-release`,
      { window: this.window, allowExpired: args.allowExpired },
      { parent: this, dependsOn: [this.window, ...this.snapshots] },
    );
    this.registerOutputs({ windowId: this.window.windowId, heldMs: this.release.heldMs });
  }
}
