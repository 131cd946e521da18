-- As-of reads (DESIGN.md §10): every catalog applied is kept with the time
-- it came into force (its catalog version orders them), so that a CanSend
-- as of a past time decides with the catalog in force then. The catalog in
-- force when this migration runs is kept as in force since the beginning.
-- A catalog applied takes a sequence in the change feed, like an event
-- (Watch streams it in its place); the one kept here at migration has none.
CREATE TABLE consentd.catalogs (
    version       bigint PRIMARY KEY,
    in_force_from bigint NOT NULL,
    catalog       jsonb  NOT NULL,
    sequence      bigint UNIQUE
);
CREATE INDEX catalogs_in_force_from ON consentd.catalogs (in_force_from);

INSERT INTO consentd.catalogs (version, in_force_from, catalog)
SELECT catalog_version, 0, catalog FROM consentd.meta WHERE catalog IS NOT NULL;
