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

/** One side of a movement: `account_id` for a customer account, `system_account` for the bank's own. */
export interface LedgerEntriesTable {
  id: Generated<number>;
  transaction_id: number;
  account_id: number | null;
  /** `cash:USD`, `fee_income:EUR`, …: a row of `system_accounts` in the entry's currency. */
  system_account: SystemAccount | null;
  currency: Currency;
  amount: number;
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
 * outbox). Nothing reads them yet: the [async] issue's relay publishes them in order to the event
 * stream and sets `published_at` once the broker has acknowledged.
 */
export interface OutboxTable {
  id: Generated<number>;
  topic: string;
  aggregate_id: string;
  payload: unknown;
  created_at: Generated<Date>;
  published_at: Date | null;
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
