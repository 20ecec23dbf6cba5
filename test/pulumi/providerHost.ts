/**
 * Test harness that drives `@pulumi/pulumi`'s real dynamic-provider host over gRPC, the way the Pulumi engine does.
 *
 * The Pulumi CLI cannot be installed on these machines (AGENT-FACTS, "Pulumi dynamic providers"), so tests stand in
 * for the engine: {@link startProviderHost} spawns `node …/@pulumi/pulumi/cmd/dynamic-provider/index.js <address>`,
 * reads the port it prints, and talks to it with the generated `pulumirpc.ResourceProvider` stubs.
 *
 * What the engine does, and so what this harness does (read from `cmd/dynamic-provider/index.js` and
 * `dynamic/index.js` of @pulumi/pulumi 3.270):
 * - The serialized provider travels *inside the resource's properties* under {@link PROVIDER_KEY} (`__provider`).
 *   The host `require`s that text (require-from-string, filename `""`, so modules resolve from the host's cwd: the
 *   program directory) and caches the result per distinct text for the life of the process. Check and Diff use the
 *   text from `news`, falling back to `olds` when the new one is {@link UNKNOWN}; Create, Read, Update and Delete use
 *   the text in the properties they are given. So `olds`/`props` passed to Delete must carry the old `__provider`.
 * - Check's `olds` is `{}` for a resource that does not exist yet. The inputs Check returns are what Create/Update get.
 * - Diff and Update get the old *outputs* as `olds` (plus `oldInputs`); Delete and Read get the old outputs.
 * - The host answers Configure with `acceptSecrets: false` and `supportsPreview: false`. The engine therefore strips
 *   secret markers before every call (pass plain values here) and never calls Create/Update during preview.
 *   The host itself ignores the `preview` flag: sending `preview: true` really runs the provider's create.
 * - Unknown values (preview only) are the sentinel string {@link UNKNOWN} on the wire.
 * - `undefined` never reaches the wire: the SDK drops undefined properties, so this harness omits them too.
 *   (A provider that *returns* `undefined` in its outputs makes the host fail with "Unexpected struct type.")
 *
 * @packageDocumentation
 */
import { ChildProcess, spawn } from "child_process";
import * as grpc from "@grpc/grpc-js";
import * as pulumi from "@pulumi/pulumi";
import * as provrpc from "@pulumi/pulumi/proto/provider_grpc_pb";
import * as provproto from "@pulumi/pulumi/proto/provider_pb";
import * as statusproto from "@pulumi/pulumi/proto/status_pb";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";
import { Struct } from "google-protobuf/google/protobuf/struct_pb";

/** The property under which the engine passes the serialized dynamic provider (`dynamic/index.js`). */
export const PROVIDER_KEY = "__provider";

/** The engine's wire encoding of an unknown (computed, preview-time) value (`runtime/rpc.js` `unknownValue`). */
export const UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

/** Plain-JS property bag, as converted to and from a `google.protobuf.Struct`. */
export type PropertyMap = Record<string, unknown>;

/** Options for {@link startProviderHost}. */
export interface ProviderHostOptions {
  /**
   * Working directory of the host process. The engine starts the host in the program's directory, and the host
   * resolves every `require()` inside `__provider` from here. Default: `process.cwd()`.
   */
  readonly cwd?: string;
  /** Project name given to the host as `PULUMI_NODEJS_PROJECT`/`PULUMI_PROJECT`. Default: `"project"`. */
  readonly project?: string;
  /** Stack name given to the host as `PULUMI_NODEJS_STACK`/`PULUMI_STACK`. Default: `"stack"`. */
  readonly stack?: string;
  /** Extra environment variables for the host process (merged over `process.env`). */
  readonly env?: Readonly<Record<string, string>>;
  /** Milliseconds to wait for the host to print its port. Default: 15000. */
  readonly startTimeoutMs?: number;
  /** Deadline in milliseconds for each gRPC call. Default: 15000. */
  readonly callTimeoutMs?: number;
  /** Milliseconds to wait for the host to exit after SIGTERM before sending SIGKILL. Default: 5000. */
  readonly stopTimeoutMs?: number;
}

/** What the host answered to Configure. */
export interface ConfigureResult {
  /** Always false for the Node.js dynamic provider host: the engine strips secrets before calling it. */
  readonly acceptSecrets: boolean;
  /** Always false for the Node.js dynamic provider host: the engine skips Create/Update in preview. */
  readonly supportsPreview: boolean;
  readonly acceptResources: boolean;
  readonly acceptOutputs: boolean;
}

