-- An event's link lives in its own row, as on redb: one heap insert and
-- one index entry per event instead of two. `consentd.chain` keeps the
-- links of catalog applies and erasures, and those of events an erasure
-- deleted (salt NULL). A database linked under V5 moves its event links
-- here once; one from before the chain is linked at open, as before.
ALTER TABLE consentd.events
    ADD COLUMN link_salt  bytea CHECK (length(link_salt) = 16),
    ADD COLUMN link_leaf  bytea CHECK (length(link_leaf) = 32),
    ADD COLUMN link_chain bytea CHECK (length(link_chain) = 32);
UPDATE consentd.events e
    SET link_salt = c.salt, link_leaf = c.leaf, link_chain = c.chain
    FROM consentd.chain c
    WHERE c.sequence = e.sequence AND c.kind = 1;
DELETE FROM consentd.chain c USING consentd.events e WHERE c.sequence = e.sequence;
