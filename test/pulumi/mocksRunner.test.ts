/**
 * Proves the mocks runner with the throwaway counter provider (fixtures/): real programs, real serialized providers
 * executed under `pulumi.runtime.setMocks`. Runs in this file are sequential (mocks are process-global).
 */
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import * as counterBackend from "./fixtures/counter";
import { COUNTER_TYPE, Counter, makeProgramDir, ProgramDir } from "./fixtures/counterProvider";
import { findPlaintext, MockResourceError, ProgramRun, runProgram } from "./mocksRunner";

let program: ProgramDir;

beforeEach(() => {
  program = makeProgramDir();
});

afterEach(() => {
  program.cleanup();
});

/** The runner must report failures rather than throw; this makes a test fail loudly on an unexpected one. */
function expectNoErrors(run: ProgramRun): void {
  expect(run.errors.map((e) => e.message)).toEqual([]);
}

describe("runProgram", () => {
  it("runs a program file, creating dynamic resources in dependency order, and destroys them in reverse", async () => {
    const run = await runProgram(path.join(__dirname, "fixtures", "program", "index.ts"), {
      project: "harness",
      stack: "test",
      config: { stateDir: program.stateDir },
      programDir: program.dir,
    });
    expectNoErrors(run);

    expect(counterBackend.readJournal(program.stateDir)).toEqual(["create base", "create pair-first", "create pair-second", "create last"]);
    const dynamic = run.resources.filter((r) => r.dynamic);
    expect(dynamic.map((r) => r.name)).toEqual(["base", "pair-first", "pair-second", "last"]);
    for (const r of dynamic) {
      expect(r.type).toBe(COUNTER_TYPE);
      expect(counterBackend.exists(program.stateDir, r.id)).toBe(true);
      expect(r.providerText).toContain('require("pulumi-quiesce-counter-fixture")');
      // The provider ran in this process (not a separate host).
      expect(r.outputs.createdBy).toBe(process.pid);
    }

    const byName = new Map(run.resources.map((r) => [r.name, r]));
    const component = byName.get("pair");
    expect(component).toMatchObject({ dynamic: false, custom: false, type: "harness:test:Pair", id: "" });
    expect(byName.get("pair-first")).toMatchObject({
      parent: component?.urn,
      urn: "urn:pulumi:test::harness::harness:test:Pair$pulumi-nodejs:dynamic/counter:Counter::pair-first",
    });
    // Check filled the default; create got the checked inputs.
    expect(byName.get("last")?.inputs).toEqual({ stateDir: program.stateDir, label: "last" });
    expect(byName.get("last")?.checkedInputs).toEqual({ stateDir: program.stateDir, label: "last", start: 0 });
    // dependsOn on the component waits for the component's children.
    expect(byName.get("last")?.dependencies).toEqual(expect.arrayContaining([byName.get("pair-second")?.urn]));

    expect(run.outputs).toEqual({
      baseValue: 10,
      secondValue: 2,
      lastId: byName.get("last")?.id,
      summary: { base: 10, last: "last" },
    });
    expect(run.secretOutputs).toEqual([]);

    await run.destroyAll();
    expect(counterBackend.readJournal(program.stateDir).slice(4)).toEqual(["delete last", "delete pair-second", "delete pair-first", "delete base"]);
    for (const r of dynamic) {
      expect(counterBackend.exists(program.stateDir, r.id)).toBe(false);
      expect(run.resources.find((x) => x.name === r.name)?.live).toBe(false);
    }
    await run.destroyAll(); // nothing left: no more deletes
    expect(counterBackend.readJournal(program.stateDir)).toHaveLength(8);
  });

  it("refuses to run the same program file twice (jest caches the module)", async () => {
    await expect(runProgram(path.join(__dirname, "fixtures", "program", "index.ts"), { programDir: program.dir })).rejects.toThrow(
      /already run in this test file/,
    );
  });

  it("a provider error aborts the run with the provider's message; dependents are not created; created ones can be destroyed", async () => {
    const stateDir = program.stateDir;
    const run = await runProgram(
      () => {
        const first = new Counter("first", { stateDir, label: "first" });
        const broken = new Counter("broken", { stateDir, label: "broken", failOn: "create" }, { dependsOn: [first] });
        const after = new Counter("after", { stateDir, label: "after" }, { dependsOn: [broken] });
        return { afterId: after.id, firstId: first.id };
      },
      { programDir: program.dir, timeoutMs: 10_000 },
    );

    expect(run.errors).toHaveLength(1);
    const [err] = run.errors;
    expect(err).toBeInstanceOf(MockResourceError);
    expect(err.message).toContain("counter broken: create refused (failOn=create)");
    expect(err).toMatchObject({ operation: "create", resourceName: "broken" });
    expect(counterBackend.readJournal(stateDir)).toEqual(["create first"]);
    expect(run.resources.map((r) => r.name)).toEqual(["first"]);
    // Outputs that depended on the failed resource never resolved; the others did.
    expect(Object.keys(run.outputs)).toEqual(["firstId"]);

    await run.destroyAll();
    expect(counterBackend.readJournal(stateDir)).toEqual(["create first", "delete first"]);
  });

  it("check failures are reported per property", async () => {
    const stateDir = program.stateDir;
    const run = await runProgram(
      () => {
        new Counter("invalid", { stateDir, label: "" });
      },
      { programDir: program.dir },
    );
    expect(run.errors).toHaveLength(1);
    expect(run.errors[0]).toMatchObject({
      operation: "check",
      failures: [{ property: "label", reason: "label must be a non-empty string" }],
    });
    expect(run.errors[0].message).toContain("label: label must be a non-empty string");
    expect(run.resources).toEqual([]);
  });

  it("a partial failure keeps the created object so destroy deletes it", async () => {
    const stateDir = program.stateDir;
    const run = await runProgram(
      () => {
        new Counter("half", { stateDir, label: "half", failOn: "init" });
      },
      { programDir: program.dir },
    );
    expect(run.errors.map((e) => e.message)).toEqual([expect.stringContaining("counter half: created but failed to initialise")]);
    const [half] = run.resources;
    expect(half).toMatchObject({ name: "half", initFailed: true, live: true, outputs: { label: "half", value: 0 } });
    expect(counterBackend.exists(stateDir, half.id)).toBe(true);
    await run.destroyAll();
    expect(counterBackend.exists(stateDir, half.id)).toBe(false);
  });

  it("destroy stops at the first failing delete and can be retried", async () => {
    const stateDir = program.stateDir;
    const run = await runProgram(
      () => {
        const a = new Counter("a", { stateDir, label: "a" });
        new Counter("b", { stateDir, label: "b", failOn: "delete" }, { dependsOn: [a] });
      },
      { programDir: program.dir },
    );
    expectNoErrors(run);
    await expect(run.destroyAll()).rejects.toThrow(/delete of .* "b" failed: counter b: delete refused/);
    expect(run.resources.map((r) => [r.name, r.live])).toEqual([
      ["a", true],
      ["b", true],
    ]);
  });

  it("a program that throws is reported in errors", async () => {
    const run = await runProgram(
      () => {
        throw new Error("program bug");
      },
      { programDir: program.dir },
    );
    expect(run.errors.map((e) => e.message)).toEqual(["program bug"]);
  });

  it("a stack output whose apply throws is reported; the other outputs resolve", async () => {
    const run = await runProgram(
      () => ({
        ok: pulumi.output(1),
        broken: pulumi.output(1).apply((): number => {
          throw new Error("apply bug");
        }),
      }),
      { programDir: program.dir },
    );
    expect(run.errors.map((e) => e.message)).toEqual(["apply bug"]);
    expect(run.outputs).toEqual({ ok: 1 });
  });
});

