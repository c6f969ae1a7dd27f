/** The columnar analytics role (DuckDB): see `service.ts`. */
export { AnalyticsService, DEFAULT_QUERY_ROWS, MAX_QUERY_ROWS, type AnalyticsOptions, type ParquetExport, type RefreshOptions } from './service.ts';
export type { RefreshResult } from './etl.ts';
export type { QueryColumn, QueryResult } from './query.ts';
export {
  BALANCE_GROUPINGS,
  BOOK_QUERIES,
  INTERVALS,
  TOP_ORDERS,
  type BalanceGrouping,
  type BalancesReport,
  type BooksReport,
  type Interval,
  type TopAccountsReport,
  type TopOrder,
  type VolumeReport,
} from './reports.ts';
export { ANALYTICS_TABLES, BOOKS, type AnalyticsTable } from './schema.ts';
