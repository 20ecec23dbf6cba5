import { FakeAgent } from "../fake/fakeAgent";
import { agentConformance } from "./agentConformance";

let agent: FakeAgent;
beforeAll(async () => {
  agent = await FakeAgent.start();
});
afterAll(async () => agent.stop());

agentConformance("fake agent", () => ({ socketPath: agent.socketPath }));
