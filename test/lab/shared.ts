/**
 * Jest glue for lab tests: one lab per test file.
 *
 * If the lab cannot start, `beforeAll` throws and jest fails every test of the file; lab tests never skip.
 */
import { Lab, StartLabOptions, startLab } from "./lab";

/** Budget for building (first run downloads the kernel) and booting, in milliseconds. */
export const LAB_START_TIMEOUT_MS = 600_000;

/**
 * Starts a lab (guest with the write load, plus sshd) in `beforeAll` and stops it in `afterAll`.
 * Returns an accessor to call inside tests.
 *
 * @example
 * const lab = useLab();
 * test("pings", async () => {
 *   await withAgentProbe(lab().guest.socketPath, (agent) => agent.execute("guest-ping"));
 * });
 */
export function useLab(options: StartLabOptions = {}): () => Lab {
  let lab: Lab | undefined;
  beforeAll(async () => {
    lab = await startLab({ ...options, guest: { load: true, ...options.guest } });
  }, LAB_START_TIMEOUT_MS);
  afterAll(async () => {
    await lab?.stop();
  }, 60_000);
  return () => {
    if (!lab) throw new Error("the lab is not running: see the beforeAll failure above");
    return lab;
  };
}
