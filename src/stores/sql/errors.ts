/** SQLSTATE classes that mean the server cannot serve this session right now. */
const UNAVAILABLE_CLASSES = ['08', '53', '57P'];
const UNAVAILABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH']);

/** The error's SQLSTATE, when it is a PostgreSQL error. */
export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * True when `err` says the server cannot be reached or cannot serve right now (refused, reset,
 * shutting down, out of connections), as opposed to an error of the statement itself.
 */
export function isConnectionFailure(err: unknown): boolean {
  const state = sqlState(err);
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = err instanceof Error ? err.message : '';
  return (
    (state !== undefined && UNAVAILABLE_CLASSES.some((c) => state.startsWith(c))) ||
    (errno !== undefined && UNAVAILABLE_ERRNOS.has(errno)) ||
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message)
  );
}
