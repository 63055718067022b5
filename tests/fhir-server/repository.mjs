// Storage for the test FHIR server: Medplum's MemoryRepository, with four additions a FHIR server
// needs and the in-memory class leaves out.
//
// 1. Every create and update is validated against the R4 StructureDefinitions (@medplum/core
//    validateResource); an invalid resource is refused with a 400 OperationOutcome naming the element.
// 2. A transaction is all or nothing (FHIR R4 http.html#transaction): MemoryRepository.withTransaction
//    only runs its callback, so a failed transaction Bundle would keep its earlier entries. Here the
//    first write to each resource inside a transaction records that resource's prior state, and a
//    failure puts exactly those back.
// 3. Instance history newest first (R4 http.html#history) without reordering the store: Medplum
//    5.2.13's readHistory reverses its stored version list in place, so every other call would answer
//    oldest first.
// 4. Paging without a new search per page (R4 search.html#paging: the server keeps a result set for
//    its next links): MemoryRepository.search matches, sorts and deep-copies every match of the query
//    and then slices one page, so reading 10,000 matches 1,000 at a time did that work ten times
//    (~0.2 s a page). Here a search's whole result, as Medplum computes it, is kept per query (all
//    but _offset and _count) and each page is a slice of it, for as long as nothing is written: any
//    write starts a new generation and the next search runs again.
//
// Versions, ids, conditional create and search matching are Medplum's own. The prior state is read
// from MemoryRepository's two storage maps (`resources`, `history`: type -> id -> current resource /
// versions oldest first); `assertStorageLayout` checks at start-up that they are still there.
import { getStatus, validateResource } from '@medplum/core';
import { MemoryRepository } from '@medplum/fhir-router';

/** Queries whose whole result is kept for paging (least recently used dropped first). */
const MAX_KEPT_RESULTS = 16;

export class ValidatingRepository extends MemoryRepository {
  /** `type/id` -> {current, versions} as they were before the running transaction first wrote it. */
  #journal = undefined;
  #transactionDepth = 0;
  /** Counts writes; a kept search result is used only in the generation that computed it. */
  #generation = 0;
  /** query key -> {generation, entry, total}: the whole result of a search, in Medplum's order. */
  #results = new Map();

  /** Fails fast when the Medplum release no longer keeps its storage in the maps read here. */
  assertStorageLayout() {
    if (!(this.resources instanceof Map) || !(this.history instanceof Map)) {
      throw new Error('MemoryRepository storage layout changed: rollback of failed transactions needs an update');
    }
  }

  // MemoryRepository.updateResource and patchResource both end here (update = true).
  async createResource(resource, options, update = false) {
    validateResource(resource);
    if (resource.id) {
      this.#remember(resource.resourceType, resource.id);
    }
    this.#generation++;
    const stored = await super.createResource(resource, options, update);
    this.#remember(stored.resourceType, stored.id, { existedBefore: Boolean(resource.id) });
    return stored;
  }

  // MemoryRepository.conditionalCreate stores through a private method, not createResource.
  async conditionalCreate(resource, search, options) {
    validateResource(resource);
    this.#generation++;
    const result = await super.conditionalCreate(resource, search, options);
    if (getStatus(result.outcome) === 201) {
      this.#remember(result.resource.resourceType, result.resource.id, { existedBefore: false });
    }
    return result;
  }

  async deleteResource(resourceType, id, options) {
    this.#remember(resourceType, id);
    this.#generation++;
    return super.deleteResource(resourceType, id, options);
  }

  clear() {
    this.#generation++;
    super.clear();
  }

  /**
   * One page of a search: a slice of the query's whole result, computed by MemoryRepository.search
   * once per generation. `_include`/`_revinclude` (added per page) and `_summary=count` go to Medplum
   * as they are.
   */
  async search(searchRequest) {
    if (searchRequest.include || searchRequest.revInclude || searchRequest.count === 0) {
      return super.search(searchRequest);
    }
    const { offset = 0, count, ...query } = searchRequest;
    const key = JSON.stringify(query);
    let result = this.#results.get(key);
    this.#results.delete(key);
    if (result?.generation !== this.#generation) {
      const generation = this.#generation;
      const found = await super.search(query);
      result = { generation, entry: found.entry ?? [], total: found.total };
    }
    this.#results.set(key, result);
    if (this.#results.size > MAX_KEPT_RESULTS) {
      this.#results.delete(this.#results.keys().next().value);
    }
    const entry = result.entry.slice(offset, count === undefined ? undefined : offset + count);
    return { resourceType: 'Bundle', type: 'searchset', ...(entry.length ? { entry } : {}), total: result.total };
  }

  async readHistory(resourceType, id, options = {}) {
    await this.readResource(resourceType, id); // 404 when there is no such resource
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    const offset = options.offset ?? 0;
    const page = versions.slice(offset, options.limit === undefined ? undefined : offset + options.limit);
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      ...(page.length ? { entry: page.map((version) => ({ resource: structuredClone(version) })) } : {}),
    };
  }

  async withTransaction(callback) {
    if (this.#transactionDepth > 0) {
      return callback(this);
    }
    this.#journal = new Map();
    this.#transactionDepth++;
    try {
      return await callback(this);
    } catch (err) {
      this.#rollBack();
      throw err;
    } finally {
      this.#transactionDepth--;
      this.#journal = undefined;
    }
  }

  /**
   * Records a resource's state before its first write in the running transaction. A resource that
   * a write has just created gets `existedBefore: false` (rolled back by removing it); otherwise its
   * current copy and version list are kept as they are now.
   */
  #remember(resourceType, id, { existedBefore = true } = {}) {
    const key = `${resourceType}/${id}`;
    if (!this.#journal || this.#journal.has(key)) {
      return;
    }
    if (!existedBefore) {
      this.#journal.set(key, { resourceType, id, current: undefined, versions: undefined });
      return;
    }
    this.#journal.set(key, {
      resourceType,
      id,
      current: this.resources.get(resourceType)?.get(id),
      versions: this.history.get(resourceType)?.get(id)?.slice(),
    });
  }

  #rollBack() {
    this.#generation++;
    for (const { resourceType, id, current, versions } of this.#journal.values()) {
      restoreEntry(this.resources, resourceType, id, current);
      restoreEntry(this.history, resourceType, id, versions);
    }
  }
}

function restoreEntry(store, resourceType, id, value) {
  if (value === undefined) {
    store.get(resourceType)?.delete(id);
    return;
  }
  if (!store.has(resourceType)) {
    store.set(resourceType, new Map());
  }
  store.get(resourceType).set(id, value);
}
