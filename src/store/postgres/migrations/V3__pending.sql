-- Double opt-in (DESIGN.md §7): a grant taken as pending is an event like
-- any other, flagged; what waits per (contact, consent) is kept in
-- `pending`, derived from the events each commit writes.
ALTER TABLE consentd.events
    ADD COLUMN pending           boolean NOT NULL DEFAULT false,
    ADD COLUMN confirmed         boolean NOT NULL DEFAULT false,
    ADD COLUMN confirmation_link boolean NOT NULL DEFAULT false;

CREATE TABLE consentd.pending (
    contact text    NOT NULL,
    consent text    NOT NULL,
    count   integer NOT NULL,
    last_at bigint  NOT NULL,
    link_at bigint  NOT NULL,
    PRIMARY KEY (contact, consent)
);
