/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: "node",
  transform: { "^.+\\.ts$": ["ts-jest", { tsconfig: "tsconfig.json" }] },
  testMatch: ["<rootDir>/test/**/*.test.ts"],
  // Tiers run in this order: fast unit tests, in-process fakes, then the real lab.
  testSequencer: "<rootDir>/test/sequencer.js",
  testTimeout: 60000,
};
