// Prints the licence of every npm package esbuild bundled (read from its metafile), for
// static/niivue.LICENSES.txt. Niivue's npm package ships no licence file: ours is niivue-LICENSE,
// copied from its repository (github.com/niivue/niivue, LICENSE).
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

const meta = JSON.parse(readFileSync(process.argv[2], "utf8"));
const packages = new Set();
for (const input of Object.keys(meta.inputs)) {
  const match = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//);
  if (match) packages.add(match[1]);
}
const out = ["Third-party software bundled into niivue.min.js, with its licence.\n"];
for (const name of [...packages].sort()) {
  const dir = join("node_modules", name);
  const { version, license } = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  const file = readdirSync(dir).find((f) => /^(licen[cs]e|copying)/i.test(f));
  const text = file ? readFileSync(join(dir, file), "utf8") : name === "@niivue/niivue" ? readFileSync("niivue-LICENSE", "utf8") : null;
  if (!text) throw new Error(`${name} ships no licence file: add it beside this script`);
  out.push(`${"=".repeat(78)}\n${name} ${version} (${license})\n${"=".repeat(78)}\n${text.trim()}\n`);
}
process.stdout.write(out.join("\n"));
