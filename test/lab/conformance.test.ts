/** The agent conformance suite against the real qemu-ga in the lab guest (the fake runs the same suite). */
import { agentConformance } from "../conformance/agentConformance";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: false } });

agentConformance("real qemu-ga (lab guest)", () => ({ socketPath: lab().guest.socketPath }));
