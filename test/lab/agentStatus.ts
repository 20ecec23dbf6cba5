/**
 * Test helper: the guest agent's freeze status. With the window's lease directory it asks the host daemon, which
 * holds the guest's only agent connection during a window (a direct connection would wait its turn until the
 * window ends); without one it reads the agent socket on this machine directly.
 */
import { fsfreezeStatus } from "../../provider/agent/commands";
import { openSession, windowStatus } from "../../provider/quiesce/lifecycle";

export async function agentStatusAt(socketPath: string, leaseDir?: string): Promise<string> {
  if (leaseDir) return (await windowStatus({ socketPath, leaseDir })).agentStatus;
  const s = await openSession({ socketPath }, undefined);
  try {
    return await fsfreezeStatus(s);
  } finally {
    s.close();
  }
}