/** One validation failure reported by the provider's `check`. */
export interface CheckFailure {
  readonly property: string;
  readonly reason: string;
}

/** Result of Check. The engine fails the step when `failures` is non-empty; this harness returns them instead. */
export interface CheckResult {
  /** Inputs to use for Create/Update. Always include `__provider` (the host copies the new one in). */
  readonly inputs: PropertyMap;
  readonly failures: readonly CheckFailure[];
}

/**
 * Whether Diff found changes. `"unknown"` is what the host returns when the provider has no `diff`; the engine then
 * compares old and new inputs itself.
 */
export type DiffChanges = "some" | "none" | "unknown";

/** Result of Diff. A non-empty `replaces` means the engine replaces the resource instead of updating it. */
export interface DiffResult {
  readonly changes: DiffChanges;
  readonly replaces: readonly string[];
  readonly deleteBeforeReplace: boolean;
}

/** Result of Create. `properties` are the outputs, including `__provider`. */
export interface CreateResult {
  readonly id: string;
  readonly properties: PropertyMap;
}

/** Result of Read. `inputs` is present only when the provider's `read` returned inputs. */
export interface ReadResult {
  readonly id: string;
  readonly properties: PropertyMap;
  readonly inputs?: PropertyMap;
}

/** Result of Update. `properties` are the new outputs, including `__provider`. */
export interface UpdateResult {
  readonly properties: PropertyMap;
}

/** Options for {@link ProviderHost.create}. */
export interface CreateOptions {
  /**
   * Sent as `CreateRequest.preview`. The host ignores it and really creates; the engine never sends it because
   * the host reports `supportsPreview: false`. Exposed to prove exactly that.
   */
  readonly preview?: boolean;
  /** Sent as `CreateRequest.timeout`, in seconds (the resource's customTimeouts.create). Default: 0 (none). */
  readonly timeoutSeconds?: number;
}

/** Options for {@link ProviderHost.diff}. */
export interface DiffOptions {
  /** The old inputs, which the engine also sends (`DiffRequest.oldInputs`). The host ignores them. */
  readonly oldInputs?: PropertyMap;
  /** Property paths from the resource's `ignoreChanges` option. */
  readonly ignoreChanges?: readonly string[];
}

/** Options for {@link ProviderHost.update}. */
export interface UpdateOptions extends DiffOptions {
  /** Sent as `UpdateRequest.preview`; see {@link CreateOptions.preview}. */
  readonly preview?: boolean;
  /** Sent as `UpdateRequest.timeout`, in seconds. Default: 0 (none). */
  readonly timeoutSeconds?: number;
}

/** Options for {@link ProviderHost.read}. */
export interface ReadOptions {
  /** The resource's last inputs (`ReadRequest.inputs`); the host uses them only when `props` is empty. */
  readonly inputs?: PropertyMap;
}

/** Options for {@link ProviderHost.delete}. */
export interface DeleteOptions {
  /** The old inputs (`DeleteRequest.oldInputs`). The host ignores them. */
  readonly oldInputs?: PropertyMap;
  /** Sent as `DeleteRequest.timeout`, in seconds. Default: 0 (none). */
  readonly timeoutSeconds?: number;
}

/** Details of a partial failure: the provider threw an error carrying an `id` (`pulumirpc.ErrorResourceInitFailed`). */
export interface ResourceInitFailure {
  /** The id of the resource that was created although the operation failed. */
  readonly id: string;
  readonly properties: PropertyMap;
  readonly reasons: readonly string[];
}

/**
 * A gRPC call to the provider host failed. `message` contains the provider's own error message (the gRPC status
 * details), prefixed with the method name.
 */
export class ProviderHostError extends Error {
  /** Stable error code for this harness. */
  readonly code = "PROVIDER_HOST_CALL_FAILED";
  /** The gRPC method that failed, e.g. `"Create"`. */
  readonly method: string;
  /** The gRPC status code (2 = UNKNOWN for a provider error, 4 = DEADLINE_EXCEEDED, 14 = UNAVAILABLE, …). */
  readonly grpcCode: number;
  /** The gRPC status details: for a provider error, exactly the message the provider threw. */
  readonly details: string;
  /** Present when the host reported a partial failure (the resource exists; Pulumi would record it as failed). */
  readonly initFailure?: ResourceInitFailure;

