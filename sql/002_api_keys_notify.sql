-- Every change to api_keys notifies channel sluice_api_keys, once per
-- statement (a bulk update is one notification); each sluice instance
-- LISTENs and reloads within 2 s. NOTIFY is delivered at commit, so a
-- reload sees the committed rows.
CREATE FUNCTION sluice_api_keys_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('sluice_api_keys', TG_OP);
  RETURN NULL;
END;
$$;

CREATE TRIGGER sluice_api_keys_changed
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
FOR EACH STATEMENT EXECUTE FUNCTION sluice_api_keys_notify();

-- updated_at follows every update, for people auditing the table.
CREATE FUNCTION sluice_api_keys_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;

CREATE TRIGGER sluice_api_keys_touch
BEFORE UPDATE ON api_keys
FOR EACH ROW EXECUTE FUNCTION sluice_api_keys_touch();
