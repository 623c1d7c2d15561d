-- Sovrium database schema (internal schema version 1).
--
-- Static and idempotent: every statement can run again on a database that already has it.
-- The only DDL built at runtime are the per-table field indexes generated from the
-- configuration (ix_t<table>_f<field>, ux_..., see OPERATIONS.md §7.3).
-- History (revisions) is written by the triggers below and by nothing else.

-- Key/value store: generated AUTH_SECRET, housekeeping timestamps.
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value TEXT
) WITHOUT ROWID;

-- Exactly one row. Every write transaction sets it after BEGIN IMMEDIATE and clears it before
-- COMMIT; the history triggers refuse to run without it, so a write path that forgets it fails
-- instead of crediting the previous writer.
CREATE TABLE IF NOT EXISTS write_context (
  id         INTEGER PRIMARY KEY CHECK (id = 1),
  actor_id   TEXT,
  now        TEXT,
  request_id TEXT
);
INSERT OR IGNORE INTO write_context (id) VALUES (1);

-- Registry of table ids (CONFIG.md §3). Ids are never reused.
CREATE TABLE IF NOT EXISTS app_tables (
  id         INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  removed_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS app_tables_live_name ON app_tables (name) WHERE removed_at IS NULL;

-- Registry of field ids per table (CONFIG.md §4).
CREATE TABLE IF NOT EXISTS app_fields (
  table_id   INTEGER NOT NULL REFERENCES app_tables (id),
  id         INTEGER NOT NULL,
  name       TEXT NOT NULL,
  type       TEXT NOT NULL,
  removed_at TEXT,
  PRIMARY KEY (table_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS app_fields_live_name ON app_fields (table_id, name) WHERE removed_at IS NULL;

-- Records of every table; values keyed by stable field id ("f<id>").
CREATE TABLE IF NOT EXISTS records (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  table_id   INTEGER NOT NULL REFERENCES app_tables (id),
  data       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data) AND json_type(data) = 'object'),
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  deleted_at TEXT,
  created_by TEXT,
  updated_by TEXT,
  deleted_by TEXT
);
CREATE INDEX IF NOT EXISTS records_by_table ON records (table_id, deleted_at, id);
CREATE INDEX IF NOT EXISTS records_by_updated ON records (table_id, deleted_at, updated_at);

-- Live and trashed record counts per table, kept by the triggers below, so that an unfiltered
-- list answers its `total` without counting the table.
CREATE TABLE IF NOT EXISTS record_counts (
  table_id INTEGER PRIMARY KEY,
  live     INTEGER NOT NULL DEFAULT 0,
  trashed  INTEGER NOT NULL DEFAULT 0
);

-- The number of revisions, kept by triggers, so the activity log's unfiltered total is instant.
CREATE TABLE IF NOT EXISTS revision_counts (
  id    INTEGER PRIMARY KEY CHECK (id = 1),
  total INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO revision_counts (id, total) VALUES (1, 0);

-- Revisions: one row per insert, update, soft delete, restore and purge of a record.
-- Doubles as the activity log.
CREATE TABLE IF NOT EXISTS revisions (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  table_id   INTEGER NOT NULL,
  record_id  INTEGER NOT NULL,
  action     TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete', 'restore', 'purge')),
  before     TEXT,
  after      TEXT,
  actor_id   TEXT,
  created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS revisions_by_record ON revisions (record_id, id);
CREATE INDEX IF NOT EXISTS revisions_by_table ON revisions (table_id, id);
CREATE INDEX IF NOT EXISTS revisions_by_time ON revisions (created_at);
CREATE INDEX IF NOT EXISTS revisions_by_actor ON revisions (actor_id);

-- Autonumber counters.
CREATE TABLE IF NOT EXISTS sequences (
  table_id   INTEGER NOT NULL,
  field_id   INTEGER NOT NULL,
  last_value INTEGER NOT NULL,
  PRIMARY KEY (table_id, field_id)
) WITHOUT ROWID;

-- Derived index of to-many links (owning many-to-many relationships, multiple user fields).
-- The arrays in records.data stay the source of truth.
CREATE TABLE IF NOT EXISTS links (
  table_id  INTEGER NOT NULL,
  field_key TEXT NOT NULL,
  source_id INTEGER NOT NULL,
  target_id ANY NOT NULL,
  PRIMARY KEY (table_id, field_key, source_id, target_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_target ON links (table_id, field_key, target_id, source_id);

-- The owning to-many fields of the active configuration; rewritten on every configuration apply.
CREATE TABLE IF NOT EXISTS link_fields (
  table_id  INTEGER NOT NULL,
  field_key TEXT NOT NULL,
  PRIMARY KEY (table_id, field_key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS comments (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  table_id   INTEGER NOT NULL,
  record_id  INTEGER NOT NULL,
  user_id    TEXT,
  parent_id  INTEGER,
  content    TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  deleted_at TEXT
);
CREATE INDEX IF NOT EXISTS comments_by_record ON comments (record_id, id);

-- Authentication (Better Auth data model).
CREATE TABLE IF NOT EXISTS users (
  id             TEXT PRIMARY KEY,
  name           TEXT NOT NULL,
  email          TEXT NOT NULL UNIQUE,
  email_verified INTEGER NOT NULL DEFAULT 0,
  image          TEXT,
  role           TEXT NOT NULL DEFAULT 'member',
  banned         INTEGER NOT NULL DEFAULT 0,
  ban_reason     TEXT,
  ban_expires    TEXT,
  two_factor_enabled INTEGER NOT NULL DEFAULT 0,
  created_at     TEXT NOT NULL,
  updated_at     TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
  id          TEXT PRIMARY KEY,
  token       TEXT NOT NULL UNIQUE,
  user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  expires_at  TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  ip_address  TEXT,
  user_agent  TEXT,
  impersonated_by TEXT,
  active_organization_id TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);

CREATE TABLE IF NOT EXISTS accounts (
  id          TEXT PRIMARY KEY,
  user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  provider_id TEXT NOT NULL,
  account_id  TEXT NOT NULL,
  password    TEXT,
  access_token  TEXT,
  refresh_token TEXT,
  id_token    TEXT,
  scope       TEXT,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  UNIQUE (provider_id, account_id)
);
CREATE INDEX IF NOT EXISTS accounts_by_user ON accounts (user_id);

-- Verification tokens, OTPs and OAuth states; `value` holds a SHA-256 hash, never the secret.
CREATE TABLE IF NOT EXISTS verifications (
  id         TEXT PRIMARY KEY,
  identifier TEXT NOT NULL,
  value      TEXT NOT NULL,
  data       TEXT,
  attempts   INTEGER NOT NULL DEFAULT 0,
  expires_at TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verifications_by_identifier ON verifications (identifier);
CREATE INDEX IF NOT EXISTS verifications_by_value ON verifications (value);
CREATE INDEX IF NOT EXISTS verifications_by_expiry ON verifications (expires_at);

CREATE TABLE IF NOT EXISTS two_factors (
  user_id      TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
  secret       TEXT NOT NULL,
  backup_codes TEXT NOT NULL,
  verified     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS trusted_devices (
  id         TEXT PRIMARY KEY,
  user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  expires_at TEXT NOT NULL,
  created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS organizations (
  id         TEXT PRIMARY KEY,
  name       TEXT NOT NULL,
  slug       TEXT NOT NULL UNIQUE,
  logo       TEXT,
  metadata   TEXT,
  created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS members (
  id              TEXT PRIMARY KEY,
  organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  role            TEXT NOT NULL,
  created_at      TEXT NOT NULL,
  UNIQUE (organization_id, user_id)
);

CREATE TABLE IF NOT EXISTS invitations (
  id              TEXT PRIMARY KEY,
  organization_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  email           TEXT NOT NULL,
  role            TEXT NOT NULL,
  status          TEXT NOT NULL,
  inviter_id      TEXT,
  expires_at      TEXT NOT NULL,
  created_at      TEXT NOT NULL
);

-- Configuration versions. `resolved` keeps the table and field ids the snapshot resolved to.
CREATE TABLE IF NOT EXISTS schema_versions (
  number        INTEGER PRIMARY KEY,
  snapshot      TEXT NOT NULL,
  checksum      TEXT NOT NULL,
  resolved      TEXT NOT NULL,
  source        TEXT NOT NULL CHECK (source IN ('file', 'api', 'restore')),
  message       TEXT,
  created_at    TEXT NOT NULL,
  created_by    TEXT,
  restored_from INTEGER,
  active        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS schema_draft (
  id           INTEGER PRIMARY KEY CHECK (id = 1),
  snapshot     TEXT NOT NULL,
  base_version INTEGER NOT NULL,
  created_at   TEXT NOT NULL,
  updated_at   TEXT NOT NULL,
  updated_by   TEXT
);

CREATE TABLE IF NOT EXISTS analytics_events (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  ts              TEXT NOT NULL,
  host            TEXT,
  path            TEXT NOT NULL,
  title           TEXT,
  referrer        TEXT,
  referrer_domain TEXT,
  utm_source      TEXT,
  utm_medium      TEXT,
  utm_campaign    TEXT,
  utm_content     TEXT,
  utm_term        TEXT,
  device          TEXT,
  browser         TEXT,
  os              TEXT,
  language        TEXT,
  screen_w        INTEGER,
  screen_h        INTEGER,
  visitor         TEXT NOT NULL,
  session         TEXT NOT NULL,
  is_entrance     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS analytics_events_by_ts ON analytics_events (ts);
CREATE INDEX IF NOT EXISTS analytics_events_by_visitor ON analytics_events (visitor, id);
CREATE INDEX IF NOT EXISTS analytics_events_by_session ON analytics_events (session, ts);

-- Per-day report aggregates of final days (computed on first use; see the analytics section).
CREATE TABLE IF NOT EXISTS analytics_rollups (
  day     TEXT PRIMARY KEY,
  payload TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS analytics_salts (
  day  TEXT PRIMARY KEY,
  salt TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS mail_outbox (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  to_addr    TEXT NOT NULL,
  subject    TEXT NOT NULL,
  body       TEXT NOT NULL,
  status     TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed')),
  error      TEXT,
  created_at TEXT NOT NULL,
  sent_at    TEXT
);

-- History triggers: the only writers of `revisions`.
CREATE TRIGGER IF NOT EXISTS records_history_insert AFTER INSERT ON records
BEGIN
  SELECT RAISE(ABORT, 'write context not set') WHERE (SELECT now FROM write_context WHERE id = 1) IS NULL;
  INSERT INTO revisions (table_id, record_id, action, before, after, actor_id, created_at)
  SELECT NEW.table_id, NEW.id, 'create', NULL, NEW.data, w.actor_id, w.now
  FROM write_context w WHERE w.id = 1;
END;

CREATE TRIGGER IF NOT EXISTS records_history_update AFTER UPDATE OF data, deleted_at ON records
WHEN OLD.data IS NOT NEW.data OR OLD.deleted_at IS NOT NEW.deleted_at
BEGIN
  SELECT RAISE(ABORT, 'write context not set') WHERE (SELECT now FROM write_context WHERE id = 1) IS NULL;
  INSERT INTO revisions (table_id, record_id, action, before, after, actor_id, created_at)
  SELECT NEW.table_id, NEW.id,
         CASE WHEN OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN 'delete'
              WHEN OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL THEN 'restore'
              ELSE 'update' END,
         (SELECT coalesce(json_group_object(k, json(v)), '{}') FROM (
            SELECT o.key AS k, OLD.data -> ('$.' || o.key) AS v
              FROM json_each(OLD.data) o
             WHERE (NEW.data -> ('$.' || o.key)) IS NOT (OLD.data -> ('$.' || o.key))
            UNION ALL
            SELECT n.key, 'null' FROM json_each(NEW.data) n
             WHERE json_type(OLD.data, '$.' || n.key) IS NULL)),
         NEW.data, w.actor_id, w.now
  FROM write_context w WHERE w.id = 1;
END;

CREATE TRIGGER IF NOT EXISTS records_history_delete AFTER DELETE ON records
BEGIN
  SELECT RAISE(ABORT, 'write context not set') WHERE (SELECT now FROM write_context WHERE id = 1) IS NULL;
  INSERT INTO revisions (table_id, record_id, action, before, after, actor_id, created_at)
  SELECT OLD.table_id, OLD.id, 'purge', OLD.data, NULL, w.actor_id, w.now
  FROM write_context w WHERE w.id = 1;
END;

-- Count triggers: keep record_counts in step with records.
CREATE TRIGGER IF NOT EXISTS records_count_insert AFTER INSERT ON records
BEGIN
  INSERT INTO record_counts (table_id, live, trashed)
  VALUES (NEW.table_id, NEW.deleted_at IS NULL, NEW.deleted_at IS NOT NULL)
  ON CONFLICT (table_id) DO UPDATE SET live = live + (NEW.deleted_at IS NULL),
                                       trashed = trashed + (NEW.deleted_at IS NOT NULL);
END;

CREATE TRIGGER IF NOT EXISTS records_count_update AFTER UPDATE OF deleted_at ON records
WHEN (OLD.deleted_at IS NULL) <> (NEW.deleted_at IS NULL)
BEGIN
  UPDATE record_counts SET live = live + (CASE WHEN NEW.deleted_at IS NULL THEN 1 ELSE -1 END),
                           trashed = trashed + (CASE WHEN NEW.deleted_at IS NULL THEN -1 ELSE 1 END)
   WHERE table_id = NEW.table_id;
END;

CREATE TRIGGER IF NOT EXISTS records_count_delete AFTER DELETE ON records
BEGIN
  UPDATE record_counts SET live = live - (OLD.deleted_at IS NULL), trashed = trashed - (OLD.deleted_at IS NOT NULL)
   WHERE table_id = OLD.table_id;
END;

CREATE TRIGGER IF NOT EXISTS revisions_count_insert AFTER INSERT ON revisions
BEGIN
  UPDATE revision_counts SET total = total + 1 WHERE id = 1;
END;

CREATE TRIGGER IF NOT EXISTS revisions_count_delete AFTER DELETE ON revisions
BEGIN
  UPDATE revision_counts SET total = total - 1 WHERE id = 1;
END;

-- Link triggers: keep `links` in step with the arrays of the fields listed in `link_fields`.
CREATE TRIGGER IF NOT EXISTS records_links_insert AFTER INSERT ON records
WHEN EXISTS (SELECT 1 FROM link_fields WHERE table_id = NEW.table_id)
BEGIN
  INSERT OR IGNORE INTO links (table_id, field_key, source_id, target_id)
  SELECT lf.table_id, lf.field_key, NEW.id, j.value
    FROM link_fields lf, json_each(NEW.data, '$.' || lf.field_key) j
   WHERE lf.table_id = NEW.table_id AND j.value IS NOT NULL;
END;

CREATE TRIGGER IF NOT EXISTS records_links_update AFTER UPDATE OF data ON records
WHEN OLD.data IS NOT NEW.data AND EXISTS (SELECT 1 FROM link_fields WHERE table_id = NEW.table_id)
BEGIN
  DELETE FROM links WHERE table_id = NEW.table_id AND source_id = NEW.id
     AND field_key IN (SELECT field_key FROM link_fields WHERE table_id = NEW.table_id);
  INSERT OR IGNORE INTO links (table_id, field_key, source_id, target_id)
  SELECT lf.table_id, lf.field_key, NEW.id, j.value
    FROM link_fields lf, json_each(NEW.data, '$.' || lf.field_key) j
   WHERE lf.table_id = NEW.table_id AND j.value IS NOT NULL;
END;

CREATE TRIGGER IF NOT EXISTS records_links_delete AFTER DELETE ON records
BEGIN
  DELETE FROM links WHERE table_id = OLD.table_id AND source_id = OLD.id
     AND field_key IN (SELECT field_key FROM link_fields WHERE table_id = OLD.table_id);
END;

PRAGMA application_id = 1397708370;
PRAGMA user_version = 1;