  /** @param method gRPC method name. @param grpcCode status code. @param details status details. */
  constructor(method: string, grpcCode: number, details: string, initFailure?: ResourceInitFailure, cause?: unknown) {
    super(`${method} failed (gRPC ${grpc.status[grpcCode] ?? grpcCode}): ${details}`, { cause });
    this.name = "ProviderHostError";
    this.method = method;
    this.grpcCode = grpcCode;
    this.details = details;
    this.initFailure = initFailure;
  }
}

/** A running dynamic-provider host and a typed client for it. Create with {@link startProviderHost}. */
export interface ProviderHost {
  /** PID of the host process. */
  readonly pid: number;
  /** The TCP port on 127.0.0.1 that the host printed. */
  readonly port: number;
  /** Everything the host wrote to stderr so far (it logs provider errors with stacks there). Capped at 64 KiB. */
  stderr(): string;
  /**
   * Configure, as the engine sends it: `config` is the whole stack config with namespaced keys
   * (`"project:key"`), which the provider's `configure` sees as `req.config`. The host configures a provider
   * once, when it first loads its `__provider` text, so call this before anything else.
   */
  configure(config?: PropertyMap): Promise<ConfigureResult>;
  /** Check. `olds` is `{}` for a new resource. `news` must contain `__provider` (or {@link UNKNOWN}, with `olds` holding it). */
  check(urn: string, olds: PropertyMap, news: PropertyMap): Promise<CheckResult>;
  /** Diff. `olds` are the old outputs (with their `__provider`), `news` the checked new inputs. */
  diff(id: string, urn: string, olds: PropertyMap, news: PropertyMap, options?: DiffOptions): Promise<DiffResult>;
  /** Create from checked inputs (which include `__provider`). */
  create(urn: string, props: PropertyMap, options?: CreateOptions): Promise<CreateResult>;
  /** Read (refresh). `props` are the current outputs, with `__provider`. */
  read(id: string, urn: string, props: PropertyMap, options?: ReadOptions): Promise<ReadResult>;
  /** Update. `olds` are the old outputs, `news` the checked new inputs (the host loads the provider from `news`). */
  update(id: string, urn: string, olds: PropertyMap, news: PropertyMap, options?: UpdateOptions): Promise<UpdateResult>;
  /** Delete. `props` are the old outputs, with the `__provider` the resource was created with. */
  delete(id: string, urn: string, props: PropertyMap, options?: DeleteOptions): Promise<void>;
  /** Closes the client and kills the host by PID (SIGTERM, then SIGKILL after `stopTimeoutMs`). Idempotent. */
  stop(): Promise<void>;
}

/**
 * Serializes a dynamic provider exactly as `pulumi.dynamic.Resource` does for `__provider`
 * (`dynamic/index.js`: `serializeFunction(() => provider, { allowSecrets: true })`).
 *
 * The text is a CommonJS module whose `exports.handler()` returns the provider. Follow AGENT-FACTS: capture nothing
 * stateful, and `require()` packages by name inside the methods; that `require` resolves from the loader's
 * directory, not from the file that defined the provider.
 *
 * @param provider The provider object, as passed to `pulumi.dynamic.Resource`.
 * @returns The `__provider` text.
 * @throws If the closure captures something unserializable (a live handle, a native object).
 */
export async function serializeDynamicProvider(provider: pulumi.dynamic.ResourceProvider): Promise<string> {
  const serialized = await pulumi.runtime.serializeFunction(() => provider, { allowSecrets: true });
  return serialized.text;
}

/**
 * Builds a URN the way the engine does: `urn:pulumi:<stack>::<project>::<type>::<name>` (no parent).
 *
 * @param type Resource type token, e.g. `"pulumi-nodejs:dynamic:Resource"`.
 * @param name Resource name.
 */
export function makeUrn(type: string, name: string, project = "project", stack = "stack"): string {
  return `urn:pulumi:${stack}::${project}::${type}::${name}`;
}

/**
 * Starts `@pulumi/pulumi`'s dynamic-provider host and connects to it.
 *
 * @example
 * ```ts
 * const host = await startProviderHost({ cwd: programDir });
 * try {
 *   await host.configure();
 *   const __provider = await serializeDynamicProvider(myProvider);
 *   const { inputs } = await host.check(urn, {}, { ...args, __provider });
 *   const { id, properties } = await host.create(urn, inputs);
 * } finally {
 *   await host.stop();
 * }
 * ```
 * @throws If the host exits or prints no port within `startTimeoutMs`.
 */
