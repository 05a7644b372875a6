-- One database per shard. Written only by that shard's worker (advisory-lock fenced).
CREATE TABLE IF NOT EXISTS meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS currencies (
    code     text PRIMARY KEY,
    exponent smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4)
);
CREATE TABLE IF NOT EXISTS partners (
    id                 text PRIMARY KEY,
    name               text NOT NULL,
    secret_sha256      text NOT NULL,
    settlement_account text NOT NULL,
    created_at_ms      bigint NOT NULL,
    -- an override of the gateways' default rate limit (NULL: the default)
    rate_limit_rps     integer CHECK (rate_limit_rps > 0),
    rate_limit_burst   integer CHECK (rate_limit_burst > 0)
);
-- Cut-off (ShardState.partner_action): a disabled partner's tokens are refused and it gets
-- no new ones; tokens issued at or before tokens_valid_after_ms are refused; a rotated
-- secret's predecessor stays valid until previous_secret_until_ms (or its retirement).
ALTER TABLE partners ADD COLUMN IF NOT EXISTS disabled_at_ms bigint;
ALTER TABLE partners ADD COLUMN IF NOT EXISTS tokens_valid_after_ms bigint;
ALTER TABLE partners ADD COLUMN IF NOT EXISTS previous_secret_sha256 text;
ALTER TABLE partners ADD COLUMN IF NOT EXISTS previous_secret_until_ms bigint;
-- The audit trail of those actions: who, when, what (the notifier turns each into an event
-- of the partner's feed, evt_<shard>_p<seq>).
CREATE TABLE IF NOT EXISTS partner_events (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id text NOT NULL REFERENCES partners (id),
    action     text NOT NULL,
    actor      text NOT NULL,
    at_ms      bigint NOT NULL,
    details    jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS partner_events_partner ON partner_events (partner_id, seq);
CREATE TABLE IF NOT EXISTS accounts (
    id             text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('customer', 'settlement', 'funding', 'clearing')),
    currency       text NOT NULL REFERENCES currencies (code),
    balance_minor  bigint NOT NULL,
    allow_negative boolean NOT NULL,
    partner_id     text,
    created_at_ms  bigint NOT NULL,
    CHECK (allow_negative OR balance_minor >= 0)
);
-- Agreements (mandates): ledger/agreements.py decides their lifecycle and limits.
-- periodic_limits: [{"period", "alignment", "amount_minor"}]; spend per window is
-- rebuilt from the journal at start-up (ledger/pg.py load_state), never stored.
CREATE TABLE IF NOT EXISTS agreements (
    id                      text PRIMARY KEY,
    partner_id              text NOT NULL,
    debtor_account          text NOT NULL REFERENCES accounts (id),
    currency                text NOT NULL,
    per_payment_limit_minor bigint NOT NULL CHECK (per_payment_limit_minor > 0),
    periodic_limits         jsonb NOT NULL,
    status                  text NOT NULL CHECK (status IN
                                ('AwaitingAuthorisation', 'Authorised', 'Rejected', 'Suspended', 'Revoked')),
    created_at_ms           bigint NOT NULL,
    valid_from_ms           bigint,
    valid_to_ms             bigint,
    status_updated_at_ms    bigint NOT NULL,
    CHECK (valid_to_ms IS NULL OR valid_from_ms IS NULL OR valid_from_ms <= valid_to_ms)
);
-- Pending expiry: an agreement still AwaitingAuthorisation after authorise_by_ms reads
-- Expired (derived at read time, like valid_to; NULL: no pending expiry). The notifier looks
-- for those (agreement.expired) through the partial index.
ALTER TABLE agreements ADD COLUMN IF NOT EXISTS authorise_by_ms bigint;
CREATE INDEX IF NOT EXISTS agreements_authorise_by ON agreements (authorise_by_ms)
    WHERE status = 'AwaitingAuthorisation';
-- Every transition of an agreement: who, when, from, to.
CREATE TABLE IF NOT EXISTS agreement_events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agreement_id text NOT NULL REFERENCES agreements (id),
    from_status  text,                 -- NULL: the creation
    to_status    text NOT NULL,
    actor        text NOT NULL,
    at_ms        bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS agreement_events_agreement ON agreement_events (agreement_id, seq);
-- The notifier looks for agreements whose valid_to has passed (agreement.expired) several
-- times a second: only agreements with a validity end are in this index.
CREATE INDEX IF NOT EXISTS agreements_valid_to ON agreements (valid_to_ms) WHERE valid_to_ms IS NOT NULL;
-- The journal. Every row debits one account and credits another by one positive
-- amount; Rejected rows are recorded answers that moved no money.
CREATE TABLE IF NOT EXISTS transfers (
    id               text PRIMARY KEY,
    seq              bigint NOT NULL UNIQUE,
    kind             text NOT NULL,
    debit_account    text NOT NULL,
    credit_account   text NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    currency         text NOT NULL,
    status           text NOT NULL,
    created_at_ms    bigint NOT NULL,
    partner_id       text,
    agreement_id     text,
    reference        text,
    creditor_account text,
    reasons          text[] NOT NULL,
    fraud            jsonb,
    body_hash        text,
    device_id        text,
    ip               text,
    -- payments: what succeeded refunds returned (refunds only raise it, never past the amount)
    refunded_minor   bigint NOT NULL DEFAULT 0,
    -- a Rejected payment's limit and period; a refund's payment_id and reason
    details          jsonb,
    CHECK (debit_account <> credit_account),
    CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor)
);
-- An account's transactions (money-moving rows, newest first: pg.list_account_transfers).
-- Partial: Rejected rows moved no money and are never listed, so a partner that makes a
-- million rejected payments over an account adds nothing to the index a list walks (the
-- full (account, seq) indexes walked past every one of them). The audit's look at
-- clearing legs has the same predicate.
CREATE INDEX IF NOT EXISTS transfers_debit_moved ON transfers (debit_account, seq) WHERE status <> 'Rejected';
CREATE INDEX IF NOT EXISTS transfers_credit_moved ON transfers (credit_account, seq) WHERE status <> 'Rejected';
DROP INDEX IF EXISTS transfers_debit_seq;
DROP INDEX IF EXISTS transfers_credit_seq;
-- A partner's reconciliation file (pg.partner_day_transfers): its accepted payments and
-- succeeded refunds of one day, page by page in (created_at_ms, seq) order: one index range
-- per page, whatever other partners, other days or rejected rows hold.
CREATE INDEX IF NOT EXISTS transfers_partner_recon ON transfers (partner_id, created_at_ms, seq)
    WHERE kind IN ('payment', 'refund') AND status <> 'Rejected';
