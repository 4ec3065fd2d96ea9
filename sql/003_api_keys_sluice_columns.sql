-- Columns sluice reads beyond SPEC §8's table (added, none renamed), the
-- same settings a keys-file entry has. NULL: as if absent.
ALTER TABLE api_keys
  ADD COLUMN burst_bytes bigint,            -- NULL: limits.default_burst_bytes
  ADD COLUMN topic       text;              -- NULL: kafka.topic
