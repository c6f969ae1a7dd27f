import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Creates `dir` (and missing parents) owner-only. One made before files were owner-only is
 * tightened once, recursively; afterwards its own mode (0700) says it was done.
 */
export function ownerOnlyDir(dir: string): void {
  const existed = existsSync(dir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (existed && (statSync(dir).mode & 0o077) !== 0) restrictToOwner(dir);
}

/**
 * Makes a directory tree owner-only: directories 0700, files 0600, whatever the umask was when
 * they were made. Symbolic links are left alone (chmod would follow them out of the tree).
 */
export function restrictToOwner(path: string): void {
  const stat = lstatSync(path);
  if (stat.isSymbolicLink()) return;
  if (stat.isDirectory()) {
    if ((stat.mode & 0o777) !== 0o700) chmodSync(path, 0o700);
    for (const name of readdirSync(path)) restrictToOwner(join(path, name));
  } else if ((stat.mode & 0o777) !== 0o600) {
    chmodSync(path, 0o600);
  }
}
