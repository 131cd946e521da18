-- Tamper evidence (DESIGN.md §11): every record committed (event,
-- erasure, catalog apply) is linked into one hash chain under the commit
-- lock. An erasure deletes the record and sets its salt to NULL; the
-- link (sequence, leaf, chain) stays. A database from before is linked
-- once by the first node that opens it (records then have no salt).
CREATE TABLE consentd.chain (
    sequence bigint   PRIMARY KEY,
    kind     smallint NOT NULL,
    salt     bytea    CHECK (length(salt) = 16),
    leaf     bytea    NOT NULL CHECK (length(leaf) = 32),
    chain    bytea    NOT NULL CHECK (length(chain) = 32),
    body     bytea    NOT NULL
);
ALTER TABLE consentd.meta
    ADD COLUMN chain_sequence bigint,
    ADD COLUMN chain_head     bytea CHECK (length(chain_head) = 32);

-- Signed checkpoints of the chain (C2SP signed notes), by the sequence
-- they cover. The signing key is never stored here.
CREATE TABLE consentd.checkpoints (
    sequence bigint PRIMARY KEY,
    note     text   NOT NULL
);
