#!/usr/bin/env node
// libuv's thread pool runs every file read, write and fsync; with its default of 4 threads a
// few slow fsyncs would stall all reads. It is sized on first use, so set it before anything runs.
process.env.UV_THREADPOOL_SIZE ??= '16';
// dist/bundle/ is the CLI bundled by esbuild (npm run bundle): loading the ~600 modules of dist/
// and its dependencies one by one costs about 0.2 s on every command. The bundle is split at the
// commands' dynamic imports, so each command loads only the code it runs.
const { main } = await import('../dist/bundle/main.mjs');

main(process.argv).then((code) => {
  process.exitCode = code;
});
