/**
 * Where an option is in the config file, for problems to name its line: by the YAML library's
 * node positions (a LineCounter given to parseDocument), never by printing the line (it may hold
 * a credential).
 */
import { isMap, isNode, isScalar, isSeq, type Document, type LineCounter } from "yaml";

/** An option's path as problems name it: `pools[0].mounts[1].source`. */
export function optionPath(path: ReadonlyArray<PropertyKey>): string {
  return path.map((k, i) => (typeof k === "number" ? `[${k}]` : `${i === 0 ? "" : "."}${String(k)}`)).join("");
}

/**
 * The path of the option a problem begins with (`pools[0].mounts[1]: ...`, as optionPath writes
 * it); undefined when it begins with none (`(top level): ...`, a variable's name).
 */
export function problemPath(problem: string): PropertyKey[] | undefined {
  const where = /^([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*): /.exec(problem)?.[1];
  if (where === undefined) return undefined;
  return [...where.matchAll(/([A-Za-z_][\w-]*)|\[(\d+)\]/g)].map((m) => (m[2] === undefined ? m[1]! : Number(m[2])));
}

/**
 * The line (from 1) of the option at `path` in the file: of its key in a mapping, of the item in
 * a list; undefined when the file does not hold it there (missing, set through an alias or a
 * merge key) or `path` is the whole file.
 */
export function lineAt(doc: Document, lineCounter: LineCounter, path: ReadonlyArray<PropertyKey>): number | undefined {
  if (path.length === 0) return undefined;
  const parent = doc.getIn(path.slice(0, -1) as unknown[], true);
  const last = path[path.length - 1];
  let offset: number | undefined;
  if (isMap(parent) && typeof last === "string") {
    const pair = parent.items.find((p) => isScalar(p.key) && String(p.key.value) === last);
    offset = isScalar(pair?.key) ? pair.key.range?.[0] : undefined;
  } else if (isSeq(parent) && typeof last === "number") {
    const item = parent.items[last];
    offset = isNode(item) ? item.range?.[0] : undefined;
  }
  return offset === undefined ? undefined : lineCounter.linePos(offset).line;
}

/**
 * Where a problem about the option at `path` is in the file: `line N` for an option the file holds;
 * for one it does not hold (a required key left out), `P at line N`, P the nearest option above
 * it that the file holds (the mapping it is missing from); undefined when none is (a whole
 * section missing).
 */
export function placeOf(doc: Document, lineCounter: LineCounter, path: ReadonlyArray<PropertyKey>): string | undefined {
  const line = lineAt(doc, lineCounter, path);
  if (line !== undefined) return `line ${line}`;
  for (let n = path.length - 1; n > 0; n--) {
    const above = lineAt(doc, lineCounter, path.slice(0, n));
    if (above !== undefined) return `${optionPath(path.slice(0, n))} at line ${above}`;
  }
  return undefined;
}
