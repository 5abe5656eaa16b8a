// Checks the requests the fake receives against GitHub's OpenAPI description (@octokit/openapi,
// api.github.com): each operation's query `parameters` and JSON `requestBody` schema, with Ajv,
// compiled once per operation (per process). The fake refuses what does not conform with GitHub's
// 422 and records it (Router.invalid), so that jitrunner cannot drift from the real API unseen.
import { createRequire } from "node:module";
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import addFormats from "ajv-formats";
import { toJsonSchema } from "./openapi-check.ts";

type Schema = Record<string, unknown>;
interface Parameter {
  name: string;
  in: string;
  required?: boolean;
  description?: string;
  schema?: Schema;
}
interface Operation {
  parameters?: Array<Parameter | { $ref: string }>;
  requestBody?: { required?: boolean; content?: Record<string, { schema?: Schema }> } | { $ref: string };
  externalDocs?: { url?: string };
}
interface RawSpec {
  paths: Record<string, Record<string, Operation>>;
  components: Record<string, Record<string, unknown>>;
}

/** What is wrong with a request: a JSON body that does not parse (400), or what the schemas refuse (422). */
export interface RequestProblem {
  status: 400 | 422;
  problems: string[];
  documentationUrl: string;
}

export interface RequestCheck {
  /** Problems of a request to this operation; undefined when it conforms. */
  (query: URLSearchParams, raw: Buffer): RequestProblem | undefined;
}

// The description with its $refs, not the dereferenced one: a fifth of the size (13 MB, parsed in
// about 0.2 s), loaded once per process; only the operations the fake serves are resolved.
let spec: RawSpec | undefined;
function rawSpec(): RawSpec {
  spec ??= createRequire(import.meta.url)("@octokit/openapi/generated/api.github.com.json") as RawSpec;
  return spec;
}

