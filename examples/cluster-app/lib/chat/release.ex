defmodule Chat.Release do
  @moduledoc """
  Release tasks, run with `bin/chat eval 'Chat.Release.migrate()'`.

  The operator runs migrate once per deploy, from the new release on the
  first node, with the release directory (`<deploy_to>/releases/<sha>`) as
  working directory and `RELEASE_ROOT`. `bin/chat eval` boots a bare VM:
  migrate loads the app and starts only what it needs (`:crypto`), never
  the app itself.
  """

  @migrations "priv/repo/migrations"

  @doc """
  Migrates, then records it.

  1. Fails (raises, so `bin/chat eval` exits non-zero, and nothing is
     recorded) when the release contains `priv/MIGRATE_FAIL`, i.e. when the
     commit has a file `priv/MIGRATE_FAIL`: a way for tests to make a
     migration fail.
  2. When `DATABASE_URL` is set, applies the pending migrations of
     `priv/repo/migrations/<version>_<name>.sql` in version order, as
     Ecto does: each in a transaction of its own together with inserting its
     version into `schema_migrations`, versions already there skipped. An
     SQL error rolls that migration's transaction back (its version is not
     recorded; the ones applied before it stay) and raises.
  3. Appends `<ISO 8601 UTC time> <commit>` to
     `<deploy_to>/shared/migrations.log` and prints the line.
  """
  def migrate do
    load_app()
    commit = Chat.commit()

    if File.exists?(Application.app_dir(:chat, "priv/MIGRATE_FAIL")) do
      raise "migration failed on purpose: priv/MIGRATE_FAIL is present (commit #{commit})"
    end

    migrate_database()

    now = DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()
    line = "#{now} #{commit}"
    log = Chat.migrations_log()
    File.mkdir_p!(Path.dirname(log))
    File.write!(log, line <> "\n", [:append])
    IO.puts("migrated: #{line} (#{log})")
    :ok
  end

  @doc """
  The migrations in the release, in version order: `{version, name, path}`.
  Raises on a `.sql` file whose name is not `<version>_<name>.sql` or on a
  version given twice: a migration that would be skipped silently is worse
  than a failed deploy.
  """
  def migrations do
    dir = Application.app_dir(:chat, @migrations)

    files =
      case File.ls(dir) do
        {:ok, files} -> files
        {:error, :enoent} -> []
      end

    migrations =
      for file <- files, String.ends_with?(file, ".sql") do
        case Regex.run(~r/^(\d+)_(\w+)\.sql$/, file) do
          [_, version, name] ->
            {String.to_integer(version), name, Path.join(dir, file)}

          nil ->
            raise "#{@migrations}/#{file}: want <version>_<name>.sql, as 20250101000000_create_messages.sql"
        end
      end
      |> Enum.sort()

    case migrations |> Enum.frequencies_by(&elem(&1, 0)) |> Enum.find(fn {_, n} -> n > 1 end) do
      nil -> migrations
      {version, _} -> raise "#{@migrations}: version #{version} is given twice"
    end
  end

  defp migrate_database do
    case Chat.Repo.config() do
      :none ->
        IO.puts("migrate: no DATABASE_URL, no database to migrate")

      {:error, reason} ->
        raise reason

      {:ok, config} ->
        {:ok, _} = Application.ensure_all_started(:crypto)
        :ok = load(:p1_pgsql)
        migrations = migrations()

        result =
          Chat.Repo.with_connection(&apply_pending(&1, migrations, config),
            config: config,
            # Migrations may rewrite big tables: a long bound of their own;
            # the operator's command deadline still holds.
            timeout: :timer.minutes(15)
          )

        case result do
          :ok -> :ok
          {:error, reason} -> raise "migrate #{Chat.Repo.describe(config)}: #{reason}"
        end
    end
  end

  defp apply_pending(conn, migrations, config) do
    opts = [timeout: :timer.minutes(15)]

    with {:ok, _} <-
           Chat.Repo.query_on(
             conn,
             "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0))",
             opts
           ),
         {:ok, rows} <- Chat.Repo.query_on(conn, "SELECT version FROM schema_migrations", opts) do
      applied = MapSet.new(rows, fn [v] -> String.to_integer(v) end)
      pending = Enum.reject(migrations, fn {v, _, _} -> MapSet.member?(applied, v) end)

      if pending == [] do
        IO.puts(
          "migrate: #{Chat.Repo.describe(config)} is up to date (#{MapSet.size(applied)} migrations applied)"
        )
      end

      Enum.reduce_while(pending, :ok, fn {version, name, path}, :ok ->
        start = System.monotonic_time(:millisecond)

        statements = [
          # One migrator at a time: a second one waits here, then fails on
          # the version's primary key.
          "LOCK TABLE schema_migrations IN SHARE UPDATE EXCLUSIVE MODE",
          File.read!(path),
          "INSERT INTO schema_migrations (version, inserted_at) VALUES (#{version}, timezone('utc', now()))"
        ]

        case Chat.Repo.transaction_on(conn, statements, opts) do
          :ok ->
            ms = System.monotonic_time(:millisecond) - start
            IO.puts("migrate: applied #{version}_#{name} (#{ms} ms)")
            {:cont, :ok}

          {:error, {_statement, reason}} ->
            {:halt, {:error, "#{version}_#{name}: #{reason} (rolled back, not recorded)"}}

          {:error, reason} ->
            {:halt, {:error, "#{version}_#{name}: #{reason} (not recorded)"}}
        end
      end)
    end
  end

  defp load_app, do: load(:chat)

  defp load(app) do
    case Application.load(app) do
      :ok -> :ok
      {:error, {:already_loaded, ^app}} -> :ok
    end
  end
end
