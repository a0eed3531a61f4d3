defmodule Chat do
  @moduledoc """
  A tiny clustered app for exercising the deploy operator.

  Where things live on a node (the release directory is
  `<deploy_to>/releases/<sha>`, `bin/chat` exports it as `RELEASE_ROOT`):

    * `priv/REVISION` in the release: the commit it was built from
    * `<deploy_to>/shared/migrations.log`: one line per migration run here
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

  @doc "What /health reports, in this order."
  def health do
    [
      app: "chat",
      commit: commit(),
      node: Atom.to_string(node()),
      nodes: Node.list() |> Enum.map(&Atom.to_string/1) |> Enum.sort(),
      migrated: migrated()
    ]
  end
end
