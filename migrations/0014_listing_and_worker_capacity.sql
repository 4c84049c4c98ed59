-- The batch listing (GET /v1/batches) pages newest first, and the workers
-- listing (GET /v1/workers) shows how many jobs each process takes on.

-- Pages of the listing walk this index from a (created_at, id) cursor.
CREATE INDEX batches_created ON batches (created_at DESC, id DESC);

-- KILN_WORKER_CONCURRENCY of the registered process: its job slots. NULL for
-- a process that registered before this column existed.
ALTER TABLE workers ADD COLUMN concurrency integer;
