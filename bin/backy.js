#!/usr/bin/env node
// libuv's thread pool runs every file read, write and fsync; with its default of 4 threads a
// few slow fsyncs would stall all reads. It is sized on first use, so set it before anything runs.
process.env.UV_THREADPOOL_SIZE ??= '16';
const { main } = await import('../dist/cli/main.js');

main(process.argv).then((code) => {
  process.exitCode = code;
});
