/** Test helper: the guest agent's freeze status, read directly from the agent socket on this machine. */
import { fsfreezeStatus } from "../../provider/agent/commands";
import { openSession } from "../../provider/quiesce/lifecycle";

export async function agentStatusAt(socketPath: string): Promise<string> {
  const s = await openSession({ socketPath }, undefined);
  try {
    return await fsfreezeStatus(s);
  } finally {
    s.close();
  }
}