describe("secrets under mocks", () => {
  it("marks outputs secret as the engine does, and finds plaintext leaks", async () => {
    const stateDir = program.stateDir;
    const token = "hunter2-very-secret";
    let counter: Counter | undefined;
    const run = await runProgram(
      () => {
        counter = new Counter("s", { stateDir, label: "s", token: pulumi.secret(token) }, { additionalSecretOutputs: ["label"] });
        return { token: counter.token, tokenLength: counter.tokenLength, leaked: counter.token.apply((t) => `copy:${t}`) };
      },
      { programDir: program.dir },
    );
    expectNoErrors(run);
    const [s] = run.resources;
    // The provider received plain values (the host does not accept secrets).
    expect(s.checkedInputs?.token).toBe(token);
    expect(s.secretInputPaths).toEqual(["token"]);
    // Same-named output is secret; a derived one (tokenLength) is not; additionalSecretOutputs is applied.
    expect([...s.secretOutputPaths].sort()).toEqual(["label", "token"]);
    expect(s.providerTextIsSecret).toBe(false);
    expect(s.providerText).not.toContain(token);

    // The SDK sees the marks: Output secretness in the program.
    expect(counter).toBeDefined();
    await expect(pulumi.isSecret(counter!.token)).resolves.toBe(true);
    await expect(pulumi.isSecret(counter!.label)).resolves.toBe(true);
    await expect(pulumi.isSecret(counter!.tokenLength)).resolves.toBe(false);
    expect([...run.secretOutputs].sort()).toEqual(["leaked", "token"]);

    // An apply on a secret stays secret, so nothing leaks here.
    expect(findPlaintext(run, token)).toEqual([]);
    await run.destroyAll();
  });

  it("a secret captured in the provider closure is plaintext inside __provider, which is then secret", async () => {
    const token = "captured-secret-value";
    const captured = pulumi.secret(token);
    const leakyProvider = {
      async create(): Promise<pulumi.dynamic.CreateResult> {
        return { id: "leaky", outs: { fromClosure: captured.get() } };
      },
    };
    class Leaky extends pulumi.dynamic.Resource {
      constructor(name: string) {
        super(leakyProvider, name, { fromClosure: undefined });
      }
    }
    const run = await runProgram(
      () => {
        new Leaky("leaky");
      },
      { programDir: program.dir },
    );
    expectNoErrors(run);
    const [leaky] = run.resources;
    expect(leaky.providerText).toContain(token);
    expect(leaky.providerTextIsSecret).toBe(true);
    // The engine marks the stored __provider secret (same-named input was secret), but nothing else.
    expect(leaky.secretOutputPaths).toEqual(["__provider"]);
    // The output computed from the captured secret is NOT secret: a real leak, which findPlaintext reports.
    expect(findPlaintext(run, token)).toEqual(['resource "leaky" output fromClosure']);
  });
});
