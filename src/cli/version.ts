import { readFileSync } from 'node:fs';
import { packagePath } from '../paths.ts';

/**
 * The version of the databank package, read from the package.json beside src/. A file read rather
 * than a JSON import: it costs nothing at start and needs no import attributes.
 */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw new Error('package.json has no version');
  return pkg.version;
}
