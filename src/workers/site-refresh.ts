import { repeating } from './repeating.ts';
import type { Worker } from './worker.ts';

/** What the worker needs of the site: read the manifest again now. `Site` will fit. */
export interface SiteRefresher {
  /** Reads the manifest from the file store; on failure keeps serving the last one and rejects. */
  refresh(): Promise<void>;
}

/** How often the manifest is read again, so that a deploy from another process shows within it. */
export const SITE_REFRESH_MS = 2_000;

/**
 * Reads the site's manifest again every `intervalMs`, so that requests never wait for the file
 * store to see whether a deploy happened. It keeps this process's copy fresh, so it runs in
 * every process that serves the site (also under `serve --no-worker`) and in no other.
 *
 * @example
 * const worker = siteRefresh(site);
 */
export function siteRefresh(site: SiteRefresher, intervalMs: number = SITE_REFRESH_MS): Worker {
  return repeating({ name: 'site-refresh', intervalMs, run: () => site.refresh() });
}
