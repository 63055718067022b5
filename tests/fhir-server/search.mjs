// Search requests for the test FHIR server (FHIR R4 search.html): what Medplum's in-memory matcher
// can answer correctly, the page size, and the searchset Bundle's paging links.
//
// MemoryRepository matches with @medplum/core's matchesSearchRequest, which evaluates reference,
// token, string, uri and date parameters and quietly matches nothing (or everything) for the rest.
// A server that answers such a search with a wrong result is worse than one that refuses it, so a
// parameter or modifier outside that set is answered with 400 and an OperationOutcome naming it.
// One difference stays and is documented in README.md: a string parameter matches anywhere in the
// value (Medplum's matcher), where R4 asks for "starts with".
import {
  OperationOutcomeError,
  badRequest,
  getExpressionForResourceType,
  globalSchema,
  parseSearchRequest,
} from '@medplum/core';

/** Modifiers (search.html#modifiers) the matcher evaluates, by parameter type; '' is none. */
const MODIFIERS = {
  reference: new Set(['', 'missing', 'not']),
  token: new Set(['', 'missing', 'not']),
  string: new Set(['', 'missing', 'contains']),
  uri: new Set(['', 'missing']),
  date: new Set(['', 'missing']),
};

/** Result parameters (search.html#return) handled by Medplum's router and repository. */
const RESULT_PARAMETERS = new Set(['_count', '_offset', '_sort', '_include', '_revinclude', '_total']);

/**
 * Gives each resource type its own copy of every search parameter shared by several types, whose
 * FHIRPath expression keeps only the union members for that type (Medplum's
 * getExpressionForResourceType, the reduction its PostgreSQL server indexes with). The R4 definitions
 * write a shared parameter as one union over all its base types: `patient` is 32 members such as
 * `AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...`, and the in-memory
 * matcher evaluates the whole union for every stored resource, ~1 ms each. A member rooted at another
 * type yields nothing for this one, so the matches are the same. Run once, after the definitions are
 * indexed.
 */
export function useTypeExpressions() {
  for (const [resourceType, schema] of Object.entries(globalSchema.types)) {
    for (const [code, param] of Object.entries(schema.searchParams ?? {})) {
      if ((param.base?.length ?? 0) < 2 || typeof param.expression !== 'string') {
        continue;
      }
      const expression = getExpressionForResourceType(resourceType, param.expression);
      if (expression && expression !== param.expression) {
        schema.searchParams[code] = { ...param, expression };
      }
    }
  }
}

function refuse(message) {
  return new OperationOutcomeError(badRequest(message));
}

function nonNegativeInteger(name, raw) {
  if (!/^\d{1,9}$/.test(raw)) {
    throw refuse(`${name} must be a non-negative integer, not "${raw}"`);
  }
  return Number.parseInt(raw, 10);
}

/**
 * The search criteria of `params` for `resourceType`, checked and normalised: a reference
 * parameter's type modifier (`subject:Patient=1`) becomes the equivalent typed value
 * (`subject=Patient/1`, search.html#reference). Throws a 400 OperationOutcomeError for anything the
 * matcher cannot evaluate. Used for searches and for conditional-create criteria alike.
 */
