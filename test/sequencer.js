// Runs the tiers in order: unit, fake, conformance, then everything under test/lab.
const Sequencer = require("@jest/test-sequencer").default;
const rank = (p) => (p.includes("/test/unit/") ? 0 : p.includes("/test/fake/") ? 1 : p.includes("/test/conformance/") ? 2 : 3);
class TierSequencer extends Sequencer {
  sort(tests) {
    return [...tests].sort((a, b) => rank(a.path) - rank(b.path) || a.path.localeCompare(b.path));
  }
}
module.exports = TierSequencer;