-- Start-up reloads read only a recent time window of the journal (today's agreement
-- spend in ledger/pg.py load_state; the fraud windows in ledger/fraud_port.py), so
-- restart time follows that window, not the journal's history. BRIN, not btree: rows
-- are appended in time order (credit legs carry their debtor shard's time, close to
-- it), so a min/max summary per 128 pages finds the window. An insert costs a
-- lookup in the range map (the range being filled is not summarized yet; autovacuum
-- summarizes each full range once), where a btree would add an index entry and its
-- WAL per row. Idempotent on existing databases (built once, at the first start).
CREATE INDEX IF NOT EXISTS transfers_created_brin ON transfers USING brin (created_at_ms)
    WITH (autosummarize = on);
-- Payments the fraud filter flagged (a rule fired, or not a plain allow: fraud is NULL for
-- the rest): GET /admin/v1/fraud/decisions?decision=block reads these, newest first, and no
-- plain payment. Only flagged rows get an entry, so the payment path pays for it rarely.
CREATE INDEX IF NOT EXISTS transfers_flagged ON transfers (seq) WHERE fraud IS NOT NULL;
-- Credit legs still to deliver to other shards, written with their debit leg.
CREATE TABLE IF NOT EXISTS outbox (
    transfer_id      text PRIMARY KEY REFERENCES transfers (id),
    target_shard     int NOT NULL,
    creditor_account text NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    currency         text NOT NULL,
    created_at_ms    bigint NOT NULL
);
-- Post-event monitor (in shard 0's database): a snapshot of its engine state with the
-- journal position per source shard it reflects, and the alerts it raised.
CREATE TABLE IF NOT EXISTS monitor_snapshot (
    id        int PRIMARY KEY CHECK (id = 1),
    positions jsonb NOT NULL,
    state     jsonb NOT NULL,
    at_ms     bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id         text PRIMARY KEY,
    rule       text NOT NULL,
    account    text NOT NULL,
    at_ms      bigint NOT NULL,
    details    jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_account_rule_at ON alerts (account, rule, at_ms);
-- The newest alerts first (GET /admin/v1/fraud/alerts): a page, not a sort of all alerts.
CREATE INDEX IF NOT EXISTS alerts_at ON alerts (at_ms);
-- Notifications (notify/; used in shard 0's database, the control database, like alerts).
-- Events produced from every shard's committed journal; seq orders a partner's feed.
CREATE TABLE IF NOT EXISTS events (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            text NOT NULL UNIQUE,          -- stable: derived from the journal row
    partner_id    text NOT NULL,
    type          text NOT NULL,
    created_at_ms bigint NOT NULL,
    body          text NOT NULL                  -- the JSON delivered and listed, byte for byte
);
CREATE INDEX IF NOT EXISTS events_partner_seq ON events (partner_id, seq);
-- The feed filtered by type (GET /v1/events?type=): one index range, not a walk over the
-- partner's other events.
CREATE INDEX IF NOT EXISTS events_partner_type_seq ON events (partner_id, type, seq);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at_ms);
-- How far the producer has read each source (t<shard>: transfers.seq, a<shard>:
-- agreement_events.seq, x<shard>: the time up to which expiries were looked for).
CREATE TABLE IF NOT EXISTS event_positions (
    source   text PRIMARY KEY,
    position bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id                       text PRIMARY KEY,
    partner_id               text NOT NULL,
    url                      text NOT NULL,
    events                   text[] NOT NULL,
    secret                   text NOT NULL,   -- the HMAC key: it must be readable to sign
    previous_secret          text,            -- still signed with until previous_secret_until_ms
    previous_secret_until_ms bigint,
    created_at_ms            bigint NOT NULL,
    deleted_at_ms            bigint
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_partner ON webhook_endpoints (partner_id);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id        text NOT NULL REFERENCES webhook_endpoints (id),
    event_seq          bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    status             text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts           int NOT NULL DEFAULT 0,
    next_attempt_at_ms bigint NOT NULL,
    last_error         text,
    finished_at_ms     bigint,
    PRIMARY KEY (endpoint_id, event_seq)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms)
    WHERE status = 'pending';
-- Rows the notifier and the monitor could not read and skipped (ledger/rows.py), in shard
-- 0's database: one row per (reader, table, shard, key), so /metrics can count them
-- (quickpay_quarantined_rows_total) and a re-read after a restart counts nothing twice.
-- Shard workers and the gateways count theirs in memory (ping, the gateway's counter).
CREATE TABLE IF NOT EXISTS quarantined_rows (
    reader        text NOT NULL,
    source_table  text NOT NULL,
    shard         int NOT NULL,          -- -1: not known to the reader
    row_key       text NOT NULL,
    problem       text NOT NULL,
    first_seen_ms bigint NOT NULL,
    PRIMARY KEY (reader, source_table, shard, row_key)
);
-- Customer consent and portal (gateway/web/, ledger/consent_store.py), in shard 0's database
-- (the control database, like webhooks): none of it is on the payment path.
-- The exact redirect URIs a partner registered (PUT /admin/v1/partners/{id}/redirect-uris).
CREATE TABLE IF NOT EXISTS partner_redirect_uris (
    partner_id    text NOT NULL,
    uri           text NOT NULL,
    created_at_ms bigint NOT NULL,
    PRIMARY KEY (partner_id, uri)
);
-- The phone the bank sends a customer's one-time codes to (optional, one per account).
CREATE TABLE IF NOT EXISTS account_phones (
    account_id    text PRIMARY KEY,
    phone         text NOT NULL,
    updated_at_ms bigint NOT NULL
);
-- Authorisation links: the token is never stored, only its SHA-256; single use.
CREATE TABLE IF NOT EXISTS consent_links (
    token_sha256   text PRIMARY KEY,
    agreement_id   text NOT NULL,
    partner_id     text NOT NULL,
    account_id     text NOT NULL,
    redirect_uri   text NOT NULL,
    state          text,
    created_at_ms  bigint NOT NULL,
    expires_at_ms  bigint NOT NULL,
    used_at_ms     bigint,
    outcome        text
);
CREATE INDEX IF NOT EXISTS consent_links_created ON consent_links (created_at_ms);
CREATE INDEX IF NOT EXISTS consent_links_agreement ON consent_links (agreement_id);
-- One-time codes, stored as an HMAC keyed by the gateways' token key; scope says what the
-- code opens (one consent link, or the portal).
CREATE TABLE IF NOT EXISTS otp_codes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    text NOT NULL,
    scope         text NOT NULL,
    code_hmac     text NOT NULL,
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    tries_left    int NOT NULL CHECK (tries_left >= 0),
    used_at_ms    bigint
);
CREATE INDEX IF NOT EXISTS otp_codes_account ON otp_codes (account_id, created_at_ms);
CREATE INDEX IF NOT EXISTS otp_codes_created ON otp_codes (created_at_ms);
-- A customer's signed-in session (after a correct code), by the SHA-256 of its cookie.
CREATE TABLE IF NOT EXISTS customer_sessions (
    session_sha256 text PRIMARY KEY,
    account_id     text NOT NULL,
    scope          text NOT NULL,
    created_at_ms  bigint NOT NULL,
    expires_at_ms  bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS customer_sessions_created ON customer_sessions (created_at_ms);
-- The simulated SMS provider's outbox (gateway/web/sms.py): what a real provider would send.
CREATE TABLE IF NOT EXISTS sms_outbox (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone         text NOT NULL,
    account_id    text NOT NULL,
    body          text NOT NULL,
    created_at_ms bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS sms_outbox_created ON sms_outbox (created_at_ms);
-- ---- slot move staging (issue 21; ledger/slot_pg.py) --------------------------------------
-- A slot of an id, as kernel.slots.slot_of computes it: crc32 of its UTF-8 bytes mod 5,040
-- (SLOT_COUNT; tests/test_slot_pg.py checks both on many ids). Declared IMMUTABLE so that it
-- can index: convert_to is only STABLE, but converting to UTF8 in a UTF8 database (initdb's and
-- every quickpay database's encoding) returns the text's own bytes, whatever the session.
-- With it, a slot's customer accounts and the agreements of its debtors are one index range
-- each (both tables are rarely inserted; transfers, the hot insert, get no such index: a slot's
-- journal is found through the columns that name its accounts). crc32(bytea) is PostgreSQL
-- 18's: on an older server (--dsn) none of this is made, and only the slot move needs it.
DO $$
BEGIN
    IF to_regprocedure('crc32(bytea)') IS NOT NULL THEN
        CREATE OR REPLACE FUNCTION quickpay_slot_of(id text) RETURNS int
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
            AS $f$ SELECT (crc32(convert_to(id, 'UTF8')) % 5040)::int $f$;
        CREATE INDEX IF NOT EXISTS accounts_slot ON accounts (quickpay_slot_of(id)) WHERE kind = 'customer';
        CREATE INDEX IF NOT EXISTS agreements_debtor_slot ON agreements (quickpay_slot_of(debtor_account));
    END IF;
END
$$;
-- The target's staged copy of a slot (logged tables: a crashed target keeps it). One header
-- per slot: where the copy came from and the snapshot point (the source journal's highest seq
-- the copy has seen, and the staged payments still in process, whose status may yet change).
CREATE TABLE IF NOT EXISTS slot_staged (
    slot          int PRIMARY KEY,
    source_shard  int NOT NULL,
    through_seq   bigint NOT NULL,
    staged_at_ms  bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS slot_staged_accounts (
    slot int NOT NULL, LIKE accounts, PRIMARY KEY (slot, id)
);
CREATE TABLE IF NOT EXISTS slot_staged_agreements (
    slot int NOT NULL, LIKE agreements, PRIMARY KEY (slot, id)
);
CREATE TABLE IF NOT EXISTS slot_staged_agreement_events (
    slot int NOT NULL, source_seq bigint NOT NULL, agreement_id text NOT NULL, from_status text,
    to_status text NOT NULL, actor text NOT NULL, at_ms bigint NOT NULL, PRIMARY KEY (slot, source_seq)
);
-- seq here is the source's; the install gives each row a new one.
CREATE TABLE IF NOT EXISTS slot_staged_transfers (
    slot int NOT NULL, LIKE transfers, PRIMARY KEY (slot, id)
);
CREATE TABLE IF NOT EXISTS slot_staged_outbox (
    slot int NOT NULL, LIKE outbox, PRIMARY KEY (slot, transfer_id)
);
-- The credit-leg half of a cross-shard payment whose payment row is on this shard too (a move
-- joined them: transfers' primary key holds the payment). Same columns as transfers.
CREATE TABLE IF NOT EXISTS slot_joined_legs (
    LIKE transfers, PRIMARY KEY (id)
);
-- What each install put into the journal: the seq ranges its copied rows got here (transfers
-- and joined legs; agreement_events), so per-shard readers by seq (the notifier's positions,
-- the transaction pages' cursors) can tell a copy from a new decision.
CREATE TABLE IF NOT EXISTS slot_installs (
    seq                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot               int NOT NULL,
    source_shard       int NOT NULL,
    first_seq          bigint NOT NULL,
    last_seq           bigint NOT NULL,   -- first_seq - 1: no rows
    events_first_seq   bigint,
    events_last_seq    bigint,
    installed_at_ms    bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS slot_installs_slot ON slot_installs (slot, seq);
-- The source's redirects: an agreement or transfer id it gave away -> its slot (the slot map
-- names the slot's owner, so one hop after any number of moves).
CREATE TABLE IF NOT EXISTS slot_redirects (
    id            text PRIMARY KEY,
    slot          int NOT NULL,
    at_ms         bigint NOT NULL
);
-- ---- The slot map (issue 21; ledger/slot_map_store.py) ----------------------------------
-- In shard 0's database (the control database): every version of the authoritative map,
-- in kernel.slots.SlotMap's wire form, and the slot moves' coordinator records.
CREATE TABLE IF NOT EXISTS slot_maps (
    version       bigint PRIMARY KEY CHECK (version >= 1),
    map           jsonb NOT NULL,
    written_at_ms bigint NOT NULL
);
-- One row per move (ledger.slot_move.MoveRecord: slot, source, target, to_version, phase);
-- no process writes one yet.
CREATE TABLE IF NOT EXISTS slot_moves (
    slot          integer NOT NULL CHECK (slot >= 0),
    source_shard  integer NOT NULL,
    target_shard  integer NOT NULL,
    from_version  bigint NOT NULL,
    to_version    bigint NOT NULL,
    phase         text NOT NULL,
    started_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL,
    PRIMARY KEY (slot, to_version)
);
-- In every shard's database: the map this shard acts on (one row), adopted in the same
-- transaction as a move's install or release.
CREATE TABLE IF NOT EXISTS slot_map_held (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version       bigint NOT NULL CHECK (version >= 1),
    map           jsonb NOT NULL,
    adopted_at_ms bigint NOT NULL
);