export async function startProviderHost(options: ProviderHostOptions = {}): Promise<ProviderHost> {
  const cwd = options.cwd ?? process.cwd();
  const project = options.project ?? "project";
  const stack = options.stack ?? "stack";
  const startTimeoutMs = options.startTimeoutMs ?? 15_000;
  const callTimeoutMs = options.callTimeoutMs ?? 15_000;
  const stopTimeoutMs = options.stopTimeoutMs ?? 5_000;

  // The engine runs the program's own copy (`./node_modules/@pulumi/pulumi/cmd/dynamic-provider`); prefer the one
  // resolvable from `cwd`, then ours.
  const hostScript = require.resolve("@pulumi/pulumi/cmd/dynamic-provider/index.js", { paths: [cwd, __dirname] });
  const child = spawn(process.execPath, [hostScript, "127.0.0.1:0"], {
    cwd,
    env: {
      ...process.env,
      // The engine sets these for Node.js plugins; the host's `Config` uses the project for unqualified keys.
      PULUMI_NODEJS_PROJECT: project,
      PULUMI_NODEJS_STACK: stack,
      PULUMI_PROJECT: project,
      PULUMI_STACK: stack,
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stderr = captureStderr(child);
  const port = await readPort(child, startTimeoutMs, stderr);
  if (child.pid === undefined) {
    throw new Error("dynamic-provider host started without a PID");
  }
  return new GrpcProviderHost(child, child.pid, port, stderr, callTimeoutMs, stopTimeoutMs);
}

const STDERR_CAP = 64 * 1024;

interface StderrBuffer {
  text(): string;
}

function captureStderr(child: ChildProcess): StderrBuffer {
  let captured = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    captured = (captured + chunk).slice(-STDERR_CAP);
  });
  return { text: () => captured };
}

/** Resolves with the port from the host's first stdout line; rejects on exit, spawn error or timeout. */
function readPort(child: ChildProcess, timeoutMs: number, stderr: StderrBuffer): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const stdout = child.stdout;
    if (!stdout) {
      reject(new Error("dynamic-provider host has no stdout pipe"));
      return;
    }
    let buffered = "";
    const cleanup = (): void => {
      clearTimeout(timer);
      stdout.off("data", onData);
      child.off("exit", onExit);
      child.off("error", onError);
      // Keep draining stdout, so a chatty provider (console.log) never blocks on a full pipe.
      stdout.resume();
    };
    const fail = (err: Error): void => {
      cleanup();
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
      }
      reject(err);
    };
    const onData = (chunk: string): void => {
      buffered += chunk;
      const newline = buffered.indexOf("\n");
      if (newline < 0) return;
      const line = buffered.slice(0, newline).trim();
      const port = Number(line);
      if (!Number.isInteger(port) || port <= 0 || port > 65535) {
        fail(new Error(`dynamic-provider host printed ${JSON.stringify(line)} instead of a port; stderr: ${stderr.text()}`));
        return;
      }
      cleanup();
      resolve(port);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      fail(new Error(`dynamic-provider host exited (code ${code}, signal ${signal}) before printing its port; stderr: ${stderr.text()}`));
    };
    const onError = (err: Error): void => {
      fail(new Error(`could not start the dynamic-provider host: ${err.message}`, { cause: err }));
    };
    const timer = setTimeout(() => {
      fail(new Error(`dynamic-provider host printed no port within ${timeoutMs} ms; stderr: ${stderr.text()}`));
    }, timeoutMs);
    timer.unref();
    stdout.setEncoding("utf8");
    stdout.on("data", onData);
    child.once("exit", onExit);
    child.once("error", onError);
  });
}

class GrpcProviderHost implements ProviderHost {
  private readonly client: provrpc.ResourceProviderClient;
  private stopped: Promise<void> | undefined;

  constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
    readonly port: number,
    private readonly stderrBuffer: StderrBuffer,
    private readonly callTimeoutMs: number,
    private readonly stopTimeoutMs: number,
  ) {
    this.client = new provrpc.ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  }

  stderr(): string {
    return this.stderrBuffer.text();
  }

  async configure(config: PropertyMap = {}): Promise<ConfigureResult> {
    const req = new provproto.ConfigureRequest();
    req.setArgs(toStruct(config));
    // What the engine advertises; the host ignores these flags.
    req.setAcceptsecrets(true);
    req.setAcceptresources(true);
    req.setSendsOldInputs(true);
    req.setSendsOldInputsToDelete(true);
    const resp = await this.unary<provproto.ConfigureResponse>("Configure", (md, opts, cb) => this.client.configure(req, md, opts, cb));
    return {
      acceptSecrets: resp.getAcceptsecrets(),
      supportsPreview: resp.getSupportspreview(),
      acceptResources: resp.getAcceptresources(),
      acceptOutputs: resp.getAcceptoutputs(),
    };
  }

  async check(urn: string, olds: PropertyMap, news: PropertyMap): Promise<CheckResult> {
    const req = new provproto.CheckRequest();
    setUrnNameType(req, urn);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    const resp = await this.unary<provproto.CheckResponse>("Check", (md, opts, cb) => this.client.check(req, md, opts, cb));
    return {
      inputs: fromStruct(resp.getInputs()),
      failures: resp.getFailuresList().map((f) => ({ property: f.getProperty(), reason: f.getReason() })),
    };
  }

  async diff(id: string, urn: string, olds: PropertyMap, news: PropertyMap, options: DiffOptions = {}): Promise<DiffResult> {
    const req = new provproto.DiffRequest();
    req.setId(id);
    setUrnNameType(req, urn);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    if (options.oldInputs) req.setOldInputs(toStruct(options.oldInputs));
    req.setIgnorechangesList([...(options.ignoreChanges ?? [])]);
    const resp = await this.unary<provproto.DiffResponse>("Diff", (md, opts, cb) => this.client.diff(req, md, opts, cb));
    return {
      changes: diffChanges(resp.getChanges()),
      replaces: resp.getReplacesList(),
      deleteBeforeReplace: resp.getDeletebeforereplace(),
    };
  }

  async create(urn: string, props: PropertyMap, options: CreateOptions = {}): Promise<CreateResult> {
    const req = new provproto.CreateRequest();
    setUrnNameType(req, urn);
    req.setProperties(toStruct(props));
    req.setTimeout(options.timeoutSeconds ?? 0);
    req.setPreview(options.preview ?? false);
    const resp = await this.unary<provproto.CreateResponse>("Create", (md, opts, cb) => this.client.create(req, md, opts, cb));
    return { id: resp.getId(), properties: fromStruct(resp.getProperties()) };
  }

  async read(id: string, urn: string, props: PropertyMap, options: ReadOptions = {}): Promise<ReadResult> {
    const req = new provproto.ReadRequest();
    req.setId(id);
    setUrnNameType(req, urn);
    req.setProperties(toStruct(props));
    if (options.inputs) req.setInputs(toStruct(options.inputs));
    const resp = await this.unary<provproto.ReadResponse>("Read", (md, opts, cb) => this.client.read(req, md, opts, cb));
    const inputs = resp.getInputs();
    return {
      id: resp.getId(),
      properties: fromStruct(resp.getProperties()),
      ...(inputs ? { inputs: fromStruct(inputs) } : {}),
    };
  }

  async update(id: string, urn: string, olds: PropertyMap, news: PropertyMap, options: UpdateOptions = {}): Promise<UpdateResult> {
    const req = new provproto.UpdateRequest();
    req.setId(id);
    setUrnNameType(req, urn);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    if (options.oldInputs) req.setOldInputs(toStruct(options.oldInputs));
    req.setIgnorechangesList([...(options.ignoreChanges ?? [])]);
    req.setTimeout(options.timeoutSeconds ?? 0);
    req.setPreview(options.preview ?? false);
    const resp = await this.unary<provproto.UpdateResponse>("Update", (md, opts, cb) => this.client.update(req, md, opts, cb));
    return { properties: fromStruct(resp.getProperties()) };
  }

  async delete(id: string, urn: string, props: PropertyMap, options: DeleteOptions = {}): Promise<void> {
    const req = new provproto.DeleteRequest();
    req.setId(id);
    setUrnNameType(req, urn);
    req.setProperties(toStruct(props));
    if (options.oldInputs) req.setOldInputs(toStruct(options.oldInputs));
    req.setTimeout(options.timeoutSeconds ?? 0);
    await this.unary<Empty>("Delete", (md, opts, cb) => this.client.delete(req, md, opts, cb));
  }

  stop(): Promise<void> {
    this.stopped ??= this.kill();
    return this.stopped;
  }

  private async kill(): Promise<void> {
    this.client.close();
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    process.kill(this.pid, "SIGTERM");
    const timedOut = await Promise.race([exited.then(() => false), delay(this.stopTimeoutMs).then(() => true)]);
    if (timedOut && this.child.exitCode === null && this.child.signalCode === null) {
      process.kill(this.pid, "SIGKILL");
      const killed = await Promise.race([exited.then(() => true), delay(this.stopTimeoutMs).then(() => false)]);
      if (!killed) {
        throw new Error(`dynamic-provider host (pid ${this.pid}) did not exit after SIGKILL`);
      }
    }
  }

  /** One unary call with a deadline; maps gRPC errors to {@link ProviderHostError}. */
  private unary<T>(
    method: string,
    invoke: (md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, resp: T) => void) => grpc.ClientUnaryCall,
  ): Promise<T> {
    if (this.stopped) {
      return Promise.reject(new Error(`${method}: the provider host was stopped`));
    }
    return new Promise<T>((resolve, reject) => {
      invoke(new grpc.Metadata(), { deadline: Date.now() + this.callTimeoutMs }, (err, resp) => {
        if (err) {
          reject(toProviderHostError(method, err));
        } else {
          resolve(resp);
        }
      });
    });
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Sets urn, and the name and type the engine derives from it, on any request that has them. */
function setUrnNameType(req: { setUrn(v: string): unknown; setName(v: string): unknown; setType(v: string): unknown }, urn: string): void {
  req.setUrn(urn);
  const parts = urn.split("::");
  if (parts.length >= 4) {
    req.setName(parts[parts.length - 1]);
    req.setType((parts[2] ?? "").split("$").pop() ?? "");
  }
}

function diffChanges(changes: provproto.DiffResponse.DiffChanges): DiffChanges {
  switch (changes) {
    case provproto.DiffResponse.DiffChanges.DIFF_SOME:
      return "some";
    case provproto.DiffResponse.DiffChanges.DIFF_NONE:
      return "none";
    default:
      return "unknown";
  }
}

function toProviderHostError(method: string, err: grpc.ServiceError): ProviderHostError {
  return new ProviderHostError(method, err.code, err.details, initFailureFrom(err.metadata), err);
}

/**
 * Decodes the `grpc-status-details-bin` trailer the host attaches when the provider's error carried an `id`
 * (`grpcResponseFromError` in `cmd/dynamic-provider/index.js`).
 */
function initFailureFrom(metadata: grpc.Metadata | undefined): ResourceInitFailure | undefined {
  const raw = metadata?.get("grpc-status-details-bin")[0];
  if (raw === undefined || typeof raw === "string") return undefined;
  const status = statusproto.Status.deserializeBinary(new Uint8Array(raw));
  for (const detail of status.getDetailsList()) {
    const failed = detail.unpack(provproto.ErrorResourceInitFailed.deserializeBinary, "pulumirpc.ErrorResourceInitFailed");
    if (failed) {
      return { id: failed.getId(), properties: fromStruct(failed.getProperties()), reasons: failed.getReasonsList() };
    }
  }
  return undefined;
}

/**
 * Plain JS → Struct, dropping `undefined` as the SDK's serializer does (undefined array elements become null).
 * Rejects values a Struct cannot carry, instead of letting google-protobuf throw "Unexpected struct type.".
 */
function toStruct(props: PropertyMap): Struct {
  const cleaned = toWireValue(props, "");
  return Struct.fromJavaScript(cleaned as Parameters<typeof Struct.fromJavaScript>[0]);
}

function toWireValue(value: unknown, path: string): unknown {
  if (value === null || typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`property ${path || "<root>"}: ${value} cannot be sent in a Struct`);
    return value;
  }
  if (Array.isArray(value)) {
    return value.map((v, i) => (v === undefined ? null : toWireValue(v, `${path}[${i}]`)));
  }
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      if (v !== undefined) out[k] = toWireValue(v, path ? `${path}.${k}` : k);
    }
    return out;
  }
  throw new TypeError(`property ${path || "<root>"}: a ${describe(value)} cannot be sent in a Struct (use plain JSON values)`);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function describe(value: unknown): string {
  if (typeof value === "object" && value !== null) return value.constructor?.name ?? "object";
  return typeof value;
}

function fromStruct(struct: Struct | undefined): PropertyMap {
  if (!struct) return {};
  const value: unknown = struct.toJavaScript();
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError("the provider host returned a Struct that is not an object");
  }
  return value as PropertyMap;
}
