import type { BackupOps } from '../services/backup/ops.ts';
import type { AccountsService } from '../services/accounts.ts';
import type { ApiKeysService } from '../services/api-keys.ts';
import type { CustomersService } from '../services/customers.ts';
import type { FeesService } from '../services/fees.ts';
import type { IdempotencyService } from '../services/idempotency.ts';
import type { FilesService } from '../services/files.ts';
import type { MovementsService } from '../services/movements.ts';
import type { Site } from '../services/site.ts';
import type { TransfersService } from '../services/transfers.ts';
import type { CachedReads } from '../services/cached-reads.ts';
import type { LimitsSettings } from '../config.ts';
import type { ActivityService } from '../services/activity.ts';
import type { AsyncOps } from '../services/async-ops.ts';
import type { AnalyticsService } from '../services/analytics/service.ts';
import type { JobsService } from '../services/jobs.ts';
import type { StatementsService } from '../services/statements.ts';
import type { DocumentsService } from '../services/documents.ts';
import type { SearchService } from '../services/search.ts';
import type { Metrics } from './metrics.ts';
import type { ReadRouting } from './read-routing.ts';

/** What the HTTP layer needs: services and metrics, never a store. */
export interface HttpDeps {
  readonly customers: CustomersService;
  readonly accounts: AccountsService;
  readonly movements: MovementsService;
  readonly transfers: TransfersService;
  readonly fees: FeesService;
  readonly idempotency: IdempotencyService;
  readonly apiKeys: ApiKeysService;
  readonly metrics: Metrics;
  readonly cache: CachedReads;
  readonly files: FilesService;
  readonly jobs: JobsService;
  readonly statements: StatementsService;
  readonly activity: ActivityService;
  /** Queue and stream operations for admins. */
  readonly asyncOps: AsyncOps;
  /** The public website; null serves none. */
  readonly site: Site | null;
  /** Balance, quota and rate limits. */
  readonly limits: LimitsSettings;
  /** Backups: create and list for admins, and what `/readyz` reports of their age. */
  readonly backups: BackupOps;
  /** Read routing to replicas: WAL positions for read-your-writes, replica status. */
  readonly reads: ReadRouting;
  /** Customers' documents and collections' schemas. */
  readonly documents: DocumentsService;
  /** Search over customers and documents. */
  readonly search: SearchService;
  /** Columnar reports on the DuckDB copy, its refresh and read-only SQL (admins). */
  readonly analytics: AnalyticsService;
  /** Resolves when the database answers. */
  readonly ready: () => Promise<void>;
}
