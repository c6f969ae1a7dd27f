import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The folder databank is installed in (the one holding package.json, site/ and src/). Computed
 * from this file's place, one level below it both as TypeScript (src/) and compiled (dist/), so
 * that files shipped beside the code are found from either.
 */
export const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url));

/** A path inside the installed package, e.g. `packagePath('site')`. */
export function packagePath(...segments: string[]): string {
  return join(PACKAGE_ROOT, ...segments);
}
