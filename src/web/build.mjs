// Bundles the console into dist/: app.js (esbuild), index.html, app.css and xterm.css.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

await rm("dist", { recursive: true, force: true });
await mkdir("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  minify: true,
  // No source map: the bundle is committed and compiled into the binary (see ARCHITECTURE.md).
  sourcemap: false,
  target: "es2022",
  outfile: "dist/app.js",
  logLevel: "warning",
});
await copyFile("index.html", "dist/index.html");
await copyFile("app.css", "dist/app.css");
await copyFile("node_modules/@xterm/xterm/css/xterm.css", "dist/xterm.css");
console.log("console built in dist/");
