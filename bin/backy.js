#!/usr/bin/env node
// libuv's thread pool runs every file read, write and fsync; with its default of 4 threads a
// few slow fsyncs would stall all reads. It is sized on first use, so set it before anything runs.
process.env.UV_THREADPOOL_SIZE ??= '16';
// dist/backy.mjs is the whole CLI in one file (npm run bundle): loading the ~600 modules of
// dist/ and its dependencies one by one costs about 0.2 s of start-up on every command.
const { main } = await import('../dist/backy.mjs');

main(process.argv).then((code) => {
  process.exitCode = code;
});
