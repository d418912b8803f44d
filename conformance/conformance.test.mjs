// Runs the published Durable Streams server conformance suite
// (@durable-streams/server-conformance-tests, pinned in package.json)
// against the server at DS_BASE_URL.
//
// The package's own CLI cannot be used from node_modules: vitest never
// collects test files under node_modules, so it would find nothing to run.
// This file is the entry point instead.
//
// Environment:
//   DS_BASE_URL              server origin, e.g. http://127.0.0.1:4437
//                            (the suite appends /v1/stream/... itself)
//   DS_LONG_POLL_TIMEOUT_MS  the server's long-poll timeout in ms (default 1000)
//   DS_SUBSCRIPTIONS         "true" to run the subscription tests (default false)
import { runConformanceTests } from "@durable-streams/server-conformance-tests";

const baseUrl = (process.env.DS_BASE_URL ?? "").replace(/\/+$/, "");
if (baseUrl === "") {
  throw new Error(
    "DS_BASE_URL is required (e.g. http://127.0.0.1:4437); run through `cargo xtask conformance`",
  );
}

const longPollTimeoutMs = Number.parseInt(process.env.DS_LONG_POLL_TIMEOUT_MS ?? "1000", 10);
if (!Number.isFinite(longPollTimeoutMs) || longPollTimeoutMs <= 0) {
  throw new Error(`DS_LONG_POLL_TIMEOUT_MS must be a positive integer, got ${process.env.DS_LONG_POLL_TIMEOUT_MS}`);
}

const subscriptionsEnv = (process.env.DS_SUBSCRIPTIONS ?? "false").toLowerCase();
if (subscriptionsEnv !== "true" && subscriptionsEnv !== "false") {
  throw new Error(`DS_SUBSCRIPTIONS must be "true" or "false", got ${process.env.DS_SUBSCRIPTIONS}`);
}

runConformanceTests({
  baseUrl,
  longPollTimeoutMs,
  subscriptions: subscriptionsEnv === "true",
});
