-- The change feed several nodes follow: erasures take a sequence like
-- events (older tombstones keep none), and every catalog change bumps a
-- version the nodes compare.
ALTER TABLE consentd.erasures ADD COLUMN sequence bigint;
CREATE INDEX erasures_by_sequence ON consentd.erasures (sequence);
ALTER TABLE consentd.meta ADD COLUMN catalog_version bigint NOT NULL DEFAULT 0;
