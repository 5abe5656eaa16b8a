// Check fake responses and webhooks against GitHub's OpenAPI description
// (@octokit/openapi, api.github.com, dereferenced variant: no $ref to resolve).
import { createRequire } from "node:module";
import { Ajv, type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";

type Schema = Record<string, unknown>;
interface Operation {
  responses: Record<string, { content?: Record<string, { schema?: Schema }> }>;
  parameters?: Array<{ name: string; in: string; required?: boolean }>;
  requestBody?: { content: Record<string, { schema: Schema }> };
}
export interface Spec {
  paths: Record<string, Record<string, Operation>>;
  "x-webhooks": Record<string, Record<string, Operation>>;
}

let cached: Spec | undefined;
export function loadSpec(): Spec {
  cached ??= createRequire(import.meta.url)("@octokit/openapi/generated/api.github.com.deref.json") as Spec;
  return cached;
}

/**
 * OpenAPI 3.0 -> JSON Schema for Ajv: `nullable: true` becomes a "null" type
 * (and a null enum member, or an anyOf with null for composed schemas).
 */
export function toJsonSchema(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(toJsonSchema);
  if (!schema || typeof schema !== "object") return schema;
  const out: Schema = {};
  for (const [k, v] of Object.entries(schema)) {
    if (k === "nullable" || k === "example" || k === "examples") continue;
    out[k] = k === "enum" || k === "required" || k === "default" ? v : toJsonSchema(v);
  }
  if ((schema as Schema).nullable !== true) return out;
  if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null];
  if (typeof out.type === "string") return { ...out, type: [out.type, "null"] };
  if (out.anyOf || out.oneOf || out.allOf) return { anyOf: [out, { type: "null" }] };
  return out;
}

const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: true });
addFormats.default(ajv);
const compiled = new WeakMap<Schema, ValidateFunction>();

/** Ajv errors of `value` against an OpenAPI schema ([] when valid). */
export function schemaErrors(schema: Schema, value: unknown): string[] {
  let validate = compiled.get(schema);
  if (!validate) compiled.set(schema, (validate = ajv.compile(toJsonSchema(schema) as Schema)));
  if (validate(value)) return [];
  return (validate.errors ?? []).slice(0, 10).map((e) => `${e.instancePath || "/"} ${e.message ?? ""} ${JSON.stringify(e.params)}`);
}

/**
 * Keys the fake sends that the schema does not document (GitHub's schemas allow
 * extra properties, so Ajv alone would not notice invented fields). Composed
 * schemas (allOf/anyOf/oneOf) count a key as documented when any branch has it.
 */
export function undocumentedKeys(schema: unknown, value: unknown, path = ""): string[] {
  if (!schema || typeof schema !== "object" || value === null || typeof value !== "object") return [];
  const s = schema as Schema;
  const branches = [s, ...(["allOf", "anyOf", "oneOf"] as const).flatMap((k) => (Array.isArray(s[k]) ? (s[k] as Schema[]) : []))];
  if (Array.isArray(value)) {
    const items = branches.map((b) => b.items).filter(Boolean);
    return value.flatMap((v, i) => items.flatMap((it) => undocumentedKeys(it, v, `${path}/${i}`)));
  }
  if (branches.some((b) => b.additionalProperties !== undefined && b.additionalProperties !== false)) return [];
  const props = new Map<string, unknown[]>();
  for (const b of branches) {
    for (const [k, v] of Object.entries((b.properties as Schema | undefined) ?? {})) props.set(k, [...(props.get(k) ?? []), v]);
  }
  if (props.size === 0) return []; // a free-form object
  return Object.entries(value).flatMap(([k, v]) => {
    const docs = props.get(k);
    if (!docs) return [`${path}/${k}`];
    // Documented in several branches: undocumented only if no branch documents the nested keys.
    const perBranch = docs.map((d) => undocumentedKeys(d, v, `${path}/${k}`));
    return perBranch.reduce((a, b) => (a.length <= b.length ? a : b));
  });
}

/** The JSON response schema GitHub documents for an operation and status, if any. */
export function responseSchema(spec: Spec, template: string, method: string, status: number): Schema | undefined {
  const op = spec.paths[template]?.[method.toLowerCase()];
  return op?.responses[String(status)]?.content?.["application/json"]?.schema;
}