export function checkedCriteria(resourceType, params) {
  const searchParams = globalSchema.types[resourceType]?.searchParams ?? {};
  const out = new URLSearchParams();
  for (const [key, value] of params) {
    const [code, modifier = ''] = key.split(':', 2);
    if (RESULT_PARAMETERS.has(code)) {
      out.append(key, value);
      continue;
    }
    if (code === '_summary') {
      if (value !== 'count' && value !== 'false') {
        throw refuse(`_summary=${value} is not supported by this server (only count and false)`);
      }
      if (value === 'count') {
        out.append(key, value);
      }
      continue;
    }
    if (code === '_format') {
      if (!['json', 'application/json', 'application/fhir+json'].includes(value)) {
        throw refuse(`_format "${value}" is not supported: this server answers JSON only`);
      }
      continue;
    }
    if (key.includes('.') && !code.startsWith('_')) {
      out.append(key, value); // forward chain (search.html#chaining): MemoryRepository resolves it
      continue;
    }
    const definition = searchParams[code];
    if (!definition) {
      throw refuse(`Unknown or unsupported search parameter "${code}" for ${resourceType}`);
    }
    const allowed = MODIFIERS[definition.type];
    if (!allowed) {
      throw refuse(`Search parameter "${code}" has type ${definition.type}, which this server cannot evaluate`);
    }
    if (definition.type === 'reference' && (definition.target ?? []).includes(modifier)) {
      if (value.includes('/')) {
        throw refuse(`"${key}=${value}": with a type modifier the value is an id, not a reference`);
      }
      out.append(code, `${modifier}/${value}`);
      continue;
    }
    if (!allowed.has(modifier)) {
      throw refuse(`Modifier :${modifier} on "${code}" (${definition.type}) is not supported by this server`);
    }
    out.append(key, value);
  }
  const parsed = parseSearchRequest(resourceType, groupedQuery(out)); // Medplum's own value checks
  for (const rule of parsed.sortRules ?? []) {
    if (!searchParams[rule.code]) {
      throw refuse(`Unknown sort parameter "${rule.code}" for ${resourceType}`);
    }
  }
  return out;
}

/**
 * Search criteria plus the page: `_count` defaulted to `limits.defaultCount` and capped at
 * `limits.maxCount`, `_offset` checked.
 */
export function pagedCriteria(resourceType, params, limits) {
  const out = checkedCriteria(resourceType, params);
  const count = out.get('_summary') === 'count' ? 0 : out.has('_count')
    ? nonNegativeInteger('_count', out.get('_count'))
    : limits.defaultCount;
  out.set('_count', String(Math.min(count, limits.maxCount)));
  if (out.has('_offset')) {
    nonNegativeInteger('_offset', out.get('_offset'));
  }
  return out;
}

/** `URLSearchParams` as the record FhirRouter and parseSearchRequest take (repeats become arrays). */
export function groupedQuery(params) {
  const grouped = {};
  for (const [key, value] of params) {
    grouped[key] = key in grouped ? [].concat(grouped[key], value) : value;
  }
  return grouped;
}

/**
 * The searchset Bundle for the client (search.html#paging, bundle.html#searchset): each entry with its
 * fullUrl and search mode, `self`/`first`/`previous`/`next` links on the same query.
 */
export function searchsetBundle(found, { base, resourceType, query }) {
  const count = Number.parseInt(query.get('_count'), 10);
  const offset = Number.parseInt(query.get('_offset') ?? '0', 10);
  const pageUrl = (pageOffset) => {
    const page = new URLSearchParams(query);
    page.delete('_offset');
    if (pageOffset > 0) {
      page.set('_offset', String(pageOffset));
    }
    return `${base}/${resourceType}?${page}`;
  };
  const link = [{ relation: 'self', url: pageUrl(offset) }];
  if (count > 0) {
    link.push({ relation: 'first', url: pageUrl(0) });
    if (offset > 0) {
      link.push({ relation: 'previous', url: pageUrl(Math.max(0, offset - count)) });
    }
    if (found.total !== undefined && offset + count < found.total) {
      link.push({ relation: 'next', url: pageUrl(offset + count) });
    }
  }
  const entry = (found.entry ?? []).map(({ resource, search }) => ({
    fullUrl: `${base}/${resource.resourceType}/${resource.id}`,
    resource,
    search: { mode: resource.resourceType === resourceType ? (search?.mode ?? 'match') : 'include' },
  }));
  return {
    resourceType: 'Bundle',
    id: crypto.randomUUID(),
    meta: { lastUpdated: new Date().toISOString() },
    type: 'searchset',
    ...(found.total !== undefined ? { total: found.total } : {}),
    link,
    ...(entry.length ? { entry } : {}),
  };
}
