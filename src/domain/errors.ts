/**
 * The error catalog: every error databank answers with has a stable code, an HTTP status and a
 * message. Codes are never reused or renamed; `docs/errors.md` documents each one and a test
 * keeps the two in step.
 */
export const ERRORS = {
  DATABANK_ERR_VALIDATION: { status: 400, message: 'The request does not match the schema' },
  DATABANK_ERR_MALFORMED_BODY: { status: 400, message: 'The request body is not valid JSON' },
  DATABANK_ERR_SAME_ACCOUNT: { status: 400, message: 'A transfer needs two different accounts' },
  DATABANK_ERR_CURRENCY_MISMATCH: { status: 400, message: 'Both accounts must hold the same currency' },
  DATABANK_ERR_INVALID_CURSOR: { status: 400, message: 'The paging cursor is not valid' },
  DATABANK_ERR_BAD_PATH: { status: 400, message: 'The path is not a valid site path' },
  DATABANK_ERR_BAD_UPLOAD: {
    status: 400,
    message: 'The upload ended early or is not valid multipart/form-data',
  },
  DATABANK_ERR_IDEMPOTENCY_KEY_INVALID: {
    status: 400,
    message: 'The Idempotency-Key header must be 1 to 255 printable ASCII characters',
  },
  DATABANK_ERR_INVALID_LSN: {
    status: 400,
    message: 'The X-Databank-Lsn header must be a WAL position as a write answered it, like 0/16B3748',
  },
  DATABANK_ERR_ANALYTICS_QUERY: {
    status: 400,
    message: 'The analytics query was refused: only one read-only SELECT on the analytics tables is allowed',
  },
  DATABANK_ERR_INVALID_JSON_SCHEMA: {
    status: 400,
    message: 'The collection schema is not a valid JSON Schema (draft 2020-12)',
  },
  DATABANK_ERR_UNAUTHORIZED: { status: 401, message: 'A valid API key is required' },
  DATABANK_ERR_FORBIDDEN: { status: 403, message: 'This API key may not do that' },
  DATABANK_ERR_NOT_FOUND: { status: 404, message: 'No such resource' },
  DATABANK_ERR_ROUTE_NOT_FOUND: { status: 404, message: 'No such route' },
  DATABANK_ERR_INSUFFICIENT_FUNDS: { status: 409, message: 'The account balance is too low' },
  DATABANK_ERR_BALANCE_LIMIT: {
    status: 409,
    message: 'The movement would take the account past the largest balance allowed',
  },
  DATABANK_ERR_QUOTA_EXCEEDED: { status: 409, message: 'The customer has reached a quota' },
  DATABANK_ERR_BACKUP_NOT_CONFIGURED: {
    status: 409,
    message: 'Backups need a key: start the server with DATABANK_BACKUP_KEY_FILE set (databank backup keygen FILE makes one)',
  },
  DATABANK_ERR_BACKUP_RUNNING: { status: 409, message: 'A backup is already running in this deployment; try again when it is done' },
  DATABANK_ERR_IDEMPOTENCY_IN_FLIGHT: {
    status: 409,
    message: 'A request with this Idempotency-Key is still being processed',
  },
  DATABANK_ERR_VERSION_MISMATCH: {
    status: 412,
    message: 'The document changed since that version (If-Match): read it again and reapply the change',
  },
  DATABANK_ERR_PRECONDITION_REQUIRED: {
    status: 428,
    message: 'This change needs an If-Match header with the version it applies to, as the ETag of a read gave it',
  },
  DATABANK_ERR_REQUEST_TIMEOUT: { status: 408, message: 'The request was not received in time' },
  DATABANK_ERR_PAYLOAD_TOO_LARGE: { status: 413, message: 'The request body is too large' },
  DATABANK_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'The request body must be application/json' },
  DATABANK_ERR_UNSUPPORTED_FILE_TYPE: {
    status: 415,
    message: 'Only PNG, JPEG, WebP, GIF, PDF and plain UTF-8 text files are accepted',
  },
  DATABANK_ERR_RANGE_NOT_SATISFIABLE: { status: 416, message: 'The requested range is outside the file' },
  DATABANK_ERR_IDEMPOTENCY_KEY_REUSED: {
    status: 422,
    message: 'This Idempotency-Key was used with a different request',
  },
  DATABANK_ERR_SCHEMA_VIOLATION: {
    status: 422,
    message: "The document does not match its collection's JSON Schema; `problems` lists where",
  },
  DATABANK_ERR_RATE_LIMITED: { status: 429, message: 'Too many requests; retry after the time in Retry-After' },
  DATABANK_ERR_HEADERS_TOO_LARGE: { status: 431, message: 'The request headers are too large' },
  DATABANK_ERR_INTERNAL: { status: 500, message: 'Internal error' },
  DATABANK_ERR_CONTENTION: {
    status: 503,
    message: 'The accounts are busy; the request was not applied, retry it',
  },
  DATABANK_ERR_UNAVAILABLE: {
    status: 503,
    message: 'The database is unavailable; the request may not have been applied: retry it with the same Idempotency-Key',
  },
  DATABANK_ERR_FILE_STORE_UNAVAILABLE: {
    status: 503,
    message: 'The file store is unavailable; nothing was stored, retry',
  },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

/** An error from the catalog. Services throw these; the HTTP layer turns them into responses. */
export class DatabankError extends Error {
  readonly code: ErrorCode;
  readonly statusCode: number;
  /** Where the request went wrong, for errors that can say (DATABANK_ERR_SCHEMA_VIOLATION). */
  readonly problems?: readonly { readonly path: string; readonly message: string }[];

  constructor(
    code: ErrorCode,
    message?: string,
    options?: { cause?: unknown; problems?: readonly { readonly path: string; readonly message: string }[] },
  ) {
    super(message ?? ERRORS[code].message, options);
    this.name = 'DatabankError';
    this.code = code;
    this.statusCode = ERRORS[code].status;
    if (options?.problems) this.problems = options.problems;
  }
}

/**
 * Runs a call to the file store; a failure that is not already a catalog error (the store down,
 * slow or refusing) becomes DATABANK_ERR_FILE_STORE_UNAVAILABLE, with the cause kept for the log.
 */
export async function fileStoreCall<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof DatabankError) throw err;
    throw new DatabankError('DATABANK_ERR_FILE_STORE_UNAVAILABLE', undefined, { cause: err });
  }
}

/** True when `err` is a catalog error, optionally with the given code. */
export function isDatabankError(err: unknown, code?: ErrorCode): err is DatabankError {
  return err instanceof DatabankError && (code === undefined || err.code === code);
}
