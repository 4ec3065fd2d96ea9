-- The API-key table of SPEC §8, exactly. Other tools write to it; sluice
-- only reads it. Raw keys are never stored: key_sha256 is SHA-256 of the key.
CREATE TABLE api_keys (
  key_sha256          bytea PRIMARY KEY,      -- SHA-256 of the raw key; raw keys are never stored
  key_prefix          text,                   -- first characters, for people to recognise a key
  tenant_id           text NOT NULL,
  project_id          text,
  enabled             boolean NOT NULL DEFAULT true,
  rate_events_per_sec integer,                -- NULL: the configured default
  burst_events        integer,
  rate_bytes_per_sec  bigint,
  expires_at          timestamptz,
  revoked_at          timestamptz,
  updated_at          timestamptz NOT NULL DEFAULT now()
);
