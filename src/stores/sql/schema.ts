import type { ColumnType, Generated } from 'kysely';
import type { Currency, SystemAccount } from '../../domain/money.ts';

/** Table types as Kysely sees them. Keep in step with the migrations. */
export interface Database {
  customers: CustomersTable;
  accounts: AccountsTable;
  ledger_transactions: LedgerTransactionsTable;
  ledger_entries: LedgerEntriesTable;
  fee_charges: FeeChargesTable;
  idempotency_keys: IdempotencyKeysTable;
  api_keys: ApiKeysTable;
  outbox: OutboxTable;
  files: FilesTable;
  processed_messages: ProcessedMessagesTable;
  jobs: JobsTable;
  file_variants: FileVariantsTable;
  audit_events: AuditEventsTable;
  backup_holds: BackupHoldsTable;
  documents: DocumentsTable;
  collection_schemas: CollectionSchemasTable;
  search_index: SearchIndexTable;
  search_words: SearchWordsTable;
}

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;

export interface CustomersTable {
  id: Generated<number>;
  name: string;
  date_of_birth: string;
  created_at: Generated<Date>;
}

export interface AccountsTable {
  account_id: Generated<number>;
  customer_id: number;
  account_type: 'checking' | 'savings';
  currency: Generated<Currency>;
  balance: Generated<number>;
  created_at: Generated<Date>;
}

export interface LedgerTransactionsTable {
  id: Generated<number>;
  kind: 'deposit' | 'withdrawal' | 'transfer' | 'fee';
  reference: string | null;
  created_at: Generated<Date>;
}

/**
 * One side of a movement: `account_id` for a customer account, `system_account` for the bank's own.
 * Partitioned by month of `created_at` (0011): `ledger_entries_2026_12`, …, `ledger_entries_default`.
 */
export interface LedgerEntriesTable {
  id: Generated<number>;
  transaction_id: number;
  account_id: number | null;
  /** `cash:USD`, `fee_income:EUR`, …: a row of `system_accounts` in the entry's currency. */
  system_account: SystemAccount | null;
  currency: Currency;
  amount: number;
  /**
   * The entry's time, its ledger transaction's `created_at` (0011), and the key the table is
   * partitioned by, one partition a month: filter on it and a query reads only its months.
   */
  created_at: Generated<Date>;
}

export interface FeeChargesTable {
  reference: string;
  account_id: number;
  transaction_id: number;
}

export interface IdempotencyKeysTable {
  scope: string;
  key: string;
  request_hash: string;
  state: 'in_flight' | 'done';
  response_status: number | null;
  response_body: unknown;
  /** Unused since 0005 (claims are locks held by the movement's transaction); defaults to now(). */
  locked_until: Generated<Date>;
  expires_at: Timestamp;
  created_at: Generated<Date>;
}

export interface ApiKeysTable {
  id: Generated<number>;
  prefix: string;
  secret_hash: string;
  role: 'admin' | 'customer';
  customer_id: number | null;
  created_at: Generated<Date>;
  revoked_at: Date | null;
  /** Null: the key never expires (0006). */
  expires_at: Date | null;
  /** When the key was last used, to within the app's flush interval (~30 s); null: never (0006). */
  last_used_at: Date | null;
}

/**
 * Events written in the same transaction as the state change they describe (the transactional
 * outbox, 0007's shape: docs/events.md). The relay publishes them in commit order to the event
 * stream and sets `published_at` once the stream has them.
 */
export interface OutboxTable {
  id: Generated<number>;
  /** A UUIDv7, unique across deployments: the stream's de-duplication id. */
  event_id: Generated<string>;
  type: string;
  version: Generated<number>;
  aggregate_id: string;
  /** The customers whose activity the event is part of. */
  customer_ids: ColumnType<number[], number[] | undefined, number[]>;
  payload: unknown;
  /** The event's `occurred_at`: its transaction's time. */
  created_at: Generated<Date>;
  published_at: Date | null;
}

/** What a consumer or job handler has applied, written with the side effect (0007). */
export interface ProcessedMessagesTable {
  consumer: string;
  message_id: string;
  processed_at: Generated<Date>;
}

export type JobKind = 'image.variants' | 'statement.monthly';
export type JobState = 'queued' | 'running' | 'completed' | 'failed';

/** Background jobs the API shows (0007); the queue carries their ids. */
export interface JobsTable {
  id: Generated<string>;
  kind: JobKind;
  customer_id: number;
  state: Generated<JobState>;
  attempts: Generated<number>;
  payload: unknown;
  result: unknown;
  error: string | null;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
  /** When the dispatcher handed the job to the queue; null: not yet. */
  dispatched_at: Date | null;
}

export type VariantName = 'web' | 'mobile' | 'thumbnail';

export interface FileVariantsTable {
  file_id: number;
  name: VariantName;
  status: Generated<'pending' | 'ready' | 'failed'>;
  content_type: Generated<string>;
  width: number | null;
  height: number | null;
  size: number | null;
  object_key: string | null;
  sha256: string | null;
  updated_at: Generated<Date>;
}

/** The audit projection: one row per customer and event (0007). */
export interface AuditEventsTable {
  customer_id: number;
  event_id: string;
  type: string;
  occurred_at: ColumnType<Date, Date | string, Date | string>;
  payload: unknown;
}

export interface FilesTable {
  id: Generated<number>;
  customer_id: number;
  filename: string;
  content_type: string;
  size: number;
  sha256: string;
  object_key: string;
  created_at: Generated<Date>;
}

/** A running backup's hold on object deletions (migration 0010). */
export interface BackupHoldsTable {
  backup_id: string;
  started_at: Generated<Date>;
  expires_at: Date;
}

/** A customer's semi-structured document (0012): a JSON object in a free-form collection. */
export interface DocumentsTable {
  id: Generated<number>;
  customer_id: number;
  collection: string;
  version: Generated<number>;
  /** JSONB; written as a JSON string, read as the parsed object. */
  body: ColumnType<Record<string, unknown>, string, string>;
  tags: Generated<string[]>;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
}

/** The JSON Schema a collection opted into (schema-on-write). */
export interface CollectionSchemasTable {
  collection: string;
  schema: ColumnType<Record<string, unknown>, string, string>;
  version: Generated<number>;
  updated_at: Generated<Date>;
}

/** The search projection of customers and documents (0012), kept by `databank_search_sync`. */
export interface SearchIndexTable {
  kind: 'customer' | 'document';
  id: number;
  customer_id: number;
  collection: string | null;
  status: string | null;
  tags: string[];
  content: string;
  tsv: string;
  indexed_at: Generated<Date>;
}

export interface SearchWordsTable {
  word: string;
}