/** `node` with every local `$ref` replaced by its target (a recursive schema stops at the repeat: any value). */
function resolve(node: unknown, root: RawSpec, seen: readonly string[] = []): unknown {
  if (Array.isArray(node)) return node.map((n) => resolve(n, root, seen));
  if (!node || typeof node !== "object") return node;
  const ref = (node as { $ref?: unknown }).$ref;
  if (typeof ref === "string") {
    if (seen.includes(ref)) return {};
    const target = ref
      .replace(/^#\//, "")
      .split("/")
      .reduce<unknown>((at, key) => (at as Record<string, unknown> | undefined)?.[key.replace(/~1/g, "/").replace(/~0/g, "~")], root);
    if (target === undefined) throw new Error(`request-check: unresolved $ref ${ref}`);
    return resolve(target, root, [...seen, ref]);
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) out[k] = resolve(v, root, seen);
  return out;
}

// Query values arrive as strings: coerced to the documented types. Formats are not checked there
// (`created` is documented as date-time but takes GitHub's search range syntax, `>=2024-01-01`).
const queryAjv = new Ajv({ strict: false, allErrors: true, coerceTypes: true, validateFormats: false, verbose: true, logger: false });
// Bodies are JSON: no coercion (a string runner_group_id is refused, as GitHub refuses it).
const bodyAjv = new Ajv({ strict: false, allErrors: true, validateFormats: true, verbose: true, logger: false });
addFormats.default(bodyAjv);

const checks = new Map<string, RequestCheck>();

/**
 * The check of one operation (`method` and OpenAPI path template), compiled on first use and kept
 * for the process. Throws when GitHub's description has no such operation.
 */
export function requestCheck(method: string, template: string): RequestCheck {
  const key = `${method.toUpperCase()} ${template}`;
  let check = checks.get(key);
  if (!check) checks.set(key, (check = compileCheck(method, template)));
  return check;
}

function compileCheck(method: string, template: string): RequestCheck {
  const root = rawSpec();
  const op = root.paths[template]?.[method.toLowerCase()];
  if (!op) throw new Error(`request-check: ${method} ${template} is not in api.github.com's OpenAPI description`);
  const documentationUrl = op.externalDocs?.url ?? "https://docs.github.com/rest";

  const params = (op.parameters ?? []).map((p) => resolve(p, root) as Parameter).filter((p) => p.in === "query");
  const properties: Record<string, unknown> = {};
  for (const p of params) {
    const schema = { ...(toJsonSchema(p.schema ?? {}) as Schema) };
    // "The number of results per page (max 100)": a limit the description states in words only.
    const max = /\(max (\d+)\)/.exec(p.description ?? "")?.[1];
    if (max !== undefined && schema.maximum === undefined) schema.maximum = Number(max);
    properties[p.name] = schema;
  }
  const queryValidate = queryAjv.compile({
    type: "object",
    properties,
    required: params.filter((p) => p.required).map((p) => p.name),
    additionalProperties: false,
  });

  const body = op.requestBody ? (resolve(op.requestBody, root) as { required?: boolean; content?: Record<string, { schema?: Schema }> }) : undefined;
  const bodySchema = body?.content?.["application/json"]?.schema;
  let bodyValidate: ValidateFunction | undefined;
  if (bodySchema) {
    const schema = { ...(toJsonSchema(bodySchema) as Schema) };
    // An unknown field is refused: GitHub ignores some and refuses others ("is not a permitted key"),
    // and a field GitHub ignores is a setting jitrunner thinks it made and did not.
    const composed = ["allOf", "anyOf", "oneOf"].some((k) => k in schema);
    if (schema.type === "object" && schema.properties && schema.additionalProperties === undefined && !composed) schema.additionalProperties = false;
    bodyValidate = bodyAjv.compile(schema);
  }

  return (query, raw) => {
    const problems: string[] = [];
    const q: Record<string, string | string[]> = {};
    for (const name of new Set(query.keys())) {
      const all = query.getAll(name);
      q[name] = all.length === 1 ? (all[0] ?? "") : all;
    }
    if (!queryValidate(q)) problems.push(...(queryValidate.errors ?? []).map((e) => describe(e, "query")));

    let parsed: unknown;
    if (raw.length > 0) {
      try {
        parsed = JSON.parse(raw.toString("utf8"));
      } catch {
        return { status: 400, problems: ["Problems parsing JSON"], documentationUrl };
      }
    }
    if (bodyValidate) {
      const value = parsed ?? (body?.required ? {} : undefined);
      if (value !== undefined && !bodyValidate(value)) problems.push(...(bodyValidate.errors ?? []).map((e) => describe(e, "body")));
    } else if (parsed !== undefined && !(isObject(parsed) && Object.keys(parsed).length === 0)) {
      // An operation without a request body: any field sent is one GitHub does not take.
      problems.push(...(isObject(parsed) ? Object.keys(parsed).map((k) => `"${k}" is not a permitted key.`) : ["This operation takes no request body."]));
    }
    return problems.length > 0 ? { status: 422, problems, documentationUrl } : undefined;
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

const an = (type: string): string => (/^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`);

/**
 * One Ajv error as GitHub words a schema failure ("Invalid request." then lines such as
 * `"name" wasn't supplied.` or `For 'properties/runner_group_id', "1" is not an integer.`).
 */
function describe(e: ErrorObject, where: "query" | "body"): string {
  const params = e.params as Record<string, unknown>;
  if (e.keyword === "required") return `"${String(params.missingProperty)}" wasn't supplied.`;
  if (e.keyword === "additionalProperties") {
    const key = String(params.additionalProperty);
    return where === "query" ? `"${key}" is not a query parameter of this operation.` : `"${key}" is not a permitted key.`;
  }
  const segments = e.instancePath.split("/").slice(1).map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
  const at =
    where === "query"
      ? `query parameter '${segments.join("/")}'`
      : `'${segments.map((s) => (/^\d+$/.test(s) ? "items" : `properties/${s}`)).join("/") || "body"}'`;
  const value = show(e.data);
  if (e.keyword === "type") {
    const types = Array.isArray(params.type) ? (params.type as string[]) : [String(params.type)];
    return `For ${at}, ${value} is not ${types.map(an).join(" or ")}.`;
  }
  if (e.keyword === "enum") return `For ${at}, ${value} is not one of ${JSON.stringify(params.allowedValues)}.`;
  return `For ${at}, ${value} ${e.message ?? "is invalid"}.`;
}
