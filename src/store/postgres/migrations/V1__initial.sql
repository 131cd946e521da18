-- consentd's tables, in their own schema. Times are Unix nanoseconds;
-- sequences are assigned in commit order under the lock of the meta row.
-- (The schema itself is created before the migrations run.)

-- One row: the sequence counter, the erasure key, the catalog in force.
CREATE TABLE consentd.meta (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_sequence bigint  NOT NULL,
    erasure_key   bytea   NOT NULL CHECK (length(erasure_key) = 32),
    catalog       jsonb
);

-- Every recorded decision, applied or superseded: the proof.
CREATE TABLE consentd.events (
    sequence        bigint   PRIMARY KEY,
    contact         text     NOT NULL,
    consent         text     NOT NULL,
    action          smallint NOT NULL,
    occurred_at     bigint   NOT NULL,
    recorded_at     bigint   NOT NULL,
    source          smallint NOT NULL,
    evidence        jsonb    NOT NULL,
    version         integer  NOT NULL,
    idempotency_key text,
    applied         boolean  NOT NULL,
    actor           text     NOT NULL
);
CREATE INDEX events_by_contact ON consentd.events (contact, sequence);

-- The state of each (contact, consent): its winning event.
CREATE TABLE consentd.states (
    contact     text     NOT NULL,
    consent     text     NOT NULL,
    action      smallint NOT NULL,
    occurred_at bigint   NOT NULL,
    recorded_at bigint   NOT NULL,
    source      smallint NOT NULL,
    version     integer  NOT NULL,
    sequence    bigint   NOT NULL,
    PRIMARY KEY (contact, consent)
);

-- Idempotency keys until their retention ends.
CREATE TABLE consentd.idempotency (
    key         text   PRIMARY KEY,
    sequence    bigint NOT NULL,
    recorded_at bigint NOT NULL,
    fingerprint bytea  NOT NULL
);
CREATE INDEX idempotency_by_time ON consentd.idempotency (recorded_at);

-- What stays of an erased contact: a keyed hash, the time, the reason.
CREATE TABLE consentd.erasures (
    hash      bytea  PRIMARY KEY,
    erased_at bigint NOT NULL,
    reason    text   NOT NULL
);

-- Every wording ever in force; never updated, never deleted.
CREATE TABLE consentd.wordings (
    consent       text    NOT NULL,
    version       integer NOT NULL,
    title         text    NOT NULL,
    text          text    NOT NULL,
    parent        text,
    channels      text[]  NOT NULL,
    brands        text[]  NOT NULL,
    in_force_from bigint  NOT NULL,
    PRIMARY KEY (consent, version)
);

-- Link keys, shared by every node: any node verifies any link.
CREATE TABLE consentd.link_keys (
    id         text   PRIMARY KEY,
    secret     bytea  NOT NULL,
    created_at bigint NOT NULL
);
