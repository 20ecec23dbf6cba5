// Runs the tiers in order: unit, in-process fakes, conformance (fake), Pulumi engine stand-ins, then the lab.
const Sequencer = require("@jest/test-sequencer").default;
const TIERS = ["/test/unit/", "/test/fake/", "/test/conformance/", "/test/pulumi/", "/test/lab/"];
const rank = (p) => {
  const i = TIERS.findIndex((t) => p.includes(t));
  return i < 0 ? TIERS.length : i;
};
class TierSequencer extends Sequencer {
  sort(tests) {
    return [...tests].sort((a, b) => rank(a.path) - rank(b.path) || a.path.localeCompare(b.path));
  }
}
module.exports = TierSequencer;
