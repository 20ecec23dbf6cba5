/** The QEMU guest agent client: codec (no I/O), session (sync, one command in flight, timeouts), typed commands. */
export * from "./codec";
export * from "./session";
export * from "./commands";
