-- The chat's messages. Applied by Chat.Release.migrate() in one
-- transaction with its version's row in schema_migrations.
CREATE TABLE messages (
  id bigserial PRIMARY KEY,
  body text NOT NULL,
  inserted_at timestamptz NOT NULL DEFAULT now()
);
