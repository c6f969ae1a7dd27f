/**
 * The size of the streaming tests. Streaming in bounded memory is proven with 256 MiB in
 * `npm test` (already more than twice the 100 MiB growth the tests allow, so a copy held in memory
 * fails them); `DATABANK_TEST_LARGE=1` (set by `.ci/run`) runs them at 1 GiB.
 */
const MiB = 1024 * 1024;

/** True when the 1 GiB versions run. */
export const LARGE = process.env.DATABANK_TEST_LARGE === '1';

/** Bytes each streaming test sends: 1 GiB with DATABANK_TEST_LARGE=1, else 256 MiB. */
export const STREAM_BYTES = (LARGE ? 1024 : 256) * MiB;

/** {@link STREAM_BYTES} for test names and messages: `1 GiB` or `256 MiB`. */
export const STREAM_LABEL = LARGE ? '1 GiB' : '256 MiB';
