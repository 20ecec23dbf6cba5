// A window a test left held keeps its control channel to the host daemon open, and with it the test process
// (as it should a real one: the hold is what says "the freezer is alive"). After each test file, drop them: the
// daemons then thaw those guests as for a process that went away.
import { dropAllHolds } from "../provider/host/daemon";

afterAll(() => dropAllHolds());
