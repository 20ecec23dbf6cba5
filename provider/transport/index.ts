/**
 * The transport seam: one way to open an agent channel for a target, whatever carries it.
 */
import { openLocalChannel } from "./local";
import { defaultSshPool, type SshConnectionConfig, type SshPool } from "./ssh";
import type { AgentDialer } from "./types";

export * from "./types";
export { openLocalChannel } from "./local";
export * from "./ssh";
export { createHostVerifier, parseHostKeyPin, fingerprintSha256 } from "./hostKey";
export { parseKnownHosts, lookupHostKey } from "./knownHosts";

/**
 * The dialer for a target: over SSH when `connection` is given, else a UNIX socket on this machine.
 * @param pool the SSH pool to use; default the process-wide {@link defaultSshPool}.
 */
export function dialerFor(connection: SshConnectionConfig | undefined, pool: SshPool = defaultSshPool): AgentDialer {
  if (!connection) return openLocalChannel;
  return (socketPath, options) => pool.openAgentChannel(connection, socketPath, options);
}
