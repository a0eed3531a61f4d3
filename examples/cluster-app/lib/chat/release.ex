defmodule Chat.Release do
  @moduledoc """
  Release tasks, run with `bin/chat eval 'Chat.Release.migrate()'`.

  The operator runs migrate once per deploy, from the new release on the
  first node, with the release directory (`<deploy_to>/releases/<sha>`) as
  working directory and `RELEASE_ROOT`.
  """

  @doc """
  Records the migration: appends `<ISO 8601 UTC time> <commit>` to
  `<deploy_to>/shared/migrations.log` and prints the line.

  Fails (raises, so `bin/chat eval` exits non-zero, and nothing is recorded)
  when the release contains `priv/MIGRATE_FAIL`, i.e. when the commit has a
  file `priv/MIGRATE_FAIL`: a way for tests to make a migration fail.
  """
  def migrate do
    load_app()
    commit = Chat.commit()

    if File.exists?(Application.app_dir(:chat, "priv/MIGRATE_FAIL")) do
      raise "migration failed on purpose: priv/MIGRATE_FAIL is present (commit #{commit})"
    end

    now = DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()
    line = "#{now} #{commit}"
    log = Chat.migrations_log()
    File.mkdir_p!(Path.dirname(log))
    File.write!(log, line <> "\n", [:append])
    IO.puts("migrated: #{line} (#{log})")
    :ok
  end

  defp load_app do
    case Application.load(:chat) do
      :ok -> :ok
      {:error, {:already_loaded, :chat}} -> :ok
    end
  end
end
