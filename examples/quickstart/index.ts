/**
 * Quickstart: freeze /data of a guest, copy its data disk image on the host while frozen, then thaw.
 *
 * Config (pulumi config set ...):
 *   socketPath      absolute path of the guest agent socket on the host            (required)
 *   diskImage       the guest's /data disk image on the host                        (required)
 *   snapshotPath    where the copy goes on the host                                 (required)
 *   host, port, user, knownHostsPath   SSH to the host; omit host when the socket is on this machine
 *   privateKey      SSH private key text (set it with --secret)
 *   maxDurationSeconds   lease length (default 60)
 */
import * as pulumi from "@pulumi/pulumi";
import { HostSnapshot, QuiesceWindow, WindowRelease, type Connection } from "pulumi-quiesce";

const cfg = new pulumi.Config();
const host = cfg.get("host");
const connection: Connection | undefined = host
  ? {
      host,
      port: cfg.getNumber("port"),
      user: cfg.get("user"),
      privateKey: cfg.getSecret("privateKey"),
      knownHostsPath: cfg.get("knownHostsPath"),
    }
  : undefined;

const window = new QuiesceWindow("data", {
  connection,
  socketPath: cfg.require("socketPath"),
  mountpoints: ["/data"],
  maxDurationSeconds: cfg.getNumber("maxDurationSeconds") ?? 60,
});

// Paths travel as environment variables, quoted by the provider: never spliced into the command.
const copy = new HostSnapshot(
  "data-copy",
  {
    window,
    environment: { IMAGE: cfg.require("diskImage"), SNAPSHOT: cfg.require("snapshotPath") },
    create: 'cp --sparse=always "$IMAGE" "$SNAPSHOT"',
    delete: 'rm -f "$SNAPSHOT"',
  },
  { dependsOn: window },
);

const release = new WindowRelease("data-release", { window }, { dependsOn: copy });

export const windowId = window.windowId;
export const frozenMountpoints = window.frozenMountpoints;
export const heldMs = release.heldMs;
export const freezeMs = window.freezeMs;
export const copyMs = copy.commandMs;
