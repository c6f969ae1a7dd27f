import type { HttpDeps } from '../deps.ts';
import type { TypedApp } from '../typed-app.ts';

/** The admin API for API keys (filled in by the key-lifecycle work). */
export async function apiKeyRoutes(_app: TypedApp, _deps: HttpDeps): Promise<void> {}
