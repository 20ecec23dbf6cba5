import { FakeAgent } from "../fake/fakeAgent";
import { agentConformance } from "./agentConformance";

let agent: FakeAgent;
beforeAll(async () => {
  agent = await FakeAgent.start();
});
afterAll(async () => agent.stop());

agentConformance("fake agent", () => ({
  socketPath: agent.socketPath,
  bindMount: async (source, target) => {
    const fs = agent.filesystems.find((f) => f.mountpoint === source);
    if (!fs) throw new Error(`the fake guest has no ${source}`);
    const bound = { ...fs, mountpoint: target };
    agent.filesystems.push(bound);
    return async () => {
      agent.filesystems.splice(agent.filesystems.indexOf(bound), 1);
    };
  },
}));
