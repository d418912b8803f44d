// Vitest settings for the pinned conformance suite and the client test.
//
// Both test files talk to a live server whose address comes from the
// DS_BASE_URL environment variable; `cargo xtask conformance` starts the
// server and sets it. See README.md.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "node",
    // Only our own entry points; the suite itself lives in node_modules,
    // which vitest never collects test files from.
    include: ["conformance.test.mjs", "client.test.mjs"],
    // Generous: some suite tests sleep through TTL expiry or long-poll
    // timeouts on purpose, and CI machines are slow.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    teardownTimeout: 10_000,
    // The suite marks its sleep-heavy TTL tests `test.concurrent`; let
    // several of them wait at once.
    maxConcurrency: 10,
    // Run the two files one after the other so the timing-sensitive suite
    // does not share the server with the client test's load.
    fileParallelism: false,
    // A conformance failure must be reported, never papered over.
    retry: 0,
    passWithNoTests: false,
  },
});
