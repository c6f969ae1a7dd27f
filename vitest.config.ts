import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Child processes, not threads: PGlite holds its WebAssembly engine per process,
    // and a test that kills or signals its own children needs a process of its own.
    pool: 'forks',
    // Two cores: two test files at a time; each file has its own databases, ports and folders.
    maxWorkers: 2,
    fileParallelism: true,
    // Files start slowest first (vitest keeps each file's last duration), so the two workers end
    // close together instead of one running a long file alone at the end.
    sequence: { shuffle: false },
    // Generous bounds for a loaded machine (a second `npm test` beside this one): a test that
    // hangs still fails, with the name of what it waited for.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    reporters: ['default'],
  },
});
