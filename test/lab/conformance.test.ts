/** The agent conformance suite against the real qemu-ga in the lab guest (the fake runs the same suite). */
import { agentConformance } from "../conformance/agentConformance";
import { withAgentProbe } from "./lab";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: false } });

/** Runs a program in the guest (guest-exec) and fails unless it exits 0. */
async function inGuest(socketPath: string, path: string, args: string[]): Promise<void> {
  const r = await withAgentProbe(socketPath, (probe) => probe.exec(path, args));
  if (r.exitCode !== 0) throw new Error(`${path} ${args.join(" ")} exited ${r.exitCode} in the guest: ${r.stderr}`);
}

agentConformance("real qemu-ga (lab guest)", () => ({
  socketPath: lab().guest.socketPath,
  bindMount: async (source, target) => {
    const socketPath = lab().guest.socketPath;
    await inGuest(socketPath, "/bin/mkdir", ["-p", target]);
    await inGuest(socketPath, "/bin/mount", ["-o", "bind", source, target]);
    return () => inGuest(socketPath, "/bin/umount", [target]);
  },
}));
