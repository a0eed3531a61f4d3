defmodule Chat do
  @moduledoc """
  A tiny clustered app for exercising the deploy operator.

  Where things live on a node (the release directory is
  `<deploy_to>/releases/<sha>`, `bin/chat` exports it as `RELEASE_ROOT`):

    * `priv/REVISION` in the release: the commit it was built from
    * `<deploy_to>/shared/migrations.log`: one line per migration run here
    * the database: `DATABASE_URL` (see `Chat.Repo`), when set
  """

  @doc "The commit this release was built from (from `priv/REVISION`)."
  def commit do
    case File.read(Application.app_dir(:chat, "priv/REVISION")) do
      {:ok, sha} -> String.trim(sha)
      {:error, _} -> "unknown"
    end
  end

  @doc "The release directory (`RELEASE_ROOT`, else the working directory)."
  def release_root do
    case System.get_env("RELEASE_ROOT") do
      root when root in [nil, ""] -> File.cwd!()
      root -> root
    end
  end

  @doc "`<deploy_to>`: the parent of the release's parent (`<deploy_to>/releases/<sha>`)."
  def deploy_to do
    release_root() |> Path.expand() |> Path.dirname() |> Path.dirname()
  end

  @doc "Where migrations are recorded on this node."
  def migrations_log, do: Path.join([deploy_to(), "shared", "migrations.log"])

  @doc "The commit of the last migration recorded on this node, or nil."
  def migrated do
    with {:ok, log} <- File.read(migrations_log()),
         [line | _] <- log |> String.split("\n", trim: true) |> Enum.reverse(),
         [_time, sha | _] <- String.split(line, " ", trim: true) do
      sha
    else
      _ -> nil
    end
  end

  @doc """
  What /health reports, in this order: a keyword list when the node is
  healthy, `{:error, fields}` (the same fields) when it is not, which
  `/health` must answer with a 503.

  With `DATABASE_URL` set the last field is `db`, read from the database
  just now: `[version: <latest schema_migrations version>, messages:
  <rows in messages>]`, or `[error: <why>]` when that read failed, which
  makes the node unhealthy. Without `DATABASE_URL` there is no `db` field.
  """
  def health do
    fields = [
      app: "chat",
      commit: commit(),
      node: Atom.to_string(node()),
      nodes: Node.list() |> Enum.map(&Atom.to_string/1) |> Enum.sort(),
      migrated: migrated()
    ]

    case db() do
      :none -> fields
      {:ok, db} -> fields ++ [db: db]
      {:error, reason} -> {:error, fields ++ [db: [error: reason]]}
    end
  end

  @doc """
  What the database holds now (`health/0`'s `db`): `{:ok, [version: v,
  messages: n]}`, `:none` without `DATABASE_URL`, or `{:error, reason}`.
  On the connection the app keeps (`Chat.Repo.Conn`), within 2 s for a
  connect and 2 s for the query, so a stuck database fails the health
  check instead of holding it.
  """
  def db do
    sql = "SELECT (SELECT max(version) FROM schema_migrations), (SELECT count(*) FROM messages)"

    case Chat.Repo.Conn.query(sql, 2_000) do
      {:ok, [[version, count]]} -> {:ok, [version: to_int(version), messages: to_int(count)]}
      {:ok, rows} -> {:error, "unexpected rows: #{inspect(rows)}"}
      other -> other
    end
  end

  defp to_int(nil), do: nil
  defp to_int(s), do: String.to_integer(s)
end
